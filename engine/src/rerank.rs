//! ELIP at query time (`RERANK WITH ELIP` in `SEARCH` and `EVALUATE`): a registry mapper turns
//! the query's text embedding into visual prompts, and each of the first stage's top K images is
//! encoded again under them; the new scores (blended with the first stage's by the fusion
//! weight) reorder the candidates. Training the mapper is `train::elip`.

use std::collections::HashMap;
use std::sync::Arc;

use mirante_training::elip::{self as training_elip, ElipMapper};
use mirante_training::{DualEncoder, Progress};
use rayon::prelude::*;

use crate::cancel::CancelToken;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::models::LoadedModel;
use crate::ranking::{Problem, scored_top_k};

/// Candidates re-scored per image-encoder batch.
const RERANK_BATCH: usize = 64;

/// `EXPLAIN`'s lines for the second stage: what re-scores the first stage's top `top` and
/// what it costs, keeping the best `keep`.
pub(crate) fn explain(
    db: &Database,
    r: &mirante_query::RerankPlan,
    keep: u64,
) -> Result<Vec<String>> {
    let elip = db.models.elip(&r.elip)?;
    let c = &elip.mapper.config;
    Ok(vec![
        format!(
            "Re-rank the top {} with ELIP '{}' and keep the best {keep}",
            r.top, r.elip
        ),
        format!(
            "  mapper: query embedding -> {} visual prompts of width {} ({}), backbone {}",
            c.prompts,
            c.vision_width,
            if c.deep {
                "deep: new prompts before every layer"
            } else {
                "at the input"
            },
            elip.backbone
        ),
        format!(
            "  score: cosine of the query with each candidate encoded under its prompts: {} \
             image-encoder passes per query (batches of {RERANK_BATCH})",
            r.top
        ),
        if elip.fusion_for(r) < 1.0 {
            let w = elip.fusion_for(r);
            format!(
                "  blended: {w} x ELIP's score + {} x the first stage's ({})",
                round_weight(1.0 - w),
                if r.fusion.is_some() {
                    "FUSION"
                } else {
                    "the model's fusion weight"
                }
            )
        } else {
            "  ELIP's score alone orders the candidates".to_string()
        },
    ])
}

/// ELIP scores of `candidates` (preprocessed pixels) for one query's text embedding.
pub(crate) fn scores(
    encoder: &DualEncoder,
    mapper: &ElipMapper,
    text: &[f32],
    candidates: &[impl AsRef<[f32]>],
) -> Result<Vec<f32>> {
    Ok(training_elip::rerank_scores(
        encoder,
        mapper,
        text,
        candidates,
        RERANK_BATCH,
    )?)
}

/// A re-ranking candidate's preprocessed pixels under `backbone`'s preprocessing, from the
/// database's pixel cache or decoded (and kept); the flag says whether it was decoded.
pub(crate) fn candidate_pixels(
    db: &Database,
    backbone: &LoadedModel,
    row: &mirante_storage::RowRef<'_>,
) -> Result<(Arc<Vec<f32>>, bool)> {
    let bytes = row
        .image_bytes()
        .ok_or_else(|| Error::Invalid(format!("row {} has no image to re-rank", row.id())))?;
    db.pixels.get_or_make(&backbone.fingerprint, bytes, || {
        Ok(backbone
            .encoder
            .pixels(bytes, row.image_source().unwrap_or(""))?)
    })
}

/// A fusion weight's complement without float noise (0.7, not 0.30000000000000004).
fn round_weight(w: f64) -> f64 {
    (w * 1e6).round() / 1e6
}

/// The re-ranking score: ELIP's, blended with the first stage's by `fusion` (1: ELIP alone).
pub(crate) fn fused(first: f32, elip: f32, fusion: f64) -> f32 {
    ((1.0 - fusion) * f64::from(first) + fusion * f64::from(elip)) as f32
}

/// Text-to-image ranks after ELIP re-scores each caption's first-stage top `top` (exact
/// scores over `problem`), one rank list per fusion weight of `fusions`: a gold image within
/// the top `top` takes its new place there (ties ranked pessimistically); one below keeps its
/// first-stage rank. `pixels(image)` gives a gallery image's pixels; each is asked for once,
/// in parallel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reranked_text_ranks(
    encoder: &DualEncoder,
    mapper: &ElipMapper,
    problem: &Problem<'_>,
    first: &[Option<u32>],
    (top, fusions): (usize, &[f64]),
    pixels: impl Fn(u32) -> Result<Arc<Vec<f32>>> + Sync,
    (progress, cancel): (&Progress, &CancelToken),
) -> Result<Vec<Vec<Option<u32>>>> {
    let queries: Vec<usize> = (0..problem.texts.len())
        .filter(|&t| first[t].is_some_and(|r| (r as usize) <= top))
        .collect();
    let texts: Vec<&[f32]> = queries.iter().map(|&t| problem.texts[t]).collect();
    let candidates = scored_top_k(&texts, &problem.images, top);
    let mut needed: Vec<u32> = candidates.iter().flatten().map(|&(i, _)| i).collect();
    needed.sort_unstable();
    needed.dedup();
    let cache: HashMap<u32, Arc<Vec<f32>>> = needed
        .par_iter()
        .map(|&i| Ok((i, pixels(i)?)))
        .collect::<Result<_>>()?;
    let bar = progress.steps(queries.len(), "re-ranking");
    let mut ranks = vec![first.to_vec(); fusions.len()];
    for (&t, top_k) in queries.iter().zip(&candidates) {
        cancel.check()?;
        let Some(gold) = problem.gold[t] else {
            continue;
        };
        let Some(at) = top_k.iter().position(|&(i, _)| i == gold) else {
            continue;
        };
        // Borrowed from the cache: the candidates' pixels are not copied per query.
        let batch: Vec<&[f32]> = top_k.iter().map(|(i, _)| cache[i].as_slice()).collect();
        let elip = scores(encoder, mapper, problem.texts[t], &batch)?;
        for (ranks, &w) in ranks.iter_mut().zip(fusions) {
            let s: Vec<f32> = top_k
                .iter()
                .zip(&elip)
                .map(|(&(_, f), &e)| fused(f, e, w))
                .collect();
            let ahead = s
                .iter()
                .enumerate()
                .filter(|&(j, &x)| j != at && x >= s[at])
                .count();
            ranks[t] = Some(ahead as u32 + 1);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(ranks)
}
