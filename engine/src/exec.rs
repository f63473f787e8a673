//! The executor: runs bound plans against the database. Each statement that changes data is one
//! commit (an import is one transaction however many segments it writes).

use std::collections::BTreeMap;
use std::sync::Arc;

use mirante_query::ast::{ColumnType as AstType, Options as AstOptions};
use mirante_query::{self as query, ColumnRef, Literal, Plan, SelectList, Statement, TrainingKind};
use mirante_storage::{
    self as storage, CollectionMeta, ColumnDef, ColumnType, ImageData, IndexSpec, Modality, NewRow,
    Schema, SpaceId, Strategy, Value,
};
use mirante_training::{ImageSource, embed_images, embed_texts};

use crate::db::{Database, columns_of, predicate_sql, row_filter};
use crate::error::{Error, Result, RowFailure};
use crate::ingest::{self, ImageRef, ImportOptions, Item};
use crate::models::LoadedModel;
use crate::result::{Cell, ResultSet};
use crate::search;

/// Rows embedded and staged per import step; bounds memory for sources of any size.
const IMPORT_CHUNK: usize = 1024;

pub(crate) fn run(db: &Database, plan: Plan) -> Result<ResultSet> {
    match plan {
        Plan::Search(p) => search::run(db, &p, p.into.is_some()).map(|r| r.to_result_set()),
        Plan::Evaluate(p) => crate::evaluate::run(db, &p).map(|e| e.to_result_set()),
        Plan::Train(p) => match &p.kind {
            TrainingKind::Finetune { base } => crate::finetune::run(db, &p, base),
            TrainingKind::Elip { backbone } => crate::elip::train(db, &p, backbone.as_deref()),
        },
        Plan::Select {
            collection,
            list,
            filter,
            limit,
            offset,
        } => select(db, &collection, &list, filter.as_ref(), limit, offset),
        Plan::Delete { collection, filter } => {
            let all = |_: &storage::RowRef<'_>| true;
            let n = match &filter {
                Some(p) => db.writer()?.delete_where(&collection, &row_filter(p))?,
                None => db.writer()?.delete_where(&collection, &all)?,
            };
            Ok(ResultSet::status(format!(
                "deleted {n} row{} from {collection}",
                plural(n)
            )))
        }
        Plan::Insert {
            collection,
            columns,
            rows,
        } => insert(db, &collection, &columns, rows),
        Plan::Explain(inner) => explain(db, *inner),
        Plan::Other(stmt) => statement(db, stmt),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn statement(db: &Database, stmt: Statement) -> Result<ResultSet> {
    match stmt {
        Statement::CreateCollection {
            name,
            if_not_exists,
            columns,
            options,
        } => {
            if if_not_exists && db.snapshot()?.collection(&name.value).is_ok() {
                return Ok(ResultSet::status(format!(
                    "collection {} already exists",
                    name.value
                )));
            }
            let opts = options_map(&options, &["model", "index"])?;
            let schema = Schema::new(
                columns
                    .iter()
                    .map(|c| {
                        let ty = match c.ty {
                            AstType::String => ColumnType::String,
                            AstType::Int => ColumnType::I64,
                            AstType::Float => ColumnType::F64,
                            AstType::Bool => ColumnType::Bool,
                        };
                        ColumnDef::new(c.name.value.clone(), ty, c.nullable)
                    })
                    .collect(),
            )?;
            let index = match opts.get("index") {
                Some(f) => IndexSpec::new(string_option(f, "index")?),
                None => IndexSpec::new("Flat"),
            };
            // Load the model first: a bad locator must not leave a half-made collection.
            // No model option: the default model; `model = NULL`: no model (rows without
            // embeddings, or vectors brought by IMPORT).
            let model = match opts.get("model") {
                None => Some(db.models.load(crate::models::DEFAULT_MODEL)?),
                Some(Literal::Null) => None,
                Some(m) => Some(db.models.load(&string_option(m, "model")?)?),
            };
            let mut w = db.writer()?;
            w.create_collection(&name.value, schema, index)?;
            if let Some(m) = &model {
                for modality in [Modality::Image, Modality::Text] {
                    w.add_space(&name.value, m.space(modality), true)?;
                }
            }
            Ok(ResultSet::status(match model {
                Some(m) => format!(
                    "created collection {} with model {} ({}, dim {})",
                    name.value,
                    m.key,
                    m.family(),
                    m.dim()
                ),
                None => format!(
                    "created collection {} without a model (add one with EMBED {} USING MODEL '...')",
                    name.value, name.value
                ),
            }))
        }
        Statement::DropCollection { name, if_exists } => {
            if if_exists && db.snapshot()?.collection(&name.value).is_err() {
                return Ok(ResultSet::status(format!(
                    "collection {} does not exist",
                    name.value
                )));
            }
            db.writer()?.drop_collection(&name.value)?;
            Ok(ResultSet::status(format!(
                "dropped collection {}",
                name.value
            )))
        }
        Statement::DropModel { name } => crate::finetune::drop_model(db, &name),
        Statement::ExportModel { name, folder } => {
            crate::finetune::export_model(db, &name, &folder)
        }
        Statement::ShowCollections => show_collections(db),
        Statement::ShowModels => show_models(db),
        Statement::Describe { name } => describe(db, &name.value),
        Statement::Import {
            collection,
            source,
            options,
            skip_errors,
        } => import(db, &collection.value, &source, &options, skip_errors),
        Statement::CreateIndex {
            collection,
            factory,
        } => {
            let v = db
                .writer()?
                .set_index(&collection.value, IndexSpec::new(factory.clone()))?;
            Ok(ResultSet::status(format!(
                "indexed {} with '{factory}' (version {v})",
                collection.value
            )))
        }
        Statement::Embed { collection, model } => {
            embed(db, &collection.value, model.as_deref(), false)
        }
        Statement::Reembed { collection, model } => {
            embed(db, &collection.value, Some(&model), true)
        }
        Statement::SetModel { collection, model } => set_model(db, &collection.value, &model),
        Statement::Compact { collection } => {
            let r = db.writer()?.compact(&collection.value, true)?;
            Ok(ResultSet::status(format!(
                "compacted {}: {} segments -> {}, {} deleted rows dropped",
                collection.value, r.segments_before, r.segments_after, r.rows_dropped
            )))
        }
        Statement::Vacuum { keep_versions } => {
            let keep = keep_versions.unwrap_or(1) as usize;
            let r = db.writer()?.vacuum(keep)?;
            Ok(ResultSet::status(format!(
                "vacuum kept {keep} version{}: removed {} versions and {} files ({} bytes)",
                plural(keep),
                r.versions_removed,
                r.files_removed,
                r.bytes_freed
            )))
        }
        other => Err(Error::Invalid(format!(
            "statement {other:?} cannot run here"
        ))),
    }
}

/// Options by lower-cased key, rejecting keys not in `allowed` at their position.
pub(crate) fn options_map(
    options: &AstOptions,
    allowed: &[&str],
) -> Result<BTreeMap<String, Literal>> {
    let mut out = BTreeMap::new();
    for (key, value) in &options.0 {
        let k = key.value.to_ascii_lowercase();
        if !allowed.contains(&k.as_str()) {
            let hint = match query::closest(&k, allowed.iter().copied()) {
                Some(c) => format!("did you mean '{c}'?"),
                None => format!("valid options are: {}", allowed.join(", ")),
            };
            return Err(query::Error::bind(
                format!("unknown option '{}'; {hint}", key.value),
                key.pos,
            )
            .into());
        }
        out.insert(k, value.clone());
    }
    Ok(out)
}

pub(crate) fn string_option(v: &Literal, key: &str) -> Result<String> {
    match v {
        Literal::String(s) => Ok(s.clone()),
        other => Err(Error::Invalid(format!(
            "option {key} expects a quoted string, got {}",
            other.type_name()
        ))),
    }
}

/// The model a collection embeds with: its active spaces' model, checked against the weights.
pub(crate) fn collection_model(
    db: &Database,
    c: &CollectionMeta,
) -> Result<Option<Arc<LoadedModel>>> {
    let Some(space) = c.active_image.or(c.active_text) else {
        return Ok(None);
    };
    let spec = &c.space(space)?.spec;
    let model = db.models.load(&spec.model_id)?;
    check_fingerprint(&model, spec, &c.name)?;
    Ok(Some(model))
}

pub(crate) fn check_fingerprint(
    model: &LoadedModel,
    spec: &storage::SpaceSpec,
    collection: &str,
) -> Result<()> {
    if model.fingerprint != spec.fingerprint {
        return Err(Error::Invalid(format!(
            "the weights of model {} changed since collection {collection} was embedded with it \
             (fingerprint {} then, {} now); re-embed with EMBED {collection} USING MODEL '{}'",
            spec.model_id, spec.fingerprint, model.fingerprint, spec.model_id
        )));
    }
    Ok(())
}

fn select(
    db: &Database,
    collection: &str,
    list: &SelectList,
    filter: Option<&query::Predicate>,
    limit: Option<u64>,
    offset: u64,
) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    let f = filter.map(row_filter);
    let filter_ref = f.as_ref().map(|f| f as &storage::RowFilter<'_>);
    let columns = match list {
        SelectList::CountStar => {
            let n = match filter_ref {
                None => snap.count(collection)?,
                Some(f) => {
                    let mut n = 0u64;
                    snap.scan(collection, Some(f), |_| {
                        n += 1;
                        Ok(())
                    })?;
                    n
                }
            };
            return Ok(ResultSet {
                columns: vec!["count".into()],
                rows: vec![vec![Cell::Int(n as i64)]],
                status: None,
            });
        }
        SelectList::Columns(c) => c,
    };
    let mut out = ResultSet::new(columns.iter().map(|(n, _)| n.clone()).collect());
    let mut seen = 0u64;
    let limit = limit.unwrap_or(u64::MAX);
    snap.scan(collection, filter_ref, |row| {
        if seen >= offset && (seen - offset) < limit {
            out.rows
                .push(columns.iter().map(|(_, c)| cell_of(&row, *c)).collect());
        }
        seen += 1;
        Ok(())
    })?;
    Ok(out)
}

/// The value of a column of a stored row.
pub(crate) fn cell_of(row: &storage::RowRef<'_>, column: ColumnRef) -> Cell {
    match column {
        ColumnRef::Id => Cell::Int(row.id() as i64),
        ColumnRef::Image => row
            .image_source()
            .map_or(Cell::Null, |s| Cell::Str(s.into())),
        ColumnRef::Text => Cell::List(row.texts().map(str::to_string).collect()),
        ColumnRef::Split => row.split().map_or(Cell::Null, |s| Cell::Str(s.into())),
        ColumnRef::Meta(i) => row.value_at(i).to_value().into(),
    }
}

fn literal_value(l: Literal) -> Value {
    match l {
        Literal::Null => Value::Null,
        Literal::Bool(b) => Value::Bool(b),
        Literal::Int(i) => Value::I64(i),
        Literal::Float(f) => Value::F64(f),
        Literal::String(s) => Value::String(s),
        Literal::List(items) => Value::String(format!("{items:?}")),
    }
}

fn insert(
    db: &Database,
    collection: &str,
    columns: &[(String, ColumnRef)],
    rows: Vec<Vec<Literal>>,
) -> Result<ResultSet> {
    let mut records = Vec::with_capacity(rows.len());
    for (i, values) in rows.into_iter().enumerate() {
        let mut image = None;
        let mut texts = Vec::new();
        let mut split = None;
        let mut metadata = Vec::new();
        for ((name, column), lit) in columns.iter().zip(values) {
            match (column, lit) {
                (ColumnRef::Image, Literal::String(p)) => image = Some(p),
                (ColumnRef::Text, Literal::String(s)) => texts = vec![s],
                (ColumnRef::Text, Literal::List(items)) => {
                    texts = items
                        .into_iter()
                        .filter_map(|l| match l {
                            Literal::String(s) => Some(s),
                            _ => None,
                        })
                        .collect()
                }
                (ColumnRef::Split, Literal::String(s)) => split = Some(s),
                (ColumnRef::Meta(_), l) => metadata.push((name.clone(), literal_value(l))),
                _ => {}
            }
        }
        let location = format!("VALUES row {}", i + 1);
        let Some(image) = image else {
            return Err(Error::RowsFailed {
                total: records.len() + 1,
                failures: vec![RowFailure {
                    location,
                    image: None,
                    reason: "a row needs an image (a path in the image column)".into(),
                }],
            });
        };
        records.push(Item::Row(ingest::Record {
            location,
            image: ImageRef::Path(image.into()),
            texts,
            split,
            metadata,
            vectors: None,
        }));
    }
    let mut w = db.writer()?;
    let mut tx = w.transaction();
    let report = load_rows(
        db,
        &mut tx,
        collection,
        records.into_iter().map(Ok),
        false,
        None,
    )?;
    tx.commit(format!("insert {} rows into {collection}", report.rows))?;
    Ok(ResultSet::status(format!(
        "inserted {} row{} into {collection}",
        report.rows,
        plural(report.rows)
    )))
}

/// What loading rows did.
#[derive(Debug, Default)]
struct LoadReport {
    rows: usize,
    skipped: Vec<RowFailure>,
    embedded: bool,
}

/// Reads, embeds (with the collection's model, if it has one, or taking the rows' precomputed
/// vectors) and stages rows in `tx`. A bad row fails the whole load unless `skip_errors`, in
/// which case it is reported and left out.
fn load_rows(
    db: &Database,
    tx: &mut storage::Transaction<'_>,
    collection: &str,
    items: impl Iterator<Item = Result<Item>>,
    skip_errors: bool,
    precomputed: Option<&ingest::EmbeddingColumns>,
) -> Result<LoadReport> {
    let snap = db.snapshot()?;
    let c = snap.collection(collection)?;
    let model = match precomputed {
        Some(e) => {
            check_precomputed_target(c, e)?;
            None
        }
        None => collection_model(db, c)?,
    };
    // Precomputed vectors: their spaces (image, text), found or staged at the first rows.
    let mut external: Option<[(SpaceId, usize); 2]> = None;
    let spaces: Vec<(SpaceId, Modality)> = [c.active_image, c.active_text]
        .into_iter()
        .flatten()
        .map(|s| Ok((s, c.space(s)?.spec.modality)))
        .collect::<Result<_>>()?;
    let bar = progress(db.options.progress);
    let mut report = LoadReport {
        embedded: model.is_some() || precomputed.is_some(),
        ..Default::default()
    };
    let mut items = items.peekable();
    let mut seen = 0usize;
    while items.peek().is_some() {
        let mut failures = Vec::new();
        let mut rows: Vec<(ingest::Record, Vec<u8>)> = Vec::new();
        for item in items.by_ref().take(IMPORT_CHUNK) {
            seen += 1;
            match item? {
                Item::Bad(f) => failures.push(f),
                Item::Row(r) => match read_image(&r.image) {
                    Ok(bytes) => rows.push((r, bytes)),
                    Err(reason) => failures.push(RowFailure {
                        location: r.location.clone(),
                        image: Some(r.image.name()),
                        reason,
                    }),
                },
            }
        }
        let (rows, image_vectors) = match &model {
            Some(m) => {
                // The bytes move into the sources and back out, so each image is held once.
                let (records, sources): (Vec<_>, Vec<ImageSource>) = rows
                    .into_iter()
                    .map(|(r, bytes)| {
                        let source = r.image.name();
                        (r, ImageSource::Bytes { source, bytes })
                    })
                    .unzip();
                let embedded = embed_images(&m.encoder, &sources, &db.options.pipeline(false))?;
                let mut kept = Vec::with_capacity(records.len());
                let mut vectors = Vec::new();
                for ((r, src), e) in records.into_iter().zip(sources).zip(embedded.embeddings) {
                    if let (Some(v), ImageSource::Bytes { bytes, .. }) = (e, src) {
                        vectors.extend(v);
                        kept.push((r, bytes));
                    }
                }
                for f in embedded.failures {
                    failures.push(RowFailure {
                        location: format!("image {}", f.source),
                        image: Some(f.source),
                        reason: f.reason,
                    });
                }
                (kept, vectors)
            }
            None => {
                // Without a model, still refuse what no model could read later.
                let mut kept = Vec::with_capacity(rows.len());
                for (r, bytes) in rows {
                    match image::ImageReader::new(std::io::Cursor::new(&bytes))
                        .with_guessed_format()
                        .map_err(|e| e.to_string())
                        .and_then(|i| i.into_dimensions().map_err(|e| e.to_string()))
                    {
                        Ok(_) => kept.push((r, bytes)),
                        Err(reason) => failures.push(RowFailure {
                            location: r.location.clone(),
                            image: Some(r.image.name()),
                            reason: format!("cannot decode image: {reason}"),
                        }),
                    }
                }
                (kept, Vec::new())
            }
        };
        let mut rows = rows;
        if let Some(e) = precomputed
            && let Some(first) = rows.first().and_then(|(r, _)| r.vectors.as_ref())
        {
            let spaces = match external {
                Some(s) => s,
                None => {
                    let s = external_spaces(tx, collection, e, first)?;
                    external = Some(s);
                    s
                }
            };
            let [(_, image_dim), (_, text_dim)] = spaces;
            rows.retain(|(r, _)| {
                let Some(v) = &r.vectors else { return false };
                let bad = if v.image.len() != image_dim {
                    Some(("image", v.image.len(), image_dim))
                } else {
                    v.texts
                        .iter()
                        .find(|t| t.len() != text_dim)
                        .map(|t| ("text", t.len(), text_dim))
                };
                if let Some((kind, got, want)) = bad {
                    failures.push(RowFailure {
                        location: r.location.clone(),
                        image: Some(r.image.name()),
                        reason: format!(
                            "{kind} embedding has {got} values; the {kind} vectors of model {} \
                             have {want}",
                            e.model
                        ),
                    });
                }
                bad.is_none()
            });
        }
        if !failures.is_empty() && !skip_errors {
            return Err(Error::RowsFailed {
                total: seen,
                failures,
            });
        }
        report.skipped.extend(failures);
        let text_vectors: Vec<f32> = match &model {
            Some(m) => {
                let texts: Vec<&str> = rows
                    .iter()
                    .flat_map(|(r, _)| r.texts.iter().map(String::as_str))
                    .collect();
                embed_texts(&m.encoder, &texts, &db.options.pipeline(false))?
                    .into_iter()
                    .flatten()
                    .collect()
            }
            None => Vec::new(),
        };
        let (image_vectors, text_vectors, spaces) = match external {
            Some([(image, _), (text, _)]) => {
                let vectors = rows.iter().filter_map(|(r, _)| r.vectors.as_ref());
                let image_vectors: Vec<f32> = vectors
                    .clone()
                    .flat_map(|v| v.image.iter().copied())
                    .collect();
                let text_vectors: Vec<f32> = vectors
                    .flat_map(|v| v.texts.iter().flatten().copied())
                    .collect();
                let spaces = vec![(image, Modality::Image), (text, Modality::Text)];
                (image_vectors, text_vectors, spaces)
            }
            None if model.is_some() => (image_vectors, text_vectors, spaces.clone()),
            None => (image_vectors, text_vectors, Vec::new()),
        };
        let embeddings: Vec<(SpaceId, &[f32])> = spaces
            .iter()
            .map(|&(s, m)| match m {
                Modality::Image => (s, &image_vectors[..]),
                Modality::Text => (s, &text_vectors[..]),
            })
            .collect();
        let n = rows.len();
        let new_rows: Vec<NewRow> = rows
            .into_iter()
            .map(|(r, bytes)| NewRow {
                image: Some(ImageData {
                    bytes,
                    source: r.image.name(),
                }),
                texts: r.texts,
                split: r.split,
                metadata: r.metadata,
            })
            .collect();
        tx.append(collection, new_rows, &embeddings)?;
        report.rows += n;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(report)
}

/// Precomputed vectors go into a collection without a model, or one whose active spaces are
/// that external model's.
fn check_precomputed_target(c: &CollectionMeta, e: &ingest::EmbeddingColumns) -> Result<()> {
    for active in [c.active_image, c.active_text].into_iter().flatten() {
        let spec = &c.space(active)?.spec;
        if spec.model_id != e.model || spec.fingerprint != external_fingerprint(&e.model) {
            return Err(Error::Invalid(format!(
                "collection {} embeds with model {}; precomputed vectors from '{}' go into a \
                 collection without a model (CREATE COLLECTION name) or one holding that \
                 model's vectors",
                c.name, spec.model_id, e.model
            )));
        }
    }
    Ok(())
}

/// Fingerprint of vectors made outside Mirante: their model is known by name only.
fn external_fingerprint(model: &str) -> String {
    format!("external:{model}")
}

/// The (space, dim) of the image and text vectors of an external model, staged in `tx` (and
/// made active) with the dimensions of the first row when the collection lacks them.
fn external_spaces(
    tx: &mut storage::Transaction<'_>,
    collection: &str,
    e: &ingest::EmbeddingColumns,
    first: &ingest::Precomputed,
) -> Result<[(SpaceId, usize); 2]> {
    let fingerprint = external_fingerprint(&e.model);
    let mut out = [(0, 0); 2];
    for (slot, (modality, first_dim)) in [
        (Modality::Image, first.image.len()),
        (Modality::Text, first.texts.first().map_or(0, Vec::len)),
    ]
    .into_iter()
    .enumerate()
    {
        let existing = tx
            .collection(collection)?
            .spaces
            .iter()
            .find(|s| s.spec.modality == modality && s.spec.fingerprint == fingerprint)
            .map(|s| s.spec.dim);
        let dim = match (existing, first_dim) {
            (Some(d), _) => d,
            // A first row without captions tells nothing about text vectors; take the image's.
            (None, 0) => first.image.len(),
            (None, d) => d,
        };
        let spec = storage::SpaceSpec {
            model_id: e.model.clone(),
            fingerprint: fingerprint.clone(),
            modality,
            dim,
            metric: storage::Metric::Cosine,
        };
        out[slot] = (tx.add_space(collection, spec, true)?, dim);
    }
    Ok(out)
}

fn read_image(image: &ImageRef) -> std::result::Result<Vec<u8>, String> {
    match image {
        ImageRef::Path(p) => std::fs::read(p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "image file not found".to_string(),
            _ => e.to_string(),
        }),
        ImageRef::Bytes { bytes, .. } => Ok(bytes.clone()),
    }
}

pub(crate) fn progress(show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} importing: {pos} rows ({per_sec})")
    {
        bar.set_style(style);
    }
    bar
}

fn import(
    db: &Database,
    collection: &str,
    source: &str,
    options: &AstOptions,
    skip_errors: bool,
) -> Result<ResultSet> {
    let opts = options_map(
        options,
        &[
            "image_column",
            "text_column",
            "split",
            "columns",
            "limit",
            "image_embedding",
            "text_embedding",
            "embedding_model",
        ],
    )?;
    let text = |k: &str| opts.get(k).map(|v| string_option(v, k)).transpose();
    let import_options = ImportOptions {
        image_column: text("image_column")?,
        text_column: text("text_column")?,
        split: text("split")?,
        columns: text("columns")?.map(|c| {
            c.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }),
        limit: match opts.get("limit") {
            Some(Literal::Int(n)) if *n >= 0 => Some(*n as usize),
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "option limit expects a non-negative integer, got {}",
                    other.type_name()
                )));
            }
            None => None,
        },
        embeddings: match (
            text("image_embedding")?,
            text("text_embedding")?,
            text("embedding_model")?,
        ) {
            (None, None, None) => None,
            (Some(image), Some(text), Some(model)) => {
                Some(ingest::EmbeddingColumns { image, text, model })
            }
            _ => {
                return Err(Error::Invalid(
                    "precomputed embeddings need all three options: image_embedding and \
                     text_embedding (the columns) and embedding_model (the name of the model \
                     that made them)"
                        .into(),
                ));
            }
        },
    };
    let src = ingest::open(source, &import_options)?;
    let mut w = db.writer()?;
    let mut tx = w.transaction();
    tx.add_columns(collection, src.columns.clone())?;
    let report = load_rows(
        db,
        &mut tx,
        collection,
        src.items,
        skip_errors,
        import_options.embeddings.as_ref(),
    )?;
    if report.rows > 0 {
        tx.commit(format!(
            "import {} rows into {collection} from {source}",
            report.rows
        ))?;
    }
    let mut status = format!(
        "imported {} row{} into {collection}",
        report.rows,
        plural(report.rows)
    );
    if !report.embedded {
        status.push_str(&format!(
            " without embeddings (the collection has no model; add one with EMBED {collection} USING MODEL '...')"
        ));
    }
    if report.skipped.is_empty() {
        return Ok(ResultSet::status(status));
    }
    status.push_str(&format!(", skipped {}", report.skipped.len()));
    Ok(ResultSet {
        columns: vec!["skipped".into(), "image".into(), "reason".into()],
        rows: report
            .skipped
            .into_iter()
            .map(|f| {
                vec![
                    Cell::Str(f.location),
                    f.image.map_or(Cell::Null, Cell::Str),
                    Cell::Str(f.reason),
                ]
            })
            .collect(),
        status: Some(status),
    })
}

