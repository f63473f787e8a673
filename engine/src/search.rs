//! `SEARCH`: picks the embedding space (cross-modal by default), embeds the query with the same
//! model (or reads a stored row's vector), searches the snapshot with the filter applied before
//! ranking, and materialises the hits as rows ready for display or as context for an LLM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mirante_query::{Predicate, RerankPlan, SearchPlan, SearchQuery, Target};
use mirante_storage::{self as storage, Modality, RowRef, Snapshot, SpaceId, Value};

use crate::db::{Database, RowValues};
use crate::error::{Error, Result};
use crate::exec::check_fingerprint;
use crate::models::LoadedModel;
use crate::result::{Cell, ResultSet};

/// One result of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// 1-based.
    pub rank: usize,
    pub id: u64,
    /// Cosine similarity; non-increasing along the results.
    pub score: f32,
    /// All captions of the row.
    pub texts: Vec<String>,
    /// The caption that matched, when captions were ranked.
    pub matched_text: Option<String>,
    /// Where the image was imported from.
    pub image: Option<String>,
    pub split: Option<String>,
    pub metadata: Vec<(String, Value)>,
    /// The stored image bytes, when asked for (HTML reports, RAG callers).
    pub image_bytes: Option<Vec<u8>>,
    /// With `RERANK WITH ELIP`: the hit's 1-based rank in the first stage (`score` is then
    /// ELIP's).
    pub first_rank: Option<usize>,
}

/// Where the time of a search went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SearchTimings {
    /// Loading the model (first use only) and embedding the query.
    pub embed: Duration,
    /// The vector search (FAISS or exact scans, filters, merge).
    pub search: Duration,
    /// Reading the hit rows.
    pub fetch: Duration,
    /// Re-scoring the first stage's top-K with ELIP (zero without `RERANK`).
    pub rerank: Duration,
    /// Candidates re-ranking had to decode; the others came from the database's pixel cache.
    pub rerank_decoded: usize,
}

/// The results of a search and what produced them.
#[derive(Debug, Clone)]
pub struct SearchResults {
    pub collection: String,
    /// The query as written ("text 'a dog'", "image x.jpg", "row 7").
    pub query: String,
    pub target: Target,
    pub model: String,
    pub hits: Vec<SearchHit>,
    /// Names of the collection's metadata columns, in schema order.
    pub metadata_columns: Vec<String>,
    pub timings: SearchTimings,
    /// The HTML report written, if `INTO` was given.
    pub report: Option<String>,
}

impl SearchResults {
    /// Rows with the keys `rank`, `id`, `score`, `text`, (`matched_text`), `image`, `split` and
    /// the metadata columns.
    pub fn to_result_set(&self) -> ResultSet {
        let mut columns: Vec<String> = ["rank", "id", "score", "text"].map(String::from).to_vec();
        let captions = self.target == Target::Texts;
        if captions {
            columns.push("matched_text".into());
        }
        let reranked = self.hits.iter().any(|h| h.first_rank.is_some());
        if reranked {
            columns.push("first_rank".into());
        }
        columns.extend(["image", "split"].map(String::from));
        columns.extend(self.metadata_columns.iter().cloned());
        let opt = |s: &Option<String>| s.clone().map_or(Cell::Null, Cell::Str);
        let rows = self
            .hits
            .iter()
            .map(|h| {
                let mut r = vec![
                    Cell::Int(h.rank as i64),
                    Cell::Int(h.id as i64),
                    Cell::Float(f64::from(h.score)),
                    Cell::List(h.texts.clone()),
                ];
                if captions {
                    r.push(opt(&h.matched_text));
                }
                if reranked {
                    r.push(h.first_rank.map_or(Cell::Null, |x| Cell::Int(x as i64)));
                }
                r.push(opt(&h.image));
                r.push(opt(&h.split));
                r.extend(h.metadata.iter().map(|(_, v)| Cell::from(v.clone())));
                r
            })
            .collect();
        ResultSet {
            columns,
            rows,
            status: self.report.as_ref().map(|p| format!("wrote report {p}")),
        }
    }
}

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
    let wanted = modality(target);
    let (space, model) = match &plan.model {
        Some(locator) => {
            let m = db.models.load(locator)?;
            let space = c
                .spaces
                .iter()
                .find(|s| s.spec.modality == wanted && s.spec.fingerprint == m.fingerprint)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "collection {} has no {wanted} embeddings from model {locator}; \
                         compute them with EMBED {} USING MODEL '{locator}'",
                        c.name, c.name
                    ))
                })?;
            (space.id, Some(m))
        }
        None => {
            let active = match wanted {
                Modality::Image => c.active_image,
                Modality::Text => c.active_text,
            };
            let space = active.ok_or_else(|| {
                Error::Invalid(format!(
                    "collection {} has no {wanted} embeddings; give it a model with \
                     EMBED {} USING MODEL '<folder or hub id>'",
                    c.name, c.name
                ))
            })?;
            (space, None)
        }
    };
    let spec = &c.space(space)?.spec;
    let model = match (&plan.query, model) {
        (SearchQuery::Row(_), _) => None,
        (_, Some(m)) => Some(m),
        (_, None) => {
            let m = db.models.load(&spec.model_id)?;
            check_fingerprint(&m, spec, &c.name)?;
            Some(m)
        }
    };
    Ok(Resolved {
        target,
        space,
        model,
        model_id: spec.model_id.clone(),
        exclude,
        query: plan.query.clone(),
    })
}

