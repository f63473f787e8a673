//! The `mirante` command-line tool.

mod mcp;
mod shell;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};

// Fine-tuning and embedding allocate and free large buffers at every step; glibc's allocator
// maps and unmaps them each time (page faults, zeroing). mimalloc keeps them: training steps
// run about 20% faster (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h, which the bindings
/// leave unnamed).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Lets mimalloc keep freed memory for 10 s (instead of its default 1 s) before returning it to
/// the system. A training step frees and reallocates the same large buffers (activations,
/// gradients such as a 50 MB token-embedding gradient) a few hundred milliseconds apart; with
/// the default every step faulted them in again and the kernel zeroed them (a sixth of a
/// fine-tuning step's time, docs/benchmarks.md).
fn keep_freed_memory() {
    // SAFETY: sets a process-wide option before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) }
}
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use mirante::storage::{
    ColumnDef, ColumnType, Database, IndexSpec, Metric, Modality, NewRow, Schema, SpaceSpec, Value,
    ValueRef,
};
use mirante_apps::pretrain::PretrainConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(
    name = "mirante",
    version,
    about = "Mirante: an embedded image-text retrieval database engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole workflow on the bundled shapes dataset, offline: generates a dataset, imports
    /// it with the default model, searches in English and Portuguese (both directions, with a
    /// filter), evaluates, fine-tunes on the train split, re-embeds, evaluates both models on
    /// the test split, and writes an HTML report. Prints each statement as it runs.
    Demo {
        /// Working folder (dataset, database, report). A previous demo there is replaced.
        #[arg(long, default_value = "mirante-demo")]
        out: PathBuf,
        /// Dataset rows (80% train, 10% validation, 10% test).
        #[arg(long, default_value_t = 3000)]
        rows: usize,
        /// Fine-tuning epochs.
        #[arg(long, default_value_t = 5)]
        epochs: usize,
    },
    /// Tour of the storage engine: creates a database, appends rows with 512-d vectors, builds a
    /// FAISS index, searches (plain and filtered), deletes, compacts and time-travels.
    Walkthrough {
        /// Database directory (created; must not hold a database). Default: a temporary folder.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Rows to insert.
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// FAISS index factory string for the collection.
        #[arg(long, default_value = "HNSW32")]
        index: String,
    },
    /// Runs `;`-separated statements against a database (created if missing) and prints their
    /// results. Exit status 0 on success; on an error, the message (with the statement line and
    /// a caret under the position) goes to stderr and the status is 1.
    ///
    /// Example: mirante sql my.db "SEARCH images BY TEXT 'a dog on the beach' LIMIT 5"
    Sql {
        /// Database directory.
        db: PathBuf,
        /// Statements, e.g. "CREATE COLLECTION images WITH (model = 'org/name'); IMPORT INTO
        /// images FROM 'photos/'". Read from stdin when omitted.
        statements: Option<String>,
        /// Output format: an aligned table, JSON lines (one object per result row) or CSV.
        #[arg(long, value_enum, default_value_t = shell::Format::Table)]
        format: shell::Format,
        /// Show progress bars for imports and embedding.
        #[arg(long)]
        progress: bool,
        #[command(flatten)]
        open: shell::OpenArgs,
    },
    /// Interactive shell: history, multi-line statements ended by ';', completion of keywords
    /// and collection names, and dot commands (.help, .mode, .timer, .quit).
    Shell {
        /// Database directory (created if missing).
        db: PathBuf,
        #[command(flatten)]
        open: shell::OpenArgs,
    },
    /// Serves a database to LLM clients over the Model Context Protocol, on stdin/stdout:
    /// tools to search by text or by image (the hits' images come back as image content), list
    /// and describe collections, run SQL and evaluate. Read-only unless --read-write; confine
    /// the files requests may read with --allow-path.
    ///
    /// Client configuration (Claude Desktop and others): {"mcpServers": {"mirante":
    /// {"command": "mirante", "args": ["mcp", "/path/to/db", "--allow-path", "/path/to/images"]}}}
    Mcp {
        /// Database directory (must exist).
        db: PathBuf,
        /// Let requests run statements that change the database (IMPORT, DELETE, FINETUNE...).
        #[arg(long)]
        read_write: bool,
        #[command(flatten)]
        open: shell::OpenArgs,
    },
    /// Prints the collections, segments and versions of a database.
    Info {
        /// Database directory.
        db: PathBuf,
    },
    /// Embeds images and texts with a CLIP or SigLIP checkpoint and prints one JSON array (the
    /// L2-normalised embedding) per input, in the order the inputs were given. An input that
    /// fails prints `null`, its error goes to stderr, and the exit status is 1.
    Embed {
        /// Checkpoint folder in Hugging Face layout, or a Hub id (org/name[@revision]) found in
        /// the Hugging Face cache or downloaded into it.
        #[arg(long)]
        model: String,
        /// An image file (JPEG, PNG, WebP, GIF); repeat for several.
        #[arg(long)]
        image: Vec<PathBuf>,
        /// A text; repeat for several.
        #[arg(long)]
        text: Vec<String>,
        /// Images per model batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Show progress bars.
        #[arg(long)]
        progress: bool,
    },
    /// Trains a small CLIP model from scratch on a generated shapes dataset, as Mirante's default
    /// model was made: dataset, BPE tokenizer on the training captions, random initialisation,
    /// FINETUNE with validation, export in Hugging Face layout (f16), and the test-split
    /// evaluation of the saved checkpoint. The default model came from
    /// `mirante pretrain --out engine/assets/mirante-shapes-clip` (all defaults), on a GPU: 3 min
    /// there, about 40 on 2 CPU cores (docs/default-model.md).
    Pretrain {
        /// Output folder for the checkpoint (created).
        #[arg(long)]
        out: PathBuf,
        /// Working folder (dataset, database, initial weights). Default: `<out>.work`.
        #[arg(long)]
        work: Option<PathBuf>,
        /// Dataset rows (80% train, 10% validation, 10% test).
        #[arg(long, default_value_t = PretrainConfig::default().rows)]
        rows: usize,
        #[arg(long, default_value_t = PretrainConfig::default().seed)]
        seed: u64,
        /// Share of Portuguese rows in the training data (the tokenizer learns both languages
        /// either way). The default model saw English only, which the demo's fine-tuning fixes.
        #[arg(long, default_value_t = PretrainConfig::default().portuguese)]
        portuguese: f64,
        #[arg(long, default_value_t = PretrainConfig::default().epochs)]
        epochs: usize,
        #[arg(long, default_value_t = PretrainConfig::default().batch_size)]
        batch_size: usize,
        #[arg(long, default_value_t = PretrainConfig::default().lr)]
        lr: f64,
        /// Layer width of both towers.
        #[arg(long, default_value_t = PretrainConfig::default().architecture.vision_width)]
        width: usize,
        /// Side of the vision tower's square patches in pixels; must divide the 64-pixel
        /// images. Smaller patches show shapes in more detail at a quadratic cost in tokens.
        #[arg(long, default_value_t = PretrainConfig::default().architecture.patch_size)]
        patch_size: usize,
        /// Transformer layers of the vision tower.
        #[arg(long, default_value_t = PretrainConfig::default().architecture.vision_layers)]
        vision_layers: usize,
        /// Transformer layers of the text tower.
        #[arg(long, default_value_t = PretrainConfig::default().architecture.text_layers)]
        text_layers: usize,
        /// Tokenizer vocabulary size (bytes and special tokens included).
        #[arg(long, default_value_t = PretrainConfig::default().vocab_size)]
        vocab_size: usize,
        /// Steps of linear learning-rate warmup.
        #[arg(long, default_value_t = PretrainConfig::default().warmup_steps)]
        warmup_steps: usize,
        /// Re-mine hard-negative pairs before every epoch with the weights being trained, so
        /// batches hold scenes the model still confuses (`hard_negatives = 'epoch'`).
        #[arg(long, default_value_t = PretrainConfig::default().hard_negatives, action = clap::ArgAction::Set)]
        hard_negatives: bool,
    },
    /// Generates a benchmark dataset.
    Dataset {
        #[command(subcommand)]
        kind: DatasetKind,
    },
}

