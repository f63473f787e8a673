//! `mirante mcp`: a Model Context Protocol server over stdio (the `rmcp` SDK), so that an LLM
//! client (Claude Desktop, an agent framework) can search a database by text or by image and get
//! the retrieved images back as MCP image content, not a caption standing in for them.
//!
//! Tools: `search`, `list_collections`, `describe_collection`, `sql` and `evaluate`. The server
//! opens the database read-only unless started with `--read-write`, and the shell's confinement
//! flags (`--allow-path`, `--no-downloads`) limit the image paths and model folders a client's
//! requests may read. Engine calls block, so each runs on Tokio's blocking pool.

use std::sync::Arc;

use anyhow::Result;
use base64::Engine as _;
use mirante::{Database, Output};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

/// Hits a search returns when the request says nothing.
const DEFAULT_LIMIT: usize = 5;
/// Hits a search may return.
const MAX_LIMIT: usize = 100;
/// Hits whose images come back as image content when the request says nothing.
const DEFAULT_IMAGES: usize = 3;
/// Longest side of an image handed back; larger stored images are sent as a JPEG thumbnail.
const MAX_IMAGE_SIDE: u32 = 512;
/// Stored images up to this size (and [`MAX_IMAGE_SIDE`]) are sent as stored.
const MAX_IMAGE_BYTES: usize = 1 << 20;
/// Rows of one `sql` result sent back; the rest are counted.
const MAX_SQL_ROWS: usize = 200;

/// Runs the server on stdin/stdout until the client closes it.
pub fn serve(database: Database) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = Mirante::new(database)
            .serve(rmcp::transport::stdio())
            .await?;
        server.waiting().await?;
        Ok(())
    })
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SearchArgs {
    /// The collection to search (see list_collections).
    collection: String,
    /// A text query, e.g. "a red bicycle leaning on a wall": ranks the images (or, with
    /// match = "texts", the captions).
    text: Option<String>,
    /// The path of an image file to search by: ranks similar images (or, with match =
    /// "texts", captions that describe it).
    image: Option<String>,
    /// "images" (default) or "texts": what the query is matched against.
    #[serde(rename = "match")]
    target: Option<String>,
    /// A condition on the rows, as after SQL's WHERE, e.g. "split = 'test' AND year > 1900".
    #[serde(rename = "where")]
    filter: Option<String>,
    /// How many hits to return (default 5, at most 100).
    limit: Option<usize>,
    /// How many of the top hits come back with their image (default 3, at most limit).
    images: Option<usize>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct CollectionArgs {
    /// The collection's name.
    collection: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SqlArgs {
    /// Mirante statements separated by ';' (SELECT, SEARCH, EVALUATE, SHOW COLLECTIONS,
    /// DESCRIBE, EXPLAIN, ...; statements that write are refused unless the server was started
    /// with --read-write).
    statements: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct EvaluateArgs {
    /// The collection to evaluate: its captions query its images (and back).
    collection: String,
    /// Comma-separated metrics (recall@K, mrr, ndcg@K, median_rank, mean_similarity); default
    /// "recall@1, recall@5, recall@10, mrr".
    metrics: Option<String>,
    /// A condition on the rows evaluated, as after SQL's WHERE, e.g. "split = 'test'".
    #[serde(rename = "where")]
    filter: Option<String>,
}

/// The server: one open database shared by the requests.
#[derive(Clone)]
struct Mirante {
    db: Arc<Database>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Mirante {
    fn new(db: Database) -> Self {
        Mirante {
            db: Arc::new(db),
            tool_router: Self::tool_router(),
        }
    }

    /// Runs `work` on the blocking pool; its error becomes the tool's error result.
    async fn blocking(
        &self,
        work: impl FnOnce(&Database) -> Result<Vec<ContentBlock>> + Send + 'static,
    ) -> CallToolResult {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || work(&db)).await {
            Ok(Ok(content)) => CallToolResult::success(content),
            Ok(Err(e)) => CallToolResult::error(vec![ContentBlock::text(format!("{e:#}"))]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
                "the request failed inside the server: {e}"
            ))]),
        }
    }

    #[tool(
        description = "Search a collection of images and captions by a text or by an image \
                       file. Returns the hits as JSON (rank, id, score, captions, image path, \
                       split, metadata columns) followed by the top hits' images."
    )]
    async fn search(&self, Parameters(args): Parameters<SearchArgs>) -> CallToolResult {
        self.blocking(move |db| search(db, args)).await
    }

    #[tool(description = "List the collections of the database with their row counts and models.")]
    async fn list_collections(&self) -> CallToolResult {
        self.blocking(|db| statement(db, "SHOW COLLECTIONS")).await
    }

    #[tool(
        description = "Describe a collection: its columns with their types, its embedding \
                       models, index and size."
    )]
    async fn describe_collection(
        &self,
        Parameters(args): Parameters<CollectionArgs>,
    ) -> CallToolResult {
        self.blocking(move |db| {
            // Checked first, so that only a real collection's name goes into the statement.
            let collection = db.collection(&args.collection)?;
            statement(db, &format!("DESCRIBE {}", collection.name()))
        })
        .await
    }

    #[tool(
        description = "Run Mirante SQL statements (SELECT ... FROM c WHERE ..., SEARCH c BY TEXT \
                       '...' LIMIT k, EVALUATE recall@10 ON c, SHOW COLLECTIONS, DESCRIBE c, \
                       EXPLAIN ...). Returns each result's rows as JSON. Statements that change \
                       the database are refused when the server is read-only."
    )]
    async fn sql(&self, Parameters(args): Parameters<SqlArgs>) -> CallToolResult {
        self.blocking(move |db| statement(db, &args.statements))
            .await
    }

    #[tool(
        description = "Measure retrieval quality on a collection: its captions query its images \
                       (text to image) and its images query its captions (image to text). \
                       Returns one row per direction with the metrics."
    )]
    async fn evaluate(&self, Parameters(args): Parameters<EvaluateArgs>) -> CallToolResult {
        self.blocking(move |db| evaluate(db, args)).await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Mirante {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mirante", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Mirante is an image-text retrieval database. Use list_collections to see what \
                 it holds, search to find images by a text (or by an image file) and get them \
                 back as images, sql for SELECT/SEARCH/EVALUATE statements, evaluate to \
                 measure retrieval quality.",
            )
    }
}

