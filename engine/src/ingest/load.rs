//! The load path of `IMPORT` and `INSERT`, chunk by chunk: **read** each row's image bytes,
//! **embed and validate** (images with the collection's model, or decoded to check them when it
//! has none, or precomputed vectors checked against their spaces' dimensions; then captions),
//! and **stage** the chunk as a segment of the caller's transaction (or segment builder). A bad row fails the whole
//! load unless failures are skipped, in which case it is reported and left out.

use mirante_query::options::EmbeddingColumns;
use mirante_storage::{self as storage, ImageData, Modality, NewRow, SpaceId};
use mirante_training::imageio::{self, ImageLimits};
use mirante_training::{ImageSource, PipelineOptions, Progress, embed_images, embed_texts};

use super::source::{ImageRef, Item, Record};
use crate::access::Access;
use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result, RowFailure};
use crate::models::LoadedModel;
use crate::spaces::{Spaces, stage_external};

/// Rows embedded and staged per step; bounds memory for sources of any size.
const CHUNK: usize = 1024;

/// What loading rows did.
#[derive(Debug, Default)]
pub(crate) struct LoadReport {
    /// The ids given to the loaded rows, in order.
    pub ids: Vec<u64>,
    pub skipped: Vec<RowFailure>,
    /// Whether the rows got vectors (from the model or precomputed).
    pub embedded: bool,
}

/// A row and its image bytes (none for a text-only row with precomputed vectors).
type ReadRow = (Record, Option<Vec<u8>>);

/// Where the rows' vectors come from.
enum Vectors<'a> {
    /// The collection's model, into its active spaces.
    Model(std::sync::Arc<LoadedModel>, Vec<(SpaceId, Modality)>),
    /// Precomputed columns; their spaces are found or staged at the first row with vectors.
    External(&'a EmbeddingColumns, Option<[(SpaceId, usize); 2]>),
    /// No model: rows are stored without vectors.
    None,
}

/// Reads, embeds and stages `items` into `collection` within `tx`.
pub(crate) fn load(
    db: &Database,
    tx: &mut dyn storage::Stage,
    collection: &str,
    items: impl Iterator<Item = Result<Item>>,
    (skip_errors, precomputed): (bool, Option<&EmbeddingColumns>),
    exec: &ExecOptions,
) -> Result<LoadReport> {
    let snap = db.snapshot()?;
    let c = snap.collection(collection)?;
    let spaces = Spaces::new(db, c);
    let mut vectors = match precomputed {
        Some(e) => {
            spaces.check_external_target(&e.model)?;
            Vectors::External(e, None)
        }
        None => match spaces.active_model()? {
            Some(m) => {
                let active = [c.active_image, c.active_text]
                    .into_iter()
                    .flatten()
                    .map(|s| Ok((s, spaces.spec(s)?.modality)))
                    .collect::<Result<_>>()?;
                Vectors::Model(m, active)
            }
            None => Vectors::None,
        },
    };
    // Images are embedded under the import's own counter.
    let pipeline = PipelineOptions {
        progress: Progress::Hidden,
        ..db.pipeline(exec)
    };
    let bar = db.progress(exec).rows("importing");
    let limits = db.options.image_limits;
    let mut report = LoadReport {
        embedded: !matches!(vectors, Vectors::None),
        ..Default::default()
    };
    let mut items = items.peekable();
    let mut seen = 0usize;
    while items.peek().is_some() {
        exec.cancel.check()?;
        let (rows, mut failures) = read(
            items.by_ref().take(CHUNK),
            (&mut seen, matches!(vectors, Vectors::External(..))),
            limits,
            &db.options.access,
        )?;
        let (rows, mut embeddings) = embed(
            &mut vectors,
            tx,
            collection,
            (rows, &mut failures),
            &pipeline,
            limits,
        )?;
        if !failures.is_empty() && !skip_errors {
            return Err(Error::RowsFailed {
                total: seen,
                failures,
            });
        }
        report.skipped.extend(failures);
        // Captions are embedded once the chunk's rows are known good.
        if let Vectors::Model(model, spaces) = &vectors
            && let Some(&(space, _)) = spaces.iter().find(|(_, m)| *m == Modality::Text)
        {
            embeddings.push((space, caption_vectors(model, &rows, &pipeline)?));
        }
        let ids = stage(tx, collection, rows, &embeddings)?;
        bar.inc(ids.len() as u64);
        report.ids.extend(ids);
    }
    bar.finish_and_clear();
    Ok(report)
}