#[derive(Subcommand)]
enum DatasetKind {
    /// Rendered scenes of one to three shapes (six shapes, eight colours, two sizes, spatial
    /// relations, counts) over textured backgrounds, three captions each in English or
    /// Portuguese, in the Hugging Face imagefolder convention: images/*.png and metadata.jsonl
    /// (file_name, text, language, split, and the scene's attributes), or as parquet shards.
    /// Import it with IMPORT INTO c FROM '<out>'; in Python, load_dataset("imagefolder",
    /// data_dir="<out>") or load_dataset("parquet", data_dir="<out>/data").
    Shapes {
        /// Output folder (created; must not hold a dataset already).
        #[arg(long)]
        out: PathBuf,
        /// Number of rows (scenes).
        #[arg(long, default_value_t = 3000)]
        rows: usize,
        /// Random seed: the same seed and row count give the same files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image side in pixels.
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Share of rows captioned in Portuguese (the others in English).
        #[arg(long, default_value_t = 0.5)]
        portuguese: f64,
        /// Write data/<split>-00000-of-00001.parquet shards (images embedded as bytes, as the
        /// `datasets` library lays out an image dataset) instead of the imagefolder.
        #[arg(long)]
        parquet: bool,
    },
}

fn main() -> Result<()> {
    keep_freed_memory();
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { mirante::training::park_idle_workers() };
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        Command::Walkthrough { db, rows, index } => walkthrough(db, rows, &index),
        Command::Demo { out, rows, epochs } => demo(&out, rows, epochs),
        Command::Info { db } => info(&db),
        Command::Sql {
            db,
            statements,
            format,
            progress,
            open,
        } => shell::run_sql(&db, statements, format, progress, &open),
        Command::Shell { db, open } => shell::repl(&db, &open),
        Command::Mcp {
            db,
            read_write,
            open,
        } => mcp::serve(shell::open(&db, false, !read_write, &open)?),
        Command::Pretrain {
            out,
            work,
            rows,
            seed,
            portuguese,
            epochs,
            batch_size,
            lr,
            width,
            patch_size,
            vision_layers,
            text_layers,
            vocab_size,
            warmup_steps,
            hard_negatives,
        } => {
            let defaults = PretrainConfig::default();
            let config = PretrainConfig {
                rows,
                seed,
                portuguese,
                epochs,
                batch_size,
                lr,
                vocab_size,
                warmup_steps,
                hard_negatives,
                architecture: mirante::training::scratch::ClipArchitecture {
                    vision_width: width,
                    text_width: width,
                    projection_dim: width,
                    patch_size,
                    vision_layers,
                    text_layers,
                    ..defaults.architecture
                },
                progress: true,
                ..defaults
            };
            let work = work.unwrap_or_else(|| {
                let mut w = out.clone().into_os_string();
                w.push(".work");
                PathBuf::from(w)
            });
            let started = Instant::now();
            let report = mirante_apps::pretrain::pretrain(&config, &out, &work)?;
            println!("{}", report.training.to_table());
            println!("test split, saved checkpoint:\n{}", report.test.to_table());
            println!(
                "model written to {} in {:.1} min",
                report.model.display(),
                started.elapsed().as_secs_f64() / 60.0
            );
            Ok(())
        }
        Command::Dataset {
            kind:
                DatasetKind::Shapes {
                    out,
                    rows,
                    seed,
                    size,
                    portuguese,
                    parquet,
                },
        } => {
            let config = mirante_apps::shapes::ShapesConfig {
                rows,
                seed,
                size,
                portuguese,
                parquet,
                progress: true,
                ..Default::default()
            };
            let summary = mirante_apps::shapes::generate(&config, &out)?;
            println!(
                "wrote {} rows ({} captions) to {}: train {}, validation {}, test {}",
                summary.rows,
                summary.captions,
                out.display(),
                summary.splits[0],
                summary.splits[1],
                summary.splits[2]
            );
            for f in &summary.parquet_files {
                println!("  {}", f.display());
            }
            Ok(())
        }
        Command::Embed {
            model,
            image,
            text,
            batch_size,
            progress,
        } => {
            // Command-line positions of each --image and --text, to print in the given order.
            let sub = matches
                .subcommand_matches("embed")
                .context("embed arguments")?;
            let positions = |id: &str| -> Vec<usize> {
                sub.indices_of(id).map(|i| i.collect()).unwrap_or_default()
            };
            embed(
                &model,
                &image,
                &text,
                &positions("image"),
                &positions("text"),
                batch_size,
                progress,
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn embed(
    model: &str,
    images: &[PathBuf],
    texts: &[String],
    image_pos: &[usize],
    text_pos: &[usize],
    batch_size: usize,
    progress: bool,
) -> Result<()> {
    use mirante::training::{DualEncoder, ImageSource, PipelineOptions};
    if images.is_empty() && texts.is_empty() {
        bail!("nothing to embed: give at least one --image PATH or --text STRING");
    }
    let folder = mirante::training::resolve_model(model)?;
    let encoder = DualEncoder::load(&folder, &mirante::training::default_device())
        .with_context(|| format!("loading model {model}"))?;
    let options = PipelineOptions {
        batch_size,
        progress: progress.into(),
        ..Default::default()
    };
    let sources: Vec<ImageSource> = images.iter().cloned().map(ImageSource::Path).collect();
    let embedded = mirante::training::embed_images(&encoder, &sources, &options)?;
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let text_vectors = mirante::training::embed_texts(&encoder, &text_refs, &options)?;
    let mut lines: Vec<(usize, String)> = Vec::new();
    for (i, e) in embedded.embeddings.iter().enumerate() {
        lines.push((image_pos[i], serde_json::to_string(e)?));
    }
    for (i, e) in text_vectors.iter().enumerate() {
        lines.push((text_pos[i], serde_json::to_string(e)?));
    }
    lines.sort_by_key(|(pos, _)| *pos);
    for (_, line) in lines {
        println!("{line}");
    }
    for f in &embedded.failures {
        eprintln!(
            "error: image {} (input {}): {}",
            f.source,
            f.index + 1,
            f.reason
        );
    }
    if !embedded.failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

const DIM: usize = 512;
const TOPICS: [&str; 8] = [
    "beach", "forest", "city", "mountain", "desert", "harbour", "market", "garden",
];

/// Clustered unit vectors: one centre per topic, so that searches have meaningful neighbours.
fn demo(out: &std::path::Path, rows: usize, epochs: usize) -> Result<()> {
    use mirante_apps::demo::DemoEvent;
    let config = mirante_apps::demo::DemoConfig {
        rows,
        epochs,
        progress: true,
        ..Default::default()
    };
    let started = Instant::now();
    let report = mirante_apps::demo::run(&config, out, |event| match event {
        DemoEvent::Statement(statement) => println!("\n> {statement}"),
        DemoEvent::Finished(result) => print_demo_result(result),
    })?;
    println!("\ntest split, default model and fine-tuned:");
    println!("{}", report.evaluation.to_result_set().to_table());
    for (language, e) in &report.by_language {
        let table = e.to_result_set();
        let at = |row: usize, column: &str| table.get(row, column).map(|c| c.display());
        println!(
            "{language} captions, text to image recall@1: {} -> {}",
            at(0, "recall@1").unwrap_or_default(),
            at(2, "recall@1").unwrap_or_default()
        );
    }
    println!(
        "demo finished in {:.1} min; report: {}",
        started.elapsed().as_secs_f64() / 60.0,
        report.report.display()
    );
    Ok(())
}

/// A statement's result, short: the first rows of tables (few columns), then its status.
fn print_demo_result(output: &mirante::Output) {
    let result = output.to_result_set().project(&[
        "rank",
        "score",
        "text",
        "matched_text",
        "model",
        "direction",
        "epoch",
        "loss",
        "recall@1",
        "recall@10",
        "mrr",
        "samples_per_s",
    ]);
    if !result.rows.is_empty() && !result.columns.is_empty() {
        let short = mirante::ResultSet {
            rows: result.rows.iter().take(12).cloned().collect(),
            status: None,
            ..result.clone()
        };
        print!("{}", short.to_table());
    }
    if let Some(status) = &result.status {
        println!("{status}");
    }
}

fn topic_vectors(rows: usize, rng: &mut StdRng) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
    let centres: Vec<f32> = (0..TOPICS.len() * DIM)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let mut vectors = Vec::with_capacity(rows * DIM);
    let mut topics = Vec::with_capacity(rows);
    for _ in 0..rows {
        let t = rng.random_range(0..TOPICS.len());
        topics.push(t);
        vectors.extend((0..DIM).map(|d| centres[t * DIM + d] + rng.random_range(-0.6f32..0.6)));
    }
    (vectors, topics, centres)
}

fn walkthrough(db: Option<PathBuf>, rows: usize, index: &str) -> Result<()> {
    let tmp;
    let path = match db {
        Some(p) => p,
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().join("walkthrough.mirante")
        }
    };
    println!("Mirante storage walkthrough: {rows} rows, {DIM}-d vectors, index '{index}'");
    println!("database: {}", path.display());
    let db = Database::create(&path).context("creating the database")?;
    let mut w = db.writer()?;
    let schema = Schema::new(vec![
        ColumnDef::new("topic", ColumnType::String, false),
        ColumnDef::new("year", ColumnType::I64, true),
    ])?;
    w.create_collection("images", schema, IndexSpec::new(index))?;
    let space = w.add_space(
        "images",
        SpaceSpec {
            model_id: "walkthrough-random".into(),
            fingerprint: "seed-7".into(),
            modality: Modality::Image,
            dim: DIM,
            metric: Metric::Cosine,
        },
        true,
    )?;
    let mut rng = StdRng::seed_from_u64(7);
    let (vectors, topics, centres) = topic_vectors(rows, &mut rng);
    let new_rows: Vec<NewRow> = topics
        .iter()
        .enumerate()
        .map(|(i, &t)| NewRow {
            image: None,
            texts: vec![format!("photo {i} of a {}", TOPICS[t])],
            split: Some(if i % 10 == 0 { "test" } else { "train" }.into()),
            metadata: vec![
                ("topic".into(), Value::String(TOPICS[t].into())),
                ("year".into(), Value::I64(1990 + (i % 35) as i64)),
            ],
        })
        .collect();
    let t = Instant::now();
    let ids = w.append("images", new_rows, &[(space, &vectors)])?;
    println!(
        "appended {} rows (ids {}..={}) and built the index in {:.2?} -> version {}",
        ids.len(),
        ids[0],
        ids[ids.len() - 1],
        t.elapsed(),
        w.version()
    );
    let before_delete = w.version();

    let snap = db.snapshot()?;
    let query = &centres[..DIM]; // the "beach" centre
    let t = Instant::now();
    let hits = snap.search("images", space, query, 5, None)?;
    println!(
        "\nSEARCH near the '{}' centre, top 5 ({:.2?}):",
        TOPICS[0],
        t.elapsed()
    );
    print_hits(&snap, &hits[0])?;

    let recent =
        |r: &mirante::storage::RowRef<'_>| matches!(r.value_at(1), ValueRef::I64(y) if y >= 2020);
    let t = Instant::now();
    let hits = snap.search("images", space, query, 5, Some(&recent))?;
    println!(
        "\nSEARCH same query WHERE year >= 2020 ({:.2?}):",
        t.elapsed()
    );
    print_hits(&snap, &hits[0])?;

    let doomed: Vec<u64> = hits[0].iter().take(2).map(|h| h.row_id).collect();
    w.delete("images", &doomed)?;
    println!("\nDELETE rows {doomed:?} -> version {}", w.version());
    let hits = db
        .snapshot()?
        .search("images", space, query, 3, Some(&recent))?;
    println!("SEARCH again (deleted rows never come back):");
    print_hits(&db.snapshot()?, &hits[0])?;

    let report = w.compact("images", true)?;
    println!(
        "\nCOMPACT: {} -> {} segments, {} deleted rows dropped",
        report.segments_before, report.segments_after, report.rows_dropped
    );
    let old = db.snapshot_at(before_delete)?;
    println!(
        "time travel: version {before_delete} still has {} rows; newest version {} has {}",
        old.count("images")?,
        db.snapshot()?.version(),
        db.snapshot()?.count("images")?
    );
    drop(old);
    let vac = w.vacuum(1)?;
    println!(
        "VACUUM: removed {} versions and {} files ({} KiB)",
        vac.versions_removed,
        vac.files_removed,
        vac.bytes_freed / 1024
    );
    Ok(())
}

fn print_hits(snap: &mirante::storage::Snapshot, hits: &[mirante::storage::Hit]) -> Result<()> {
    println!(
        "  {:>4}  {:>6}  {:>7}  {:<10} {:>5}  text",
        "rank", "id", "score", "topic", "year"
    );
    for (rank, h) in hits.iter().enumerate() {
        let row = snap.get("images", h.row_id)?.context("hit row exists")?;
        let row = row.row();
        let topic = match row.value("topic")? {
            ValueRef::String(s) => s.to_string(),
            other => format!("{other:?}"),
        };
        let year = match row.value("year")? {
            ValueRef::I64(y) => y.to_string(),
            _ => "null".into(),
        };
        println!(
            "  {:>4}  {:>6}  {:>7.4}  {:<10} {:>5}  {}",
            rank + 1,
            h.row_id,
            h.score,
            topic,
            year,
            row.text(0).unwrap_or("")
        );
    }
    Ok(())
}

fn info(path: &PathBuf) -> Result<()> {
    let location = path.to_string_lossy();
    let db = if mirante::storage::is_remote(&location) {
        Database::open_location(&location, None)?
    } else {
        Database::open(path)?
    };
    let snap = db.snapshot()?;
    let versions = db.versions()?;
    println!(
        "{}: version {} ({} retained: {}..={})",
        path.display(),
        snap.version(),
        versions.len(),
        versions.first().copied().unwrap_or_default(),
        versions.last().copied().unwrap_or_default()
    );
    for w in db.warnings() {
        eprintln!("warning: {w}");
    }
    for c in snap.collections() {
        println!(
            "collection {}: {} live rows in {} segments, index '{}'",
            c.name,
            c.live_rows(),
            c.segments.len(),
            c.index.factory
        );
        for s in &c.spaces {
            let active = c.active(s.spec.modality) == Some(s.id);
            println!(
                "  space {} {} {} dim {}{}",
                s.id,
                s.spec.modality,
                s.spec.model_id,
                s.spec.dim,
                if active { " (active)" } else { "" }
            );
        }
    }
    Ok(())
}
