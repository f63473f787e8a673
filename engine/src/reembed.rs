//! Changing a collection's model: `EMBED` (a model's vectors for the segments that lack them),
//! `REEMBED` (the same, then both spaces switched to the new model in one commit) and
//! `ALTER COLLECTION ... SET MODEL` (switch to a model whose vectors every segment holds).
//! Segments are committed one by one, so a killed or cancelled job resumes where it stopped;
//! until the switch, searches use the old model.
//!
//! Distributed, the same job has three phases: `prepare` (the driver registers the model's
//! spaces and lists the segments to embed), `build` (workers embed the segments they are given
//! without the writer lock) and `publish` (one commit attaches every worker's columns, then
//! `embed` finishes: segments merged meanwhile, and the switch).

use mirante_storage::{self as storage, Modality, SegmentView};
use mirante_training::{ImageSource, embed_images, embed_texts};

use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result};

use crate::models::LoadedModel;
use crate::output::{Output, plural};
use crate::spaces::Spaces;

/// `EMBED` (`switch` false): registers the model's spaces, embeds every segment that lacks
/// them, and makes them active only where the collection had no model. `REEMBED` (`switch`
/// true): the same, then switches both spaces to the new model in one commit.
pub(crate) fn embed(
    db: &Database,
    collection: &str,
    model: Option<&str>,
    switch: bool,
    exec: &ExecOptions,
) -> Result<Output> {
    let snap = db.snapshot()?;
    let c = snap.collection(collection)?;
    let model = model_of(db, c, model)?;
    // Refused before anything is committed (a new space would be left behind).
    check_images(&snap, c, &model, None)?;
    let mut w = db.writer()?;
    let mut segments = 0;
    let mut activate = Vec::new();
    for modality in [Modality::Image, Modality::Text] {
        let had_none = c.active(modality).is_none();
        let space = w.add_space(collection, model.space(modality), false)?;
        segments += w.embed(collection, space, false, |seg| {
            embed_segment(db, &model, seg, modality, exec)
        })?;
        if switch || had_none {
            activate.push(space);
        }
    }
    if !activate.is_empty() {
        w.activate_spaces(collection, &activate)?;
    }
    Ok(Output::Status(format!(
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
pub(crate) fn set_model(db: &Database, collection: &str, model: &str) -> Result<Output> {
    let snap = db.snapshot()?;
    let c = snap.collection(collection)?;
    let pair = Spaces::new(db, c).pair(Some(model))?;
    let missing = c
        .segments
        .iter()
        .filter(|s| s.column(pair.image).is_none() || s.column(pair.text).is_none())
        .count();
    if missing > 0 {
        return Err(Error::MissingEmbeddings {
            collection: collection.to_string(),
            detail: format!(
                "has {missing} segment{} without vectors from {model}; compute them with REEMBED \
                 {collection} USING MODEL '{model}'",
                plural(missing)
            ),
        });
    }
    db.writer()?
        .activate_spaces(collection, &[pair.image, pair.text])?;
    Ok(Output::Status(format!(
        "{collection} now searches with {model}"
    )))
}

/// The model a statement names, or the collection's.
fn model_of(
    db: &Database,
    c: &storage::CollectionMeta,
    model: Option<&str>,
) -> Result<std::sync::Arc<LoadedModel>> {
    match model {
        Some(m) => db.models.load(m),
        None => Spaces::new(db, c).active_model()?.ok_or_else(|| {
            Error::Invalid(format!(
                "collection {} has no model; name one: EMBED {} USING MODEL '<folder or hub id>'",
                c.name, c.name
            ))
        }),
    }
}

/// Refuses segments (all, or `only` these) holding a row without an image: no model can
/// embed it.
fn check_images(
    snap: &storage::Snapshot,
    c: &storage::CollectionMeta,
    model: &LoadedModel,
    only: Option<&[u64]>,
) -> Result<()> {
    for meta in c
        .segments
        .iter()
        .filter(|s| only.is_none_or(|ids| ids.contains(&s.id)))
    {
        let seg = snap.segment(c, meta)?;
        if let Some(row) = (0..seg.len())
            .map(|i| seg.row(i))
            .find(|r| r.image_bytes().is_none())
        {
            return Err(no_image(row.id(), model));
        }
    }
    Ok(())
}

/// The first phase of a distributed `EMBED`/`REEMBED`: registers the model's spaces (inactive)
/// and returns the segments lacking their vectors, for workers to `build`.
pub(crate) fn prepare(db: &Database, collection: &str, model: &str) -> Result<Vec<u64>> {
    let snap = db.snapshot()?;
    let c = snap.collection(collection)?;
    let model = model_of(db, c, Some(model))?;
    check_images(&snap, c, &model, None)?;
    let mut w = db.writer()?;
    let known = c.spaces.len();
    let mut tx = w.transaction();
    let spaces = [
        tx.add_space(collection, model.space(Modality::Image), false)?,
        tx.add_space(collection, model.space(Modality::Text), false)?,
    ];
    if tx.collection(collection)?.spaces.len() > known {
        tx.commit(format!("add the spaces of {} to {collection}", model.key))?;
    }
    let c = w.manifest().collection(collection)?;
    Ok(c.segments
        .iter()
        .filter(|s| spaces.iter().any(|&space| s.column(space).is_none()))
        .map(|s| s.id)
        .collect())
}

/// The second phase: a worker embeds `segments` with the model (both towers) and writes the
/// columns without the writer lock.
pub(crate) fn build(
    db: &Database,
    collection: &str,
    model: &str,
    segments: &[u64],
    exec: &ExecOptions,
) -> Result<Vec<storage::BuiltColumns>> {
    let snap = db.snapshot()?;
    let c = snap.collection(collection)?;
    let model = model_of(db, c, Some(model))?;
    check_images(&snap, c, &model, Some(segments))?;
    [Modality::Image, Modality::Text]
        .into_iter()
        .map(|modality| {
            let spec = model.space(modality);
            let space = c.spaces.iter().find(|s| s.spec == spec).ok_or_else(|| {
                Error::Invalid(format!(
                    "collection {collection} has no {modality} space of {}; prepare the \
                     embedding job first",
                    model.key
                ))
            })?;
            storage::build_columns(&db.store, collection, space.id, segments, |seg| {
                embed_segment(db, &model, seg, modality, exec)
            })
        })
        .collect()
}

/// The last phase: attaches every worker's columns in one commit, then finishes as `EMBED`
/// (`switch` false) or `REEMBED` (`switch` true) do, embedding here whatever the workers did
/// not cover (segments merged meanwhile).
pub(crate) fn publish(
    db: &Database,
    collection: &str,
    model: &str,
    built: &[storage::BuiltColumns],
    switch: bool,
    exec: &ExecOptions,
) -> Result<String> {
    let (_, attached) = db.writer()?.publish_columns(built)?;
    let Output::Status(finish) = embed(db, collection, Some(model), switch, exec)? else {
        return Err(Error::Internal("EMBED returns a status".into()));
    };
    Ok(format!(
        "published {attached} segment column{} built in parallel; {finish}",
        plural(attached)
    ))
}

fn no_image(row: u64, model: &LoadedModel) -> Error {
    Error::Invalid(format!(
        "row {row} has no image, so {} cannot embed it: rows without images carry vectors made \
         elsewhere (IMPORT's embedding columns), and a model of the collection must embed every \
         row",
        model.key
    ))
}

/// All vectors of a segment (deleted rows included, as storage expects) for one tower.
fn embed_segment(
    db: &Database,
    model: &LoadedModel,
    seg: &SegmentView<'_>,
    modality: Modality,
    exec: &ExecOptions,
) -> Result<Vec<f32>> {
    exec.cancel.check()?;
    let pipeline = db.pipeline(exec);
    let rows = (0..seg.len()).map(|i| seg.row(i));
    match modality {
        Modality::Image => {
            let sources: Vec<ImageSource> = rows
                .map(|r| match (r.image_source(), r.image_bytes()) {
                    (Some(source), Some(bytes)) => Ok(ImageSource::Bytes {
                        source: source.to_string(),
                        bytes: bytes.to_vec(),
                    }),
                    _ => Err(no_image(r.id(), model)),
                })
                .collect::<Result<_>>()?;
            let out = embed_images(&model.encoder, &sources, &pipeline)?;
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
            Ok(embed_texts(&model.encoder, &texts, &pipeline)?
                .into_iter()
                .flatten()
                .collect())
        }
    }
}
