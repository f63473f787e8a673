//! The data of training jobs: a collection's image-caption pairs (decoded once up front),
//! their embeddings under the weights being trained, hard-negative mining (mutual nearest
//! neighbours, through the collection's index when it holds the base model's vectors), and the
//! exact validation metric.

use mirante_query::{EvalMetric, Predicate};
use mirante_storage::{RowRef, Snapshot};
use mirante_training::DualEncoder;
use mirante_training::finetune::{PairData, TrainImage};
use mirante_training::negatives::word_swaps;
use mirante_training::train::Trainable;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::catalog::row_filter;
use crate::error::Result;
use crate::metrics::rank_metric;
use crate::ranking::{Problem, exact_ranks, exact_top_k};

/// Images and captions embedded per batch during validation.
const VALIDATION_BATCH: usize = 32;

/// How many word-swapped copies of each caption [`pairs`] prepares as negative texts when
/// asked to: each step draws one of them per pair.
const SWAPS_PER_CAPTION: usize = 8;

/// The pairs of the rows that pass `filter` and have an image and captions, preprocessed for
/// `model` (images decoded in parallel), with the ids of those rows in the same order. With
/// `swap_seed`, each caption also gets word-swapped copies of itself as negative texts
/// (NegCLIP), drawn with that seed.
pub(crate) fn pairs(
    snap: &Snapshot,
    (collection, filter): (&str, Option<&Predicate>),
    encoder: &DualEncoder,
    swap_seed: Option<u64>,
) -> Result<(PairData, Vec<u64>)> {
    let mut ids = Vec::new();
    let mut rows: Vec<(String, Vec<u8>, Vec<String>)> = Vec::new();
    let keep = filter.map(row_filter);
    snap.scan(collection, None, |row: RowRef<'_>| {
        if keep.as_ref().is_none_or(|f| f(&row))
            && let Some(bytes) = row.image_bytes()
            && row.text_count() > 0
        {
            ids.push(row.id());
            rows.push((
                row.image_source().unwrap_or("").to_string(),
                bytes.to_vec(),
                row.texts().map(str::to_string).collect(),
            ));
        }
        Ok(())
    })?;
    // Every image is decoded once now, so a broken one fails the statement before training;
    // the data keeps the encoded bytes and batches decode them again (memory for compressed
    // images only).
    rows.par_iter()
        .try_for_each(|(source, bytes, _)| encoder.pixels(bytes, source).map(drop))?;
    let mut data = PairData::default();
    let mut swap_rng = swap_seed.map(rand::rngs::StdRng::seed_from_u64);
    for (source, bytes, texts) in rows {
        data.images.push(TrainImage::Encoded { bytes, source });
        let mut mine = Vec::with_capacity(texts.len());
        for t in &texts {
            mine.push(data.captions.len());
            data.captions.push(encoder.tokenizer.encode(t)?.ids);
            if let Some(rng) = swap_rng.as_mut() {
                let swaps = word_swaps(t, SWAPS_PER_CAPTION, rng)
                    .iter()
                    .map(|s| Ok(encoder.tokenizer.encode(s)?.ids))
                    .collect::<Result<Vec<_>>>()?;
                data.text_negatives.push(swaps);
            }
        }
        data.pairs.push(mine);
    }
    Ok((data, ids))
}

/// Embeddings of the data's images with the encoder's current weights, in batches.
pub(crate) fn embed_images(encoder: &DualEncoder, data: &PairData) -> Result<Vec<Vec<f32>>> {
    let mut images = Vec::with_capacity(data.images.len());
    let indices: Vec<usize> = (0..data.images.len()).collect();
    let per = 3 * encoder.model.image_size().pow(2);
    for chunk in indices.chunks(VALIDATION_BATCH) {
        let flat = data.batch_pixels(chunk, encoder)?;
        let pixels: Vec<&[f32]> = flat.chunks(per).collect();
        images.extend(encoder.embed_pixels(&pixels)?);
    }
    Ok(images)
}

