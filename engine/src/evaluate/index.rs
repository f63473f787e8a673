//! `EVALUATE ... USING INDEX`: ranks through the collection's own search path (ANN indexes
//! where segments have them, exact re-scoring), with misses below the search depth, and how much
//! of the exact top-k the searches return.

use std::collections::HashMap;

use mirante_query::{EvalMetric, EvaluatePlan};
use mirante_storage::{self as storage, Snapshot, SpaceId};

use super::gallery::Gallery;
use crate::cancel::CancelToken;
use crate::catalog::row_filter;
use crate::error::Result;
use crate::metrics::NOT_RETRIEVED;
use crate::ranking::{Problem, Ranks, exact_top_k};
use crate::spaces::ModelSpaces;

/// `USING INDEX` asks each search for this many results at least (more when a metric's K is
/// larger); relevant items below are misses.
const INDEX_DEPTH: usize = 100;
/// `USING INDEX` reports how much of the exact top-k its searches return, at this k.
pub(super) const INDEX_RECALL_AT: usize = 10;
/// Queries per batched search of `USING INDEX`.
const INDEX_BATCH: usize = 1024;

/// `USING INDEX`: the ranks the collection's search (ANN index where segments have one, exact
/// re-scoring) gives each query within its depth, as [`Ranks`] with misses as
/// [`NOT_RETRIEVED`], and per direction the mean share of the exact top-k it returned.
pub(super) fn index_ranks(
    snap: &Snapshot,
    plan: &EvaluatePlan,
    m: &ModelSpaces,
    g: &Gallery<'_>,
    p: &Problem<'_>,
    exact: &Ranks,
    cancel: &CancelToken,
) -> Result<(Ranks, [Option<f64>; 2])> {
    let depth = index_depth(plan);
    let kept: HashMap<u64, usize> = g
        .row_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let filter = plan.filter.as_ref().map(row_filter);
    let search = |space: SpaceId, queries: &[&[f32]]| -> Result<Vec<Vec<storage::Hit>>> {
        let mut out = Vec::with_capacity(queries.len());
        for batch in queries.chunks(INDEX_BATCH) {
            cancel.check()?;
            let flat: Vec<f32> = batch.iter().flat_map(|q| q.iter().copied()).collect();
            out.extend(snap.search(
                &plan.collection,
                space,
                &flat,
                depth,
                filter.as_ref().map(|f| f as &storage::RowFilter<'_>),
            )?);
        }
        Ok(out)
    };
    let overlap = |found: &[u32], truth: &[u32]| {
        let hits = found.iter().filter(|x| truth.contains(x)).count();
        hits as f64 / truth.len().max(1) as f64
    };
    let mut ranks = exact.clone();

    // Captions over images: hits are rows; byte-identical rows count as one image.
    let with_gold: Vec<usize> = (0..p.texts.len())
        .filter(|&t| p.gold[t].is_some())
        .collect();
    let queries: Vec<&[f32]> = with_gold.iter().map(|&t| p.texts[t]).collect();
    let truth = exact_top_k(&queries, &p.images, INDEX_RECALL_AT);
    let mut shares = Vec::with_capacity(with_gold.len());
    for ((&t, hits), truth) in with_gold.iter().zip(search(m.image, &queries)?).zip(&truth) {
        let mut images: Vec<u32> = Vec::new();
        for h in &hits {
            if let Some(image) = kept.get(&h.row_id).and_then(|&k| g.image_of[k])
                && !images.contains(&image)
            {
                images.push(image);
            }
        }
        ranks.text_to_image[t] = Some(
            images
                .iter()
                .position(|&i| Some(i) == p.gold[t])
                .map_or(NOT_RETRIEVED, |r| r as u32 + 1),
        );
        images.truncate(INDEX_RECALL_AT);
        shares.push(overlap(&images, truth));
    }
    let text_share = mean_of(&shares);

    // Images over captions: hits are (row, caption) pairs.
    let truth = exact_top_k(&p.images, &p.texts, INDEX_RECALL_AT);
    let mut shares = Vec::with_capacity(p.images.len());
    for (i, (hits, truth)) in search(m.text, &p.images)?
        .into_iter()
        .zip(&truth)
        .enumerate()
    {
        let captions: Vec<u32> = hits
            .iter()
            .filter_map(|h| {
                kept.get(&h.row_id)
                    .map(|&k| (g.first_caption[k] + h.text_index as usize) as u32)
            })
            .collect();
        let range = exact.image_offsets[i]..exact.image_offsets[i + 1];
        let mut found: Vec<u32> = captions
            .iter()
            .enumerate()
            .filter(|&(_, &c)| p.gold[c as usize] == Some(i as u32))
            .map(|(r, _)| r as u32 + 1)
            .collect();
        found.resize(range.len(), NOT_RETRIEVED);
        ranks.image_ranks[range].copy_from_slice(&found);
        if !truth.is_empty() {
            shares.push(overlap(
                &captions[..captions.len().min(INDEX_RECALL_AT)],
                truth,
            ));
        }
    }
    Ok((ranks, [text_share, mean_of(&shares)]))
}

/// How many results each `USING INDEX` search asks for.
pub(super) fn index_depth(plan: &EvaluatePlan) -> usize {
    plan.metrics
        .iter()
        .filter_map(|m| match m {
            EvalMetric::Recall(k) | EvalMetric::Ndcg(k) => Some(*k as usize),
            _ => None,
        })
        .fold(INDEX_DEPTH, usize::max)
}

fn mean_of(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}