/// Reads the image bytes of a chunk's rows; rows that cannot be read become failures, and so
/// do rows without an image unless `imageless` (their vectors are precomputed: a model could
/// not embed them).
fn read(
    items: impl Iterator<Item = Result<Item>>,
    (seen, imageless): (&mut usize, bool),
    limits: ImageLimits,
    access: &Access,
) -> Result<(Vec<ReadRow>, Vec<RowFailure>)> {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for item in items {
        *seen += 1;
        match item? {
            Item::Bad(f) => failures.push(f),
            Item::Row(r) => match &r.image {
                None if imageless => rows.push((r, None)),
                None => failures.push(failure(
                    &r,
                    "the row has no image; only rows that bring their own vectors (the \
                     precomputed embedding columns) may have none"
                        .into(),
                )),
                Some(image) => match read_image(image, limits.max_file_bytes, access) {
                    Ok(bytes) => rows.push((r, Some(bytes))),
                    Err(reason) => failures.push(failure(&r, reason)),
                },
            },
        }
    }
    Ok((rows, failures))
}

fn failure(r: &Record, reason: String) -> RowFailure {
    RowFailure {
        location: r.location.clone(),
        image: r.image.as_ref().map(ImageRef::name),
        reason,
    }
}

fn read_image(
    image: &ImageRef,
    max_bytes: u64,
    access: &Access,
) -> std::result::Result<Vec<u8>, String> {
    match image {
        ImageRef::Path(p) => {
            access.check_read(p).map_err(|e| e.to_string())?;
            imageio::read_file(p, max_bytes).map_err(|e| match e {
                mirante_training::Error::Image { detail, .. } => detail,
                other => other.to_string(),
            })
        }
        ImageRef::Bytes { bytes, .. } => Ok(bytes.clone()),
    }
}

/// The vectors of a chunk, per space, and the rows that keep them (failures moved out).
type Embedded = (Vec<ReadRow>, Vec<(SpaceId, Vec<f32>)>);

/// Embeds and validates a chunk's images (with the model, captions come after the failure
/// check: `caption_vectors`).
fn embed(
    vectors: &mut Vectors<'_>,
    tx: &mut dyn storage::Stage,
    collection: &str,
    (rows, failures): (Vec<ReadRow>, &mut Vec<RowFailure>),
    pipeline: &PipelineOptions,
    limits: ImageLimits,
) -> Result<Embedded> {
    match vectors {
        Vectors::Model(model, spaces) => {
            let (rows, images) = embed_images_of(model, rows, failures, pipeline)?;
            let embeddings = spaces
                .iter()
                .find(|(_, m)| *m == Modality::Image)
                .map(|&(space, _)| (space, images))
                .into_iter()
                .collect();
            Ok((rows, embeddings))
        }
        Vectors::None => Ok((decodable(rows, failures, limits), Vec::new())),
        Vectors::External(columns, spaces) => {
            let rows = decodable(rows, failures, limits);
            let Some(first) = rows.first().and_then(|(r, _)| r.vectors.as_ref()) else {
                return Ok((rows, Vec::new()));
            };
            let [(image, image_dim), (text, text_dim)] = match spaces {
                Some(s) => *s,
                None => {
                    // A first row without captions tells nothing about text vectors; take the
                    // image's.
                    let text_dim = first.texts.first().map_or(first.image.len(), Vec::len);
                    let s = stage_external(
                        tx,
                        collection,
                        &columns.model,
                        [first.image.len(), text_dim],
                    )?;
                    *spaces = Some(s);
                    s
                }
            };
            let rows = with_dims(rows, (image_dim, text_dim), &columns.model, failures);
            let vectors = rows.iter().filter_map(|(r, _)| r.vectors.as_ref());
            let images = vectors
                .clone()
                .flat_map(|v| v.image.iter().copied())
                .collect();
            let texts = vectors
                .flat_map(|v| v.texts.iter().flatten().copied())
                .collect();
            Ok((rows, vec![(image, images), (text, texts)]))
        }
    }
}

