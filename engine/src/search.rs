//! `SEARCH`: picks the embedding space (cross-modal by default), embeds the query with the same
//! model (or reads a stored row's vector), searches the snapshot with the filter applied before
//! ranking, re-ranks with ELIP on request, and materialises the hits as rows ready for display
//! or as context for an LLM.

use std::sync::Arc;
use std::time::Instant;

use mirante_query::{Predicate, RerankPlan, SearchPlan, SearchQuery, Target};
use mirante_storage::{self as storage, Modality, RowRef, Snapshot, SpaceId};

use crate::catalog::RowValues;
use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result};
use crate::models::LoadedModel;
use crate::output::{Column, SearchHit, SearchResults, SearchTimings};
use crate::spaces::Spaces;

/// A search plan resolved against a snapshot: which space, which model, what to exclude.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub target: Target,
    pub space: SpaceId,
    /// The model that embeds text and image queries (`None` for `BY ROW`).
    pub model: Option<Arc<LoadedModel>>,
    pub model_id: String,
    /// `BY ROW`: the row itself is left out of its neighbours.
    pub exclude: Option<u64>,
    query: SearchQuery,
}

impl Resolved {
    pub fn describe_query(&self) -> String {
        match &self.query {
            SearchQuery::Text(t) => {
                format!("text '{t}' embedded by the text tower of {}", self.model_id)
            }
            SearchQuery::Image(p) => {
                format!("image {p} embedded by the image tower of {}", self.model_id)
            }
            SearchQuery::Row(id) => format!("the stored image vector of row {id}"),
            SearchQuery::ImageBytes(b) => format!(
                "an image of {} bytes embedded by the image tower of {}",
                b.len(),
                self.model_id
            ),
            SearchQuery::Vector(v) => format!("a given vector of {} values", v.len()),
        }
    }

    /// The storage filter: the plan's predicate and, for `BY ROW`, the row's exclusion.
    pub fn filter<'p>(
        &self,
        plan: &'p SearchPlan,
    ) -> Option<impl Fn(&RowRef<'_>) -> bool + Sync + 'p> {
        let exclude = self.exclude;
        let predicate: Option<&'p Predicate> = plan.filter.as_ref();
        (predicate.is_some() || exclude.is_some()).then_some(move |row: &RowRef<'_>| {
            exclude != Some(row.id()) && predicate.is_none_or(|p| p.matches(&RowValues(*row)))
        })
    }
}

fn modality(target: Target) -> Modality {
    match target {
        Target::Images => Modality::Image,
        Target::Texts => Modality::Text,
    }
}

pub(crate) fn resolve(db: &Database, snap: &Snapshot, plan: &SearchPlan) -> Result<Resolved> {
    let c = snap.collection(&plan.collection)?;
    let spaces = Spaces::new(db, c);
    let mut target = plan.target;
    let mut exclude = None;
    if let SearchQuery::Row(id) = plan.query {
        if snap.get(&c.name, id)?.is_none() {
            return Err(Error::Invalid(format!(
                "row {id} does not exist in collection {}",
                c.name
            )));
        }
        // Every row has an image; "more like this row" ranks images unless MATCH says otherwise.
        target = target.or(Some(Target::Images));
        exclude = Some(id);
    }
    let target = target.unwrap_or(Target::Images);
    let space = spaces.active_or_of(plan.model.as_deref(), modality(target))?;
    let model = match &plan.query {
        SearchQuery::Row(_) | SearchQuery::Vector(_) => None,
        _ => Some(spaces.model_of(space)?),
    };
    Ok(Resolved {
        target,
        space,
        model,
        model_id: spaces.spec(space)?.model_id.clone(),
        exclude,
        query: plan.query.clone(),
    })
}