/// Runs `text` (one or more statements) and returns each result as JSON text.
fn statement(db: &Database, text: &str) -> Result<Vec<ContentBlock>> {
    let outputs = db.sql(text).map_err(|e| anyhow::anyhow!(e.render(text)))?;
    Ok(outputs
        .into_iter()
        .map(output_json)
        .map(ContentBlock::text)
        .collect())
}

/// A statement's result as JSON: its status line, its rows (at most [`MAX_SQL_ROWS`]).
fn output_json(output: Output) -> String {
    let table = output.into_result_set();
    let rows = table.json_rows();
    let mut json = serde_json::json!({
        "columns": table.column_names(),
        "rows": rows.iter().take(MAX_SQL_ROWS).collect::<Vec<_>>(),
    });
    if rows.len() > MAX_SQL_ROWS {
        json["rows_left_out"] = (rows.len() - MAX_SQL_ROWS).into();
    }
    if let Some(status) = &table.status {
        json["status"] = status.as_str().into();
    }
    json.to_string()
}

fn search(db: &Database, args: SearchArgs) -> Result<Vec<ContentBlock>> {
    let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
    anyhow::ensure!(
        (1..=MAX_LIMIT).contains(&limit),
        "limit must be from 1 to {MAX_LIMIT}, got {limit}"
    );
    let images = args.images.unwrap_or(DEFAULT_IMAGES).min(limit);
    let collection = db.collection(&args.collection)?;
    let query = match (&args.text, &args.image) {
        (Some(text), None) => collection.search_text(text).match_images(),
        (None, Some(path)) => collection.search_image(path).match_images(),
        _ => anyhow::bail!("give either text or image, not both or neither"),
    };
    let mut query = match args.target.as_deref() {
        None | Some("images") => query,
        Some("texts") => query.match_texts(),
        Some(other) => anyhow::bail!("match must be \"images\" or \"texts\", got {other:?}"),
    };
    if let Some(filter) = &args.filter {
        query = query.filter(filter);
    }
    let results = query.limit(limit).with_image_bytes().run()?;
    let hits: Vec<serde_json::Value> = results
        .hits
        .iter()
        .map(|h| {
            let mut hit = serde_json::json!({
                "rank": h.rank,
                "id": h.id,
                "score": h.score,
                "captions": h.texts,
                "image": h.image,
                "split": h.split,
            });
            if let Some(m) = &h.matched_text {
                hit["matched_caption"] = m.as_str().into();
            }
            // Under their own key, so a column named like a hit field cannot replace it.
            hit["metadata"] = h
                .metadata
                .iter()
                .map(|(name, value)| (name.clone(), mirante::Cell::from(value.clone()).to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into();
            hit
        })
        .collect();
    let mut content = vec![ContentBlock::text(
        serde_json::json!({
            "collection": results.collection,
            "query": results.query,
            "model": results.model,
            "hits": hits,
        })
        .to_string(),
    )];
    for hit in results.hits.iter().take(images) {
        if let Some((bytes, mime)) = hit.image_bytes.as_deref().and_then(image_content) {
            content.push(ContentBlock::text(format!(
                "image of hit {} (id {})",
                hit.rank, hit.id
            )));
            content.push(ContentBlock::image(
                base64::engine::general_purpose::STANDARD.encode(bytes),
                mime,
            ));
        }
    }
    Ok(content)
}

/// A stored image as MCP image content: the stored bytes when the client can show them as
/// they are (PNG, JPEG, GIF or WebP within [`MAX_IMAGE_SIDE`] and 1 MiB), else a JPEG
/// thumbnail. `None` when the bytes do not decode.
fn image_content(bytes: &[u8]) -> Option<(Vec<u8>, &'static str)> {
    let format = image::guess_format(bytes).ok();
    let mime = match format? {
        image::ImageFormat::Png => "image/png",
        image::ImageFormat::Jpeg => "image/jpeg",
        image::ImageFormat::Gif => "image/gif",
        image::ImageFormat::WebP => "image/webp",
        _ => "",
    };
    let (width, height) = mirante::training::imageio::check(
        bytes,
        "stored image",
        mirante::training::imageio::ImageLimits::default().max_pixels,
    )
    .ok()?;
    if !mime.is_empty() && width.max(height) <= MAX_IMAGE_SIDE && bytes.len() <= MAX_IMAGE_BYTES {
        return Some((bytes.to_vec(), mime));
    }
    Some((
        mirante::report::thumbnail_jpeg(bytes, MAX_IMAGE_SIDE)?,
        "image/jpeg",
    ))
}

fn evaluate(db: &Database, args: EvaluateArgs) -> Result<Vec<ContentBlock>> {
    let collection = db.collection(&args.collection)?;
    let name = collection.name();
    let metrics = args
        .metrics
        .unwrap_or_else(|| "recall@1, recall@5, recall@10, mrr".into());
    let mut text = format!("EVALUATE {metrics} ON {name}");
    if let Some(filter) = &args.filter {
        text.push_str(&format!(" WHERE {filter}"));
    }
    // One EVALUATE statement, whatever the pieces held; parsed once and run as parsed.
    let mut statements =
        mirante::query::parse(&text).map_err(|e| anyhow::anyhow!(e.render(&text)))?;
    anyhow::ensure!(
        statements.len() == 1 && matches!(statements[0], mirante::query::Statement::Evaluate(_)),
        "metrics and where must not hold other statements"
    );
    let output = db
        .execute(statements.remove(0))
        .map_err(|e| anyhow::anyhow!(e.render(&text)))?;
    Ok(vec![ContentBlock::text(output_json(output))])
}