/// `EMBED` (`switch` false): registers the model's spaces, embeds every segment that lacks
/// them, and makes them active only where the collection had no model. `REEMBED` (`switch`
/// true): the same, then switches both spaces to the new model in one commit. Segments are
/// committed one by one, so a killed job resumes where it stopped; until the switch, searches
/// use the old model.
fn embed(db: &Database, collection: &str, model: Option<&str>, switch: bool) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    let c = snap.collection(collection)?;
    let model = match model {
        Some(m) => db.models.load(m)?,
        None => collection_model(db, c)?.ok_or_else(|| {
            Error::Invalid(format!(
                "collection {collection} has no model; name one: EMBED {collection} USING MODEL '<folder or hub id>'"
            ))
        })?,
    };
    let mut w = db.writer()?;
    let mut segments = 0;
    let mut activate = Vec::new();
    for modality in [Modality::Image, Modality::Text] {
        let had_none = match modality {
            Modality::Image => c.active_image.is_none(),
            Modality::Text => c.active_text.is_none(),
        };
        let space = w.add_space(collection, model.space(modality), false)?;
        segments += w.embed(collection, space, false, |seg| {
            embed_segment(db, &model, seg, modality).map_err(|e| match e {
                Error::Storage(s) => s,
                other => storage::Error::InvalidArgument(other.to_string()),
            })
        })?;
        if switch || had_none {
            activate.push(space);
        }
    }
    if !activate.is_empty() {
        w.activate_spaces(collection, &activate)?;
    }
    Ok(ResultSet::status(format!(
        "embedded {segments} segment column{} of {collection} with {}{}",
        plural(segments),
        model.key,
        if switch {
            format!("; {collection} now searches with it")
        } else {
            String::new()
        }
    )))
}