/// The query vector.
fn query_vector(snap: &Snapshot, plan: &SearchPlan, r: &Resolved) -> Result<Vec<f32>> {
    let c = snap.collection(&plan.collection)?;
    match (&plan.query, &r.model) {
        (SearchQuery::Text(t), Some(m)) => Ok(m
            .encoder
            .embed_texts(&[t.as_str()])?
            .into_iter()
            .flatten()
            .collect()),
        (SearchQuery::Image(path), Some(m)) => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let pixels = m.encoder.pixels(&bytes, path)?;
            Ok(m.encoder
                .embed_pixels(&[pixels])?
                .into_iter()
                .flatten()
                .collect())
        }
        (SearchQuery::Row(id), _) => {
            let fingerprint = &c.space(r.space)?.spec.fingerprint;
            let image_space = c
                .spaces
                .iter()
                .find(|s| s.spec.modality == Modality::Image && &s.spec.fingerprint == fingerprint)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "collection {} has no image embeddings from {} to query with",
                        c.name, r.model_id
                    ))
                })?;
            snap.vector_of(&c.name, image_space.id, *id, 0)?
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "row {id} has no stored embedding in space {}; run EMBED {}",
                        image_space.id, c.name
                    ))
                })
        }
        (_, None) => Err(Error::Invalid("no model to embed the query".into())),
    }
}

/// Runs a search; with `with_bytes` the hits carry their image bytes.
pub(crate) fn run(db: &Database, plan: &SearchPlan, with_bytes: bool) -> Result<SearchResults> {
    let snap = db.snapshot()?;
    let start = Instant::now();
    let resolved = resolve(db, &snap, plan)?;
    let query = query_vector(&snap, plan, &resolved)?;
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
        Some(r) => rerank(db, &snap, plan, &resolved, &query, r, hits)?,
        None => (hits.into_iter().map(|h| (h, None)).collect(), 0),
    };
    let reranked = Instant::now();
    let c = snap.collection(&plan.collection)?;
    let metadata_columns: Vec<String> = c.schema.metadata.iter().map(|m| m.name.clone()).collect();
    let mut out = Vec::with_capacity(hits.len());
    for (i, (hit, first_rank)) in hits.iter().enumerate() {
        let handle = snap.get(&plan.collection, hit.row_id)?.ok_or_else(|| {
            Error::Invalid(format!("row {} vanished from the snapshot", hit.row_id))
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
                .map(|(i, n)| (n.clone(), row.value_at(i).to_value()))
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
    if let Some(path) = &plan.into {
        crate::report::write_search_report(std::path::Path::new(path), &results)?;
        results.report = Some(path.clone());
    }
    Ok(results)
}

/// A hit in result order, with its first-stage rank when re-ranked.
type RankedHit = (storage::Hit, Option<usize>);

/// `RERANK WITH ELIP`: re-scores the first stage's hits (images of a text query) with ELIP
/// model `r.elip` and keeps the best `plan.limit`, each with its first-stage rank; also how many
/// candidates were decoded.
fn rerank(
    db: &Database,
    snap: &Snapshot,
    plan: &SearchPlan,
    resolved: &Resolved,
    query: &[f32],
    r: &RerankPlan,
    hits: Vec<storage::Hit>,
) -> Result<(Vec<RankedHit>, usize)> {
    use rayon::prelude::*;
    let (SearchQuery::Text(_), Target::Images, Some(model)) =
        (&plan.query, resolved.target, &resolved.model)
    else {
        return Err(Error::Invalid(
            "RERANK WITH ELIP re-ranks images for a text query".into(),
        ));
    };
    let loaded = crate::elip::load(db, &r.elip)?;
    loaded.check_backbone(&r.elip, &model.fingerprint, &model.key)?;
    let pixels: Vec<(std::sync::Arc<Vec<f32>>, bool)> = hits
        .par_iter()
        .map(|h| {
            let handle = snap.get(&plan.collection, h.row_id)?.ok_or_else(|| {
                Error::Invalid(format!("row {} vanished from the snapshot", h.row_id))
            })?;
            crate::elip::candidate_pixels(db, model, &handle.row())
        })
        .collect::<Result<_>>()?;
    let decoded = pixels.iter().filter(|(_, made)| *made).count();
    let candidates: Vec<&[f32]> = pixels.iter().map(|(p, _)| p.as_slice()).collect();
    let elip_scores = crate::elip::scores(&model.encoder, &loaded.mapper, query, &candidates)?;
    let scores: Vec<f32> = hits
        .iter()
        .zip(elip_scores)
        .map(|(h, e)| crate::elip::fused(h.score, e, loaded.fusion_for(r)))
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