/// Embeddings of the data's captions with the encoder's current weights, in batches.
pub(crate) fn embed_captions(encoder: &DualEncoder, data: &PairData) -> Result<Vec<Vec<f32>>> {
    let mut texts = Vec::with_capacity(data.captions.len());
    for chunk in data.captions.chunks(VALIDATION_BATCH) {
        texts.extend(encoder.embed_token_ids(chunk)?);
    }
    Ok(texts)
}

/// Pairs of training images that are each other's nearest neighbour under the base model: the
/// confusable pairs hard-negative batches put together. Found with the collection's own index
/// when its active image space holds the base model's vectors (`"index"`), else by embedding the
/// images with the base model and exact scores (`"exact"`).
pub(crate) fn mutual_neighbours(
    snap: &Snapshot,
    (collection, filter): (&str, Option<&Predicate>),
    encoder: &DualEncoder,
    base_fingerprint: &str,
    data: &PairData,
    ids: &[u64],
) -> Result<(Vec<(usize, usize)>, &'static str)> {
    Ok(
        match index_neighbours(snap, (collection, filter), base_fingerprint, ids)? {
            Some(nearest) => (mutual_pairs(&nearest), "index"),
            None => (exact_mutual_neighbours(encoder, data)?, "exact"),
        },
    )
}

/// Pairs of the data's images that are each other's nearest neighbour under the encoder's
/// current weights, by exact scores.
pub(crate) fn exact_mutual_neighbours(
    encoder: &DualEncoder,
    data: &PairData,
) -> Result<Vec<(usize, usize)>> {
    let images = embed_images(encoder, data)?;
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    let nearest: Vec<Option<usize>> = exact_top_k(&refs, &refs, 2)
        .into_iter()
        .enumerate()
        .map(|(i, top)| top.into_iter().map(|j| j as usize).find(|&j| j != i))
        .collect();
    Ok(mutual_pairs(&nearest))
}

/// `(i, j)`, `i < j`, for each i and j that are each other's `nearest`.
fn mutual_pairs(nearest: &[Option<usize>]) -> Vec<(usize, usize)> {
    (0..nearest.len())
        .filter_map(|i| {
            let j = nearest[i]?;
            (i < j && nearest[j] == Some(i)).then_some((i, j))
        })
        .collect()
}

/// Each training row's nearest other training row by the collection's index over the base
/// model's stored image vectors; `None` when the collection does not hold them for every row.
fn index_neighbours(
    snap: &Snapshot,
    (collection, filter): (&str, Option<&Predicate>),
    base_fingerprint: &str,
    ids: &[u64],
) -> Result<Option<Vec<Option<usize>>>> {
    let c = snap.collection(collection)?;
    let Some(space) = c.active_image else {
        return Ok(None);
    };
    if c.space(space)?.spec.fingerprint != base_fingerprint {
        return Ok(None);
    }
    let mut queries = Vec::new();
    for &id in ids {
        match snap.vector_of(collection, space, id, 0)? {
            Some(v) => queries.extend(v),
            None => return Ok(None),
        }
    }
    let position: std::collections::HashMap<u64, usize> =
        ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let keep = filter.map(row_filter);
    let filter = keep.as_ref().map(|f| f as &mirante_storage::RowFilter<'_>);
    // Three results: the row itself, and a spare in case a neighbour has no captions.
    let hits = snap.search(collection, space, &queries, 3, filter)?;
    Ok(Some(
        hits.iter()
            .enumerate()
            .map(|(i, top)| {
                top.iter()
                    .filter_map(|h| position.get(&h.row_id).copied())
                    .find(|&j| j != i)
            })
            .collect(),
    ))
}

/// `metric` of text-to-image retrieval over `data` with the model's current weights, exact.
pub(crate) fn score(model: &Trainable, data: &PairData, metric: EvalMetric) -> Result<Option<f64>> {
    let images = embed_images(&model.encoder, data)?;
    let texts = embed_captions(&model.encoder, data)?;
    let ranks = exact_ranks(&Problem {
        texts: texts.iter().map(Vec::as_slice).collect(),
        images: images.iter().map(Vec::as_slice).collect(),
        gold: data.gold(),
    });
    Ok(match metric {
        EvalMetric::MeanSimilarity => ranks.matching.value(),
        m => rank_metric(m, ranks.text_queries().into_iter()),
    })
}