/// `ALTER COLLECTION c SET MODEL 'm'`: activates the model's spaces (every segment must hold
/// their vectors) in one commit; the previous model's vectors stay until `VACUUM`.
fn set_model(db: &Database, collection: &str, model: &str) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    let c = snap.collection(collection)?;
    let (image, text) = crate::evaluate::spaces_of(db, c, model)?;
    let missing = c
        .segments
        .iter()
        .filter(|s| s.column(image).is_none() || s.column(text).is_none())
        .count();
    if missing > 0 {
        return Err(Error::Invalid(format!(
            "{missing} segment{} of {collection} lack vectors from {model}; compute them with \
             REEMBED {collection} USING MODEL '{model}'",
            plural(missing)
        )));
    }
    db.writer()?.activate_spaces(collection, &[image, text])?;
    Ok(ResultSet::status(format!(
        "{collection} now searches with {model}"
    )))
}

/// All vectors of a segment (deleted rows included, as storage expects) for one tower.
fn embed_segment(
    db: &Database,
    model: &LoadedModel,
    seg: &storage::SegmentView<'_>,
    modality: Modality,
) -> Result<Vec<f32>> {
    let rows = (0..seg.len()).map(|i| seg.row(i));
    match modality {
        Modality::Image => {
            let sources: Vec<ImageSource> = rows
                .map(|r| ImageSource::Bytes {
                    source: r.image_source().unwrap_or("").to_string(),
                    bytes: r.image_bytes().unwrap_or_default().to_vec(),
                })
                .collect();
            let out = embed_images(
                &model.encoder,
                &sources,
                &db.options.pipeline(db.options.progress),
            )?;
            if let Some(f) = out.failures.first() {
                return Err(Error::Invalid(format!(
                    "cannot embed stored image {}: {} ({} images failed)",
                    f.source,
                    f.reason,
                    out.failures.len()
                )));
            }
            Ok(out.embeddings.into_iter().flatten().flatten().collect())
        }
        Modality::Text => {
            let texts: Vec<&str> = rows.flat_map(|r| r.texts()).collect();
            Ok(embed_texts(
                &model.encoder,
                &texts,
                &db.options.pipeline(db.options.progress),
            )?
            .into_iter()
            .flatten()
            .collect())
        }
    }
}