/// The captions' embeddings, in row order.
fn caption_vectors(
    model: &LoadedModel,
    rows: &[ReadRow],
    pipeline: &PipelineOptions,
) -> Result<Vec<f32>> {
    let texts: Vec<&str> = rows
        .iter()
        .flat_map(|(r, _)| r.texts.iter().map(String::as_str))
        .collect();
    Ok(embed_texts(&model.encoder, &texts, pipeline)?
        .into_iter()
        .flatten()
        .collect())
}

/// Image embeddings of the rows that decode; the others become failures.
fn embed_images_of(
    model: &LoadedModel,
    rows: Vec<ReadRow>,
    failures: &mut Vec<RowFailure>,
    pipeline: &PipelineOptions,
) -> Result<(Vec<ReadRow>, Vec<f32>)> {
    // The bytes move into the sources and back out, so each image is held once.
    let (records, sources): (Vec<_>, Vec<ImageSource>) = rows
        .into_iter()
        .map(|(r, bytes)| {
            // `read` lets rows without an image through only for precomputed vectors.
            let source = r.image.as_ref().map(ImageRef::name).unwrap_or_default();
            let bytes = bytes.unwrap_or_default();
            (r, ImageSource::Bytes { source, bytes })
        })
        .unzip();
    let embedded = embed_images(&model.encoder, &sources, pipeline)?;
    let mut kept = Vec::with_capacity(records.len());
    let mut vectors = Vec::new();
    for ((r, src), e) in records.into_iter().zip(sources).zip(embedded.embeddings) {
        if let (Some(v), ImageSource::Bytes { bytes, .. }) = (e, src) {
            vectors.extend(v);
            kept.push((r, Some(bytes)));
        }
    }
    for f in embedded.failures {
        failures.push(RowFailure {
            location: format!("image {}", f.source),
            image: Some(f.source),
            reason: f.reason,
        });
    }
    Ok((kept, vectors))
}

/// Without a model, still refuse what no model could read later.
fn decodable(
    rows: Vec<ReadRow>,
    failures: &mut Vec<RowFailure>,
    limits: ImageLimits,
) -> Vec<ReadRow> {
    let mut kept = Vec::with_capacity(rows.len());
    for (r, bytes) in rows {
        let Some(image) = &bytes else {
            kept.push((r, bytes));
            continue;
        };
        match imageio::check(image, "", limits.max_pixels) {
            Ok(_) => kept.push((r, bytes)),
            Err(mirante_training::Error::Image { detail, .. }) => {
                failures.push(failure(&r, format!("cannot decode image: {detail}")))
            }
            Err(other) => failures.push(failure(&r, other.to_string())),
        }
    }
    kept
}

/// The rows whose precomputed vectors have their spaces' dimensions.
fn with_dims(
    rows: Vec<ReadRow>,
    (image_dim, text_dim): (usize, usize),
    model: &str,
    failures: &mut Vec<RowFailure>,
) -> Vec<ReadRow> {
    rows.into_iter()
        .filter(|(r, _)| {
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
                failures.push(failure(
                    r,
                    format!(
                        "{kind} embedding has {got} values; the {kind} vectors of model {model} \
                         have {want}"
                    ),
                ));
            }
            bad.is_none()
        })
        .collect()
}

/// Stages a chunk as a new segment of `tx`; the rows' ids.
fn stage(
    tx: &mut dyn storage::Stage,
    collection: &str,
    rows: Vec<ReadRow>,
    embeddings: &[(SpaceId, Vec<f32>)],
) -> Result<Vec<u64>> {
    let new_rows: Vec<NewRow> = rows
        .into_iter()
        .map(|(r, bytes)| NewRow {
            image: r.image.zip(bytes).map(|(image, bytes)| ImageData {
                bytes,
                source: image.name(),
            }),
            texts: r.texts,
            split: r.split,
            metadata: r.metadata,
        })
        .collect();
    let embeddings: Vec<(SpaceId, &[f32])> =
        embeddings.iter().map(|(s, v)| (*s, v.as_slice())).collect();
    Ok(tx.append(collection, new_rows, &embeddings)?)
}