/// The query vector.
fn query_vector(
    db: &Database,
    snap: &Snapshot,
    plan: &SearchPlan,
    r: &Resolved,
) -> Result<Vec<f32>> {
    let c = snap.collection(&plan.collection)?;
    match (&plan.query, &r.model) {
        (SearchQuery::Text(t), Some(m)) => Ok(m
            .encoder
            .embed_texts(&[t.as_str()])?
            .into_iter()
            .flatten()
            .collect()),
        (SearchQuery::Image(path), Some(m)) => {
            let path = std::path::Path::new(path);
            let limit = db.options.image_limits.max_file_bytes;
            db.options.access.check_read(path)?;
            let bytes = mirante_training::imageio::read_file(path, limit)?;
            embed_image(m, &bytes, &path.display().to_string())
        }
        (SearchQuery::ImageBytes(bytes), Some(m)) => embed_image(m, bytes, "the query image"),
        (SearchQuery::Vector(v), _) => {
            let dim = Spaces::new(db, c).spec(r.space)?.dim;
            if v.len() != dim || v.iter().any(|x| !x.is_finite()) {
                return Err(Error::Invalid(format!(
                    "the query vector has {} values{}; space {} of {} holds {dim}-d vectors",
                    v.len(),
                    if v.iter().any(|x| !x.is_finite()) {
                        ", not all finite"
                    } else {
                        ""
                    },
                    r.space,
                    c.name
                )));
            }
            Ok(v.clone())
        }
        (SearchQuery::Row(id), _) => {
            let image_space = Spaces::new(db, c).sibling(r.space, Modality::Image)?;
            snap.vector_of(&c.name, image_space, *id, 0)?
                .ok_or_else(|| Error::MissingEmbeddings {
                    collection: c.name.clone(),
                    detail: format!(
                        "has no stored embedding of row {id} in space {image_space}; run EMBED {}",
                        c.name
                    ),
                })
        }
        (_, None) => Err(Error::Internal("no model to embed the query".into())),
    }
}

/// An encoded image's embedding under `model`'s image tower.
fn embed_image(model: &LoadedModel, bytes: &[u8], source: &str) -> Result<Vec<f32>> {
    let pixels = model.encoder.pixels(bytes, source)?;
    Ok(model
        .encoder
        .embed_pixels(&[pixels])?
        .into_iter()
        .flatten()
        .collect())
}

/// Runs a search; the hits carry their image bytes when `exec` asks for them or a report is
/// written.
pub(crate) fn run(db: &Database, plan: &SearchPlan, exec: &ExecOptions) -> Result<SearchResults> {
    let with_bytes = exec.image_bytes || plan.into.is_some();
    let snap = db.snapshot()?;
    let start = Instant::now();
    let resolved = resolve(db, &snap, plan)?;
    let query = query_vector(db, &snap, plan, &resolved)?;
    let embedded = Instant::now();
    let filter = resolved.filter(plan);
    let depth = plan
        .rerank
        .as_ref()
        .map_or(plan.limit, |r| r.top.max(plan.limit));
    let hits = snap
        .search(
            &plan.collection,
            resolved.space,
            &query,
            depth as usize,
            filter.as_ref().map(|f| f as &storage::RowFilter<'_>),
        )?
        .into_iter()
        .next()
        .unwrap_or_default();
    let searched = Instant::now();
    // (hit, first-stage rank when re-ranked), in result order.
    let (hits, rerank_decoded): (Vec<RankedHit>, usize) = match &plan.rerank {
        Some(r) => rerank(db, &snap, plan, &resolved, &query, r, hits, exec)?,
        None => (hits.into_iter().map(|h| (h, None)).collect(), 0),
    };
    let reranked = Instant::now();
    let c = snap.collection(&plan.collection)?;
    let metadata_columns: Vec<Column> = c.schema.metadata.iter().map(Column::of_metadata).collect();
    let mut out = Vec::with_capacity(hits.len());
    for (i, (hit, first_rank)) in hits.iter().enumerate() {
        let handle = snap.get(&plan.collection, hit.row_id)?.ok_or_else(|| {
            Error::Internal(format!("row {} vanished from the snapshot", hit.row_id))
        })?;
        let row = handle.row();
        out.push(SearchHit {
            rank: i + 1,
            id: hit.row_id,
            score: hit.score,
            texts: row.texts().map(str::to_string).collect(),
            matched_text: (resolved.target == Target::Texts)
                .then(|| row.text(hit.text_index as usize).map(str::to_string))
                .flatten(),
            image: row.image_source().map(str::to_string),
            split: row.split().map(str::to_string),
            metadata: metadata_columns
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), row.value_at(i).to_value()))
                .collect(),
            image_bytes: with_bytes
                .then(|| row.image_bytes().map(<[u8]>::to_vec))
                .flatten(),
            first_rank: *first_rank,
        });
    }
    let fetched = Instant::now();
    let mut results = SearchResults {
        collection: plan.collection.clone(),
        query: match &plan.query {
            SearchQuery::Text(t) => format!("text '{t}'"),
            SearchQuery::Image(p) => format!("image {p}"),
            SearchQuery::Row(id) => format!("row {id}"),
            SearchQuery::ImageBytes(b) => format!("image of {} bytes", b.len()),
            SearchQuery::Vector(v) => format!("vector of {} values", v.len()),
        },
        target: resolved.target,
        model: resolved.model_id.clone(),
        hits: out,
        metadata_columns,
        timings: SearchTimings {
            embed: embedded - start,
            search: searched - embedded,
            rerank: reranked - searched,
            fetch: fetched - reranked,
            rerank_decoded,
        },
        report: None,
    };
    if let Some(into) = &plan.into {
        let file = crate::access::create_checked(&db.options.access, into)?;
        crate::report::write_search_report(file, &results)?;
        results.report = Some(into.path.clone());
    }
    Ok(results)
}