fn model_of_space(c: &CollectionMeta, space: Option<SpaceId>) -> Cell {
    space
        .and_then(|s| c.space(s).ok())
        .map_or(Cell::Null, |s| Cell::Str(s.spec.model_id.clone()))
}

fn show_collections(db: &Database) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    let mut out = ResultSet::new(
        ["name", "rows", "captions", "segments", "model", "index"]
            .map(String::from)
            .to_vec(),
    );
    for c in snap.collections() {
        let captions: u64 = c.segments.iter().map(|s| s.texts).sum();
        out.rows.push(vec![
            Cell::Str(c.name.clone()),
            Cell::Int(c.live_rows() as i64),
            Cell::Int(captions as i64),
            Cell::Int(c.segments.len() as i64),
            model_of_space(c, c.active_image.or(c.active_text)),
            Cell::Str(c.index.factory.clone()),
        ]);
    }
    Ok(out)
}

/// A registry model's lineage: where it came from, what it was trained on, how, and how well.
struct Lineage {
    dim: Option<i64>,
    base: String,
    trained_on: String,
    hyperparameters: String,
    validation: Option<String>,
}

fn registry_models(db: &Database) -> Vec<(String, Lineage)> {
    let dir = db.path().join(crate::finetune::REGISTRY);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(text) = std::fs::read_to_string(path.join(crate::finetune::LINEAGE)) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let Ok(key) = path.canonicalize() else {
            continue;
        };
        let dim = std::fs::read_to_string(path.join("config.json"))
            .ok()
            .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
            .and_then(|c| {
                c["projection_dim"]
                    .as_i64()
                    .or_else(|| c["text_config"]["projection_size"].as_i64())
                    .or_else(|| c["vision_config"]["hidden_size"].as_i64())
            });
        let s = |k: &str| json[k].as_str().unwrap_or("?").to_string();
        let hyperparameters = json["options"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        out.push((
            key.display().to_string(),
            Lineage {
                dim,
                base: s("base"),
                trained_on: format!(
                    "{} version {}{} ({} rows)",
                    s("collection"),
                    json["version"],
                    json["filter"]
                        .as_str()
                        .map(|f| format!(" WHERE {f}"))
                        .unwrap_or_default(),
                    json["train_rows"],
                ),
                hyperparameters,
                validation: json["best_validation"]
                    .as_f64()
                    .map(|v| format!("{} {v:.4} (epoch {})", s("metric"), json["best_epoch"])),
            },
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A model's family from its checkpoint's config.json (`elip` for an ELIP mapper), without
/// loading the weights.
fn model_family(key: &str) -> Cell {
    let folder = crate::models::model_folder(key).ok();
    if folder
        .as_ref()
        .is_some_and(|f| f.join(mirante_training::elip::CONFIG_FILE).is_file())
    {
        return Cell::Str("elip".into());
    }
    folder
        .and_then(|folder| std::fs::read_to_string(folder.join("config.json")).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| config["model_type"].as_str().map(str::to_string))
        .map_or(Cell::Null, Cell::Str)
}

fn show_models(db: &Database) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    /// Per model: its dimension, the collections with its embeddings, those where it is active.
    #[derive(Default)]
    struct Usage {
        dim: usize,
        collections: Vec<String>,
        active_in: Vec<String>,
    }
    let mut models: BTreeMap<(String, String), Usage> = BTreeMap::new();
    for c in snap.collections() {
        for s in &c.spaces {
            let e = models
                .entry((s.spec.model_id.clone(), s.spec.fingerprint.clone()))
                .or_default();
            e.dim = s.spec.dim;
            if !e.collections.contains(&c.name) {
                e.collections.push(c.name.clone());
            }
            let active = [c.active_image, c.active_text].contains(&Some(s.id));
            if active && !e.active_in.contains(&c.name) {
                e.active_in.push(c.name.clone());
            }
        }
    }
    let mut out = ResultSet::new(
        [
            "model",
            "family",
            "dim",
            "fingerprint",
            "collections",
            "active_in",
            "base",
            "trained_on",
            "hyperparameters",
            "best_validation",
        ]
        .map(String::from)
        .to_vec(),
    );
    let registry = registry_models(db);
    let lineage = |model: &str| registry.iter().find(|(k, _)| k == model).map(|(_, l)| l);
    let text = |s: Option<&String>| s.map_or(Cell::Null, |s| Cell::Str(s.clone()));
    let lineage_cells = |l: Option<&Lineage>| {
        [
            text(l.map(|l| &l.base)),
            text(l.map(|l| &l.trained_on)),
            text(l.map(|l| &l.hyperparameters)),
            text(l.and_then(|l| l.validation.as_ref())),
        ]
    };
    for ((model, fingerprint), usage) in &models {
        let mut row = vec![
            Cell::Str(model.clone()),
            model_family(model),
            Cell::Int(usage.dim as i64),
            Cell::Str(fingerprint.clone()),
            Cell::List(usage.collections.clone()),
            Cell::List(usage.active_in.clone()),
        ];
        row.extend(lineage_cells(lineage(model)));
        out.rows.push(row);
    }
    // Fine-tuned models no collection embeds with yet.
    for (key, l) in &registry {
        if models.keys().any(|(m, _)| m == key) {
            continue;
        }
        let mut row = vec![
            Cell::Str(key.clone()),
            model_family(key),
            l.dim.map_or(Cell::Null, Cell::Int),
            Cell::Null,
            Cell::List(Vec::new()),
            Cell::List(Vec::new()),
        ];
        row.extend(lineage_cells(Some(l)));
        out.rows.push(row);
    }
    Ok(out)
}

fn describe(db: &Database, name: &str) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    let c = snap.collection(name)?;
    let mut out = ResultSet::new(["column", "type", "nullable"].map(String::from).to_vec());
    let kinds = [
        "i64",
        "string (image source)",
        "list of strings (captions)",
        "string",
    ];
    for (info, builtin) in columns_of(&c.schema)
        .iter()
        .zip(kinds.iter().map(Some).chain(std::iter::repeat(None)))
    {
        let ty = match (builtin, info.column) {
            (Some(k), _) => k.to_string(),
            (None, ColumnRef::Meta(i)) => c.schema.metadata[i].ty.to_string(),
            (None, _) => String::new(),
        };
        out.rows.push(vec![
            Cell::Str(info.name.clone()),
            Cell::Str(ty),
            Cell::Bool(info.nullable),
        ]);
    }
    let spaces: Vec<String> = c
        .spaces
        .iter()
        .map(|s| {
            let active = [c.active_image, c.active_text].contains(&Some(s.id));
            format!(
                "{} {} (dim {}{})",
                s.spec.modality,
                s.spec.model_id,
                s.spec.dim,
                if active { ", active" } else { "" }
            )
        })
        .collect();
    out.status = Some(format!(
        "collection {name}: {} rows in {} segments, index '{}'; embedding spaces: {}",
        c.live_rows(),
        c.segments.len(),
        c.index.factory,
        if spaces.is_empty() {
            "none".to_string()
        } else {
            spaces.join("; ")
        }
    ));
    Ok(out)
}

fn explain(db: &Database, plan: Plan) -> Result<ResultSet> {
    let mut lines = Vec::new();
    match &plan {
        Plan::Search(p) => {
            let snap = db.snapshot()?;
            let resolved = search::resolve(db, &snap, p)?;
            let c = snap.collection(&p.collection)?;
            let spec = &c.space(resolved.space)?.spec;
            lines.push(format!(
                "Search {} for the top {} {}",
                p.collection,
                p.rerank.as_ref().map_or(p.limit, |r| r.top.max(p.limit)),
                match resolved.target {
                    query::Target::Images => "images",
                    query::Target::Texts => "captions",
                }
            ));
            lines.push(format!("  query: {}", resolved.describe_query()));
            lines.push(format!(
                "  space {}: {} {} (dim {}, cosine)",
                resolved.space, spec.modality, spec.model_id, spec.dim
            ));
            let f = resolved.filter(p);
            let plans = snap.explain_search(
                &p.collection,
                resolved.space,
                f.as_ref().map(|f| f as &storage::RowFilter<'_>),
            )?;
            lines.push(format!(
                "  filter: {}",
                match (&p.filter, resolved.exclude) {
                    (Some(f), _) => predicate_sql(&c.schema, f),
                    (None, Some(id)) => format!("id <> {id}"),
                    (None, None) => "none".into(),
                }
            ));
            for s in plans {
                lines.push(format!(
                    "  segment {}: {} live rows, {} of {} vectors allowed: {}",
                    s.segment,
                    s.live_rows,
                    s.allowed_items,
                    s.items,
                    match s.strategy {
                        Strategy::ExactScan { reason } => format!("exact scan ({reason})"),
                        Strategy::Index { factory, selector } => format!(
                            "FAISS index '{factory}'{}, candidates re-scored exactly",
                            if selector {
                                " with a bitmap ID selector"
                            } else {
                                ""
                            }
                        ),
                    }
                ));
            }
            lines.push("  merge: global top-k by score desc, then row id asc".into());
            if let Some(r) = &p.rerank {
                lines.extend(crate::elip::explain(db, r, p.limit)?);
            }
        }
        Plan::Evaluate(p) => lines.extend(crate::evaluate::explain(db, p)?),
        other => lines.extend(format!("{other:#?}").lines().map(str::to_string)),
    }
    Ok(ResultSet {
        columns: vec!["plan".into()],
        rows: lines.into_iter().map(|l| vec![Cell::Str(l)]).collect(),
        status: None,
    })
}
