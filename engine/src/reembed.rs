//! Changing a collection's model: `EMBED` (a model's vectors for the segments that lack them),
//! `REEMBED` (the same, then both spaces switched to the new model in one commit) and
//! `ALTER COLLECTION ... SET MODEL` (switch to a model whose vectors every segment holds).
//! Segments are committed one by one, so a killed or cancelled job resumes where it stopped;
//! until the switch, searches use the old model.

use mirante_storage::{Modality, SegmentView};
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
    let model = match model {
        Some(m) => db.models.load(m)?,
        None => Spaces::new(db, c).active_model()?.ok_or_else(|| {
            Error::Invalid(format!(
                "collection {collection} has no model; name one: EMBED {collection} USING MODEL \
                 '<folder or hub id>'"
            ))
        })?,
    };
    // Refused before anything is committed (a new space would be left behind).
    for meta in &c.segments {
        let seg = snap.segment(c, meta)?;
        if let Some(row) = (0..seg.len())
            .map(|i| seg.row(i))
            .find(|r| r.image_bytes().is_none())
        {
            return Err(no_image(row.id(), &model));
        }
    }
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