/// A hit in result order, with its first-stage rank when re-ranked.
type RankedHit = (storage::Hit, Option<usize>);

/// `RERANK WITH ELIP`: re-scores the first stage's hits (images of a text query) with ELIP
/// model `r.elip` and keeps the best `plan.limit`, each with its first-stage rank; also how many
/// candidates were decoded.
#[allow(clippy::too_many_arguments)]
fn rerank(
    db: &Database,
    snap: &Snapshot,
    plan: &SearchPlan,
    resolved: &Resolved,
    query: &[f32],
    r: &RerankPlan,
    hits: Vec<storage::Hit>,
    exec: &ExecOptions,
) -> Result<(Vec<RankedHit>, usize)> {
    use rayon::prelude::*;
    let (SearchQuery::Text(_), Target::Images, Some(model)) =
        (&plan.query, resolved.target, &resolved.model)
    else {
        return Err(Error::Invalid(
            "RERANK WITH ELIP re-ranks images for a text query".into(),
        ));
    };
    let loaded = db.models.elip(&r.elip)?;
    loaded.check_backbone(&r.elip, &model.fingerprint, &model.key)?;
    let pixels: Vec<(Arc<Vec<f32>>, bool)> = hits
        .par_iter()
        .map(|h| {
            exec.cancel.check()?;
            let handle = snap.get(&plan.collection, h.row_id)?.ok_or_else(|| {
                Error::Internal(format!("row {} vanished from the snapshot", h.row_id))
            })?;
            crate::rerank::candidate_pixels(db, model, &handle.row())
        })
        .collect::<Result<_>>()?;
    let decoded = pixels.iter().filter(|(_, made)| *made).count();
    let candidates: Vec<&[f32]> = pixels.iter().map(|(p, _)| p.as_slice()).collect();
    let elip_scores = crate::rerank::scores(&model.encoder, &loaded.mapper, query, &candidates)?;
    let scores: Vec<f32> = hits
        .iter()
        .zip(elip_scores)
        .map(|(h, e)| crate::rerank::fused(h.score, e, loaded.fusion_for(r)))
        .collect();
    let mut order: Vec<usize> = (0..hits.len()).collect();
    // Stable: equal ELIP scores keep the first stage's order.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(plan.limit as usize);
    let reranked = order
        .into_iter()
        .map(|i| {
            let mut hit = hits[i];
            hit.score = scores[i];
            (hit, Some(i + 1))
        })
        .collect();
    Ok((reranked, decoded))
}
