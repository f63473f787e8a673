//! `EVALUATE`: retrieval quality of stored embeddings, exact, in both directions, for one or
//! more models; every run is recorded in the `mirante_evaluations` collection.
//!
//! Ground truth comes from the rows: a caption is relevant to the image of its row, and rows
//! whose image bytes are identical share one gallery image (so a duplicate is never a miss). The
//! `WHERE` clause restricts queries and gallery alike. Ranks come from [`crate::ranking`], the
//! metric definitions from [`crate::metrics`] (written out in `docs/evaluation.md`).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use mirante_query::{Direction, EvalMetric, EvaluatePlan};
use mirante_storage::{
    self as storage, CollectionMeta, ColumnDef, ColumnType, IndexSpec, Modality, NewRow, Schema,
    SegmentView, Snapshot, SpaceId, Value, Vectors, dot,
};

use crate::db::{Database, RowValues, predicate_sql};
use crate::error::{Error, Result};
use crate::metrics::{NOT_RETRIEVED, rank_metric};
use crate::ranking::{Problem, Ranks, exact_ranks, exact_top_k};
use crate::result::{Cell, ResultSet};

/// The collection that keeps every evaluation run.
pub const EVALUATIONS: &str = "mirante_evaluations";
/// Failures kept per (model, direction) for the report.
const WORST: usize = 6;
/// Retrieved items shown per failure.
const SHOWN: usize = 5;
/// `USING INDEX` asks each search for this many results at least (more when a metric's K is
/// larger); relevant items below are misses.
const INDEX_DEPTH: usize = 100;
/// `USING INDEX` reports how much of the exact top-k its searches return, at this k.
const INDEX_RECALL_AT: usize = 10;
/// Queries per batched search of `USING INDEX`.
const INDEX_BATCH: usize = 1024;

/// The outcome of one `EVALUATE`.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub collection: String,
    /// The version of the collection evaluated.
    pub version: u64,
    /// The `WHERE` clause as SQL.
    pub filter: Option<String>,
    pub metrics: Vec<EvalMetric>,
    /// Distinct images (after merging byte-identical ones) and captions evaluated.
    pub images: usize,
    pub captions: usize,
    pub models: Vec<ModelEvaluation>,
    /// `USING INDEX`: how deep each search went; `None` for exact ranks.
    pub index_depth: Option<usize>,
    /// Why the run was not stored in `mirante_evaluations`, if it was not.
    pub not_recorded: Option<String>,
    pub report: Option<String>,
}

/// The results of one model.
#[derive(Debug, Clone)]
pub struct ModelEvaluation {
    /// As named in `USING MODEL`, or the collection's model.
    pub model: String,
    pub fingerprint: String,
    pub directions: Vec<DirectionResult>,
    /// Time of the exact ranking pass (both directions).
    pub ranking_time: Duration,
}

/// The metrics of one direction.
#[derive(Debug, Clone)]
pub struct DirectionResult {
    pub direction: Direction,
    /// Queries with at least one relevant item in the gallery.
    pub queries: usize,
    /// Column name and value, in the order of the statement's metrics (`mean_similarity` adds
    /// `mean_similarity_nonmatching`); `None` when there were no queries.
    pub values: Vec<(String, Option<f64>)>,
    /// The queries whose first relevant item ranked worst.
    pub worst: Vec<Failure>,
}

/// A query that went badly, with what was retrieved instead (for the report).
#[derive(Debug, Clone)]
pub struct Failure {
    /// The caption, or the query image's row.
    pub query: Item,
    /// Rank of the first relevant item ([`crate::metrics::NOT_RETRIEVED`] when a `USING INDEX`
    /// search did not return it).
    pub rank: u32,
    /// The relevant items (the gold image, or the image's captions).
    pub relevant: Vec<Item>,
    /// The first results, with their scores.
    pub retrieved: Vec<(Item, f32)>,
}

/// A caption or an image of the evaluated rows.
#[derive(Debug, Clone)]
pub struct Item {
    pub row: u64,
    /// The caption text (captions), or the image source (images).
    pub label: String,
    /// Image bytes, for images.
    pub image: Option<Vec<u8>>,
}

impl Evaluation {
    /// Metric columns in order.
    pub(crate) fn metric_columns(&self) -> Vec<String> {
        self.models
            .first()
            .and_then(|m| m.directions.first())
            .map(|d| d.values.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }

    /// One row per (model, direction): `model`, `direction`, `queries`, one column per metric,
    /// and with several models `delta_<metric>` against the first model.
    pub fn to_result_set(&self) -> ResultSet {
        let metrics = self.metric_columns();
        let mut columns: Vec<String> = ["model", "direction", "queries"].map(String::from).to_vec();
        columns.extend(metrics.iter().cloned());
        let compare = self.models.len() > 1;
        if compare {
            columns.extend(metrics.iter().map(|m| format!("delta_{m}")));
        }
        let cell = |v: Option<f64>| v.map_or(Cell::Null, Cell::Float);
        let mut rows = Vec::new();
        for m in &self.models {
            for d in &m.directions {
                let mut row = vec![
                    Cell::Str(m.model.clone()),
                    Cell::Str(d.direction.to_string()),
                    Cell::Int(d.queries as i64),
                ];
                row.extend(d.values.iter().map(|(_, v)| cell(*v)));
                if compare {
                    let base = self.models[0]
                        .directions
                        .iter()
                        .find(|b| b.direction == d.direction);
                    for (i, (_, v)) in d.values.iter().enumerate() {
                        let b = base.and_then(|b| b.values[i].1);
                        row.push(cell(v.zip(b).map(|(v, b)| v - b)));
                    }
                }
                rows.push(row);
            }
        }
        let mut status = format!(
            "evaluated {} on {} images and {} captions of {} (version {}{})",
            if self.models.len() == 1 {
                "1 model".to_string()
            } else {
                format!("{} models", self.models.len())
            },
            self.images,
            self.captions,
            self.collection,
            self.version,
            self.filter
                .as_ref()
                .map(|f| format!(", WHERE {f}"))
                .unwrap_or_default()
        );
        if let Some(depth) = self.index_depth {
            status.push_str(&format!(
                "; ranked through the collection's search (top {depth} per query)"
            ));
        }
        match &self.not_recorded {
            None => status.push_str(&format!("; recorded in {EVALUATIONS}")),
            Some(why) => status.push_str(&format!("; not recorded in {EVALUATIONS}: {why}")),
        }
        if let Some(r) = &self.report {
            status.push_str(&format!("; wrote report {r}"));
        }
        ResultSet {
            columns,
            rows,
            status: Some(status),
        }
    }
}

/// The evaluated rows of a snapshot: which are kept, their distinct images and captions.
struct Gallery<'s> {
    segments: Vec<SegmentView<'s>>,
    /// Kept rows as (segment, position).
    rows: Vec<(usize, usize)>,
    /// Per distinct image: the kept row that represents it.
    images: Vec<usize>,
    /// Per caption: (kept row, caption index).
    captions: Vec<(usize, usize)>,
    /// Per caption: its distinct image.
    gold: Vec<Option<u32>>,
    /// Per kept row: its row id, its distinct image, and its first caption's index.
    row_ids: Vec<u64>,
    image_of: Vec<Option<u32>>,
    first_caption: Vec<usize>,
}

impl<'s> Gallery<'s> {
    fn collect(
        snap: &'s Snapshot,
        c: &'s CollectionMeta,
        filter: Option<&mirante_query::Predicate>,
    ) -> Result<Self> {
        let segments = snap.segments(c)?;
        let mut g = Gallery {
            segments: Vec::new(),
            rows: Vec::new(),
            images: Vec::new(),
            captions: Vec::new(),
            gold: Vec::new(),
            row_ids: Vec::new(),
            image_of: Vec::new(),
            first_caption: Vec::new(),
        };
        // Byte-identical images: candidates by checksum, confirmed by comparing the bytes.
        let mut by_checksum: HashMap<u32, Vec<u32>> = HashMap::new();
        for (s, seg) in segments.iter().enumerate() {
            for (local, row) in seg.live_rows() {
                if filter.is_some_and(|p| !p.matches(&RowValues(row))) {
                    continue;
                }
                let kept = g.rows.len();
                g.rows.push((s, local));
                let image = match row.image_bytes() {
                    Some(bytes) => {
                        let same = by_checksum.entry(crc32c::crc32c(bytes)).or_default();
                        let found = same.iter().copied().find(|&img| {
                            let (rs, rl) = g.rows[g.images[img as usize]];
                            segments[rs].row(rl).image_bytes() == Some(bytes)
                        });
                        Some(found.unwrap_or_else(|| {
                            g.images.push(kept);
                            let id = (g.images.len() - 1) as u32;
                            same.push(id);
                            id
                        }))
                    }
                    None => None,
                };
                g.row_ids.push(row.id());
                g.image_of.push(image);
                g.first_caption.push(g.captions.len());
                for k in 0..row.text_count() {
                    g.captions.push((kept, k));
                    g.gold.push(image);
                }
            }
        }
        g.segments = segments;
        Ok(g)
    }

    fn row(&self, kept: usize) -> storage::RowRef<'_> {
        let (s, local) = self.rows[kept];
        self.segments[s].row(local)
    }

    fn caption_item(&self, caption: usize) -> Item {
        let (kept, k) = self.captions[caption];
        let row = self.row(kept);
        Item {
            row: row.id(),
            label: row.text(k).unwrap_or("").to_string(),
            image: None,
        }
    }

    fn image_item(&self, image: usize) -> Item {
        let row = self.row(self.images[image]);
        Item {
            row: row.id(),
            label: row.image_source().unwrap_or("").to_string(),
            image: row.image_bytes().map(<[u8]>::to_vec),
        }
    }
}

/// The image and text spaces one evaluated model stands for.
struct ModelSpaces {
    label: String,
    fingerprint: String,
    image: SpaceId,
    text: SpaceId,
}

/// Finds the spaces of `locator` (or the active ones) without loading weights when the stored
/// name decides; a model stored under another name is found by loading it and comparing
/// fingerprints.
fn model_spaces(db: &Database, c: &CollectionMeta, locator: Option<&str>) -> Result<ModelSpaces> {
    let pair = |fingerprint: &str, model_id: Option<&str>| {
        let find = |m: Modality| {
            c.spaces
                .iter()
                .find(|s| {
                    s.spec.modality == m
                        && s.spec.fingerprint == fingerprint
                        && model_id.is_none_or(|id| s.spec.model_id == id)
                })
                .map(|s| s.id)
        };
        find(Modality::Image).zip(find(Modality::Text))
    };
    let Some(locator) = locator else {
        let (Some(image), Some(text)) = (c.active_image, c.active_text) else {
            return Err(Error::Invalid(format!(
                "collection {} has no image and text embeddings to evaluate; give it a model \
                 with EMBED {} USING MODEL '<folder or hub id>'",
                c.name, c.name
            )));
        };
        let (i, t) = (&c.space(image)?.spec, &c.space(text)?.spec);
        if i.fingerprint != t.fingerprint {
            return Err(Error::Invalid(format!(
                "the active image and text embeddings of {} come from different models ({} and \
                 {}); name one with USING MODEL",
                c.name, i.model_id, t.model_id
            )));
        }
        return Ok(ModelSpaces {
            label: i.model_id.clone(),
            fingerprint: i.fingerprint.clone(),
            image,
            text,
        });
    };
    let key = db.models.key(locator)?;
    let mut fingerprints: Vec<&str> = c
        .spaces
        .iter()
        .filter(|s| s.spec.model_id == key && pair(&s.spec.fingerprint, Some(&key)).is_some())
        .map(|s| s.spec.fingerprint.as_str())
        .collect();
    fingerprints.dedup();
    let active = c.active_image.and_then(|s| c.space(s).ok());
    let chosen = match fingerprints.as_slice() {
        [one] => Some(one.to_string()),
        [] => None,
        several => active
            .filter(|a| several.contains(&a.spec.fingerprint.as_str()))
            .map(|a| a.spec.fingerprint.clone()),
    };
    let fingerprint = match chosen {
        Some(f) => f,
        None => match db.models.load(locator) {
            Ok(m) => m.fingerprint.clone(),
            Err(e) if fingerprints.is_empty() => {
                let mut names: Vec<&str> =
                    c.spaces.iter().map(|s| s.spec.model_id.as_str()).collect();
                names.dedup();
                return Err(Error::Invalid(format!(
                    "collection {} has no embeddings from model {locator} ({e}); its models: {}; \
                     compute them with EMBED {} USING MODEL '{locator}'",
                    c.name,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    },
                    c.name
                )));
            }
            Err(e) => return Err(e),
        },
    };
    let (image, text) = pair(&fingerprint, None).ok_or_else(|| {
        Error::Invalid(format!(
            "collection {} has no image and text embeddings from model {locator}; compute them \
             with EMBED {} USING MODEL '{locator}'",
            c.name, c.name
        ))
    })?;
    Ok(ModelSpaces {
        label: locator.to_string(),
        fingerprint,
        image,
        text,
    })
}

/// The (image, text) spaces of a named model in a collection (see `model_spaces`).
pub(crate) fn spaces_of(
    db: &Database,
    c: &CollectionMeta,
    model: &str,
) -> Result<(SpaceId, SpaceId)> {
    let m = model_spaces(db, c, Some(model))?;
    Ok((m.image, m.text))
}

/// The segment columns of one space, loaded for the segments that hold evaluated rows.
fn columns(
    c: &CollectionMeta,
    g: &Gallery<'_>,
    space: SpaceId,
    model: &str,
) -> Result<Vec<Option<Vectors>>> {
    let mut used = vec![false; g.segments.len()];
    for &(s, _) in &g.rows {
        used[s] = true;
    }
    g.segments
        .iter()
        .zip(used)
        .map(|(seg, used)| {
            if !used {
                return Ok(None);
            }
            match seg.vectors(c, space)? {
                Some(v) => Ok(Some(v)),
                None => Err(Error::Invalid(format!(
                    "some rows of {} have no {} embeddings from {model} yet; run EMBED {} \
                     USING MODEL '{model}' first",
                    c.name,
                    c.space(space)?.spec.modality,
                    c.name
                ))),
            }
        })
        .collect()
}

/// The SQL text of the plan's filter, with the collection's column names.
fn filter_sql(c: &CollectionMeta, plan: &EvaluatePlan) -> Option<String> {
    plan.filter.as_ref().map(|f| predicate_sql(&c.schema, f))
}

/// What `EXPLAIN EVALUATE` prints: the spaces each model resolves to and how ranks are made.
pub(crate) fn explain(db: &Database, plan: &EvaluatePlan) -> Result<Vec<String>> {
    let snap = db.snapshot()?;
    let c = snap.collection(&plan.collection)?;
    let locators: Vec<Option<&str>> = if plan.models.is_empty() {
        vec![None]
    } else {
        plan.models.iter().map(|m| Some(m.as_str())).collect()
    };
    let metrics: Vec<String> = plan.metrics.iter().map(ToString::to_string).collect();
    let directions: Vec<String> = plan.directions.iter().map(ToString::to_string).collect();
    let mut lines = vec![
        format!("Evaluate {} at version {}", c.name, snap.version()),
        format!("  metrics: {}", metrics.join(", ")),
        format!("  directions: {}", directions.join(", ")),
        format!(
            "  rows: {} (queries and gallery alike)",
            filter_sql(c, plan).map_or("all".into(), |f| format!("WHERE {f}"))
        ),
        "  ground truth: a caption is relevant to its row's image; byte-identical images are one"
            .into(),
    ];
    for locator in locators {
        let m = model_spaces(db, c, locator)?;
        let dim = c.space(m.image)?.spec.dim;
        lines.push(format!(
            "  model {}: image space {} and text space {} (dim {dim}, fingerprint {})",
            m.label, m.image, m.text, m.fingerprint
        ));
    }
    lines.push(
        "  ranks: exact scores of every caption x image in tiles, both directions in one pass; \
         ties ranked pessimistically"
            .into(),
    );
    lines.push(format!(
        "  record: one row per model and direction in {EVALUATIONS}"
    ));
    if let Some(p) = &plan.into {
        lines.push(format!("  report: {p}"));
    }
    if plan.use_index {
        lines.push(format!(
            "  USING INDEX: each query also searched through the collection's index (top {}), \
             ranks from those results, index_recall@{INDEX_RECALL_AT} against the exact top \
             {INDEX_RECALL_AT}",
            index_depth(plan)
        ));
    }
    if let Some(r) = &plan.rerank {
        lines.push(format!(
            "  then, text_to_image only: each caption's exact top {} images re-ranked; a gold \
             image below the top {} keeps its rank; reported as a second model row",
            r.top, r.top
        ));
        lines.extend(
            crate::elip::explain(db, r, r.top)?
                .into_iter()
                .map(|l| format!("  {l}")),
        );
    }
    Ok(lines)
}

pub(crate) fn run(db: &Database, plan: &EvaluatePlan) -> Result<Evaluation> {
    let snap = db.snapshot()?;
    let c = snap.collection(&plan.collection)?;
    let spaces: Vec<ModelSpaces> = if plan.models.is_empty() {
        vec![model_spaces(db, c, None)?]
    } else {
        plan.models
            .iter()
            .map(|m| model_spaces(db, c, Some(m)))
            .collect::<Result<_>>()?
    };
    let g = Gallery::collect(&snap, c, plan.filter.as_ref())?;
    let filter = filter_sql(c, plan);
    let mut models = Vec::with_capacity(spaces.len());
    for m in &spaces {
        let image_columns = columns(c, &g, m.image, &m.label)?;
        let text_columns = columns(c, &g, m.text, &m.label)?;
        fn vector(cols: &[Option<Vectors>], segment: usize, item: usize) -> &[f32] {
            // `columns` loaded every segment that holds an evaluated row.
            cols[segment].as_ref().map_or(&[][..], |v| v.get(item))
        }
        let problem = Problem {
            texts: g
                .captions
                .iter()
                .map(|&(kept, k)| {
                    let (s, local) = g.rows[kept];
                    vector(&text_columns, s, g.segments[s].text_start(local) + k)
                })
                .collect(),
            images: g
                .images
                .iter()
                .map(|&kept| vector(&image_columns, g.rows[kept].0, g.rows[kept].1))
                .collect(),
            gold: g.gold.clone(),
        };
        let start = Instant::now();
        let exact = exact_ranks(&problem);
        let (ranks, index_recall) = if plan.use_index {
            let (ranks, recall) = index_ranks(&snap, plan, m, &g, &problem, &exact)?;
            (ranks, Some(recall))
        } else {
            (exact, None)
        };
        let ranking_time = start.elapsed();
        let directions = plan
            .directions
            .iter()
            .map(|&d| {
                let mut r = direction_result(d, &plan.metrics, &ranks, &problem, &g);
                if let Some(recall) = &index_recall {
                    r.values.push((
                        format!("index_recall@{INDEX_RECALL_AT}"),
                        recall[usize::from(d == Direction::ImageToText)],
                    ));
                }
                r
            })
            .collect();
        models.push(ModelEvaluation {
            model: m.label.clone(),
            fingerprint: m.fingerprint.clone(),
            directions,
            ranking_time,
        });
        if let Some(r) = &plan.rerank {
            let start = Instant::now();
            let elip = crate::elip::load(db, &r.elip)?;
            elip.check_backbone(&r.elip, &m.fingerprint, &m.label)?;
            let backbone = db.models.load(&elip.backbone)?;
            let pixels = |image: u32| {
                let row = g.row(g.images[image as usize]);
                Ok(crate::elip::candidate_pixels(db, &backbone, &row)?.0)
            };
            let mut reranked = ranks.clone();
            reranked.text_to_image = crate::elip::reranked_text_ranks(
                &backbone.encoder,
                &elip.mapper,
                &problem,
                &ranks.text_to_image,
                (r.top as usize, &[elip.fusion_for(r)]),
                pixels,
                db.options.progress,
            )?
            .remove(0);
            models.push(ModelEvaluation {
                model: match elip.fusion_for(r) {
                    1.0 => format!("{} + ELIP '{}' (top {})", m.label, r.elip, r.top),
                    w => format!(
                        "{} + ELIP '{}' (top {}, fusion {w})",
                        m.label, r.elip, r.top
                    ),
                },
                fingerprint: m.fingerprint.clone(),
                directions: vec![direction_result(
                    Direction::TextToImage,
                    &plan.metrics,
                    &reranked,
                    &problem,
                    &g,
                )],
                ranking_time: start.elapsed(),
            });
        }
    }
    let mut evaluation = Evaluation {
        collection: plan.collection.clone(),
        version: snap.version(),
        filter,
        metrics: plan.metrics.clone(),
        images: g.images.len(),
        captions: g.captions.len(),
        models,
        index_depth: plan.use_index.then(|| index_depth(plan)),
        not_recorded: None,
        report: None,
    };
    if let Err(e) = record(db, &evaluation) {
        evaluation.not_recorded = Some(e.to_string());
    }
    if let Some(path) = &plan.into {
        crate::report::write_evaluation_report(std::path::Path::new(path), &evaluation)?;
        evaluation.report = Some(path.clone());
    }
    Ok(evaluation)
}

/// `USING INDEX`: the ranks the collection's search (ANN index where segments have one, exact
/// re-scoring) gives each query within its depth, as [`Ranks`] with misses as
/// [`NOT_RETRIEVED`], and per direction the mean share of the exact top-k it returned.
fn index_ranks(
    snap: &Snapshot,
    plan: &EvaluatePlan,
    m: &ModelSpaces,
    g: &Gallery<'_>,
    p: &Problem<'_>,
    exact: &Ranks,
) -> Result<(Ranks, [Option<f64>; 2])> {
    let depth = index_depth(plan);
    let kept: HashMap<u64, usize> = g
        .row_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let filter = plan.filter.as_ref().map(crate::db::row_filter);
    let search = |space: SpaceId, queries: &[&[f32]]| -> Result<Vec<Vec<storage::Hit>>> {
        let mut out = Vec::with_capacity(queries.len());
        for batch in queries.chunks(INDEX_BATCH) {
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
fn index_depth(plan: &EvaluatePlan) -> usize {
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

/// Metric values and worst failures of one direction.
fn direction_result(
    direction: Direction,
    metrics: &[EvalMetric],
    ranks: &Ranks,
    p: &Problem<'_>,
    g: &Gallery<'_>,
) -> DirectionResult {
    // Each query as the ascending ranks of its relevant items.
    let queries = match direction {
        Direction::TextToImage => ranks.text_queries(),
        Direction::ImageToText => ranks.image_queries(),
    };
    let mut values = Vec::new();
    for &m in metrics {
        if m == EvalMetric::MeanSimilarity {
            values.push((m.to_string(), ranks.matching.value()));
            values.push((
                "mean_similarity_nonmatching".to_string(),
                ranks.non_matching.value(),
            ));
        } else {
            values.push((m.to_string(), rank_metric(m, queries.iter().copied())));
        }
    }
    DirectionResult {
        direction,
        queries: queries.len(),
        values,
        worst: worst_failures(direction, ranks, p, g),
    }
}

/// The queries whose first relevant item ranked worst, with their top results.
fn worst_failures(
    direction: Direction,
    ranks: &Ranks,
    p: &Problem<'_>,
    g: &Gallery<'_>,
) -> Vec<Failure> {
    // (first relevant rank, query index), worst first, ties by query order.
    let mut firsts: Vec<(u32, usize)> = match direction {
        Direction::TextToImage => ranks
            .text_to_image
            .iter()
            .enumerate()
            .filter_map(|(t, r)| r.map(|r| (r, t)))
            .collect(),
        Direction::ImageToText => (0..p.images.len())
            .filter_map(|i| ranks.image_to_text(i).first().map(|&r| (r, i)))
            .collect(),
    };
    firsts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    firsts
        .into_iter()
        .take(WORST)
        .filter(|&(r, _)| r > 1)
        .map(|(rank, q)| {
            let (query, gallery): (&[f32], &[&[f32]]) = match direction {
                Direction::TextToImage => (p.texts[q], &p.images),
                Direction::ImageToText => (p.images[q], &p.texts),
            };
            let mut scored: Vec<(f32, usize)> = gallery
                .iter()
                .enumerate()
                .map(|(j, v)| (dot(query, v), j))
                .collect();
            let shown = SHOWN.min(scored.len());
            if shown > 0 {
                scored.select_nth_unstable_by(shown - 1, |a, b| {
                    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
                });
            }
            scored.truncate(shown);
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            match direction {
                Direction::TextToImage => Failure {
                    query: g.caption_item(q),
                    rank,
                    relevant: p.gold[q]
                        .map(|i| g.image_item(i as usize))
                        .into_iter()
                        .collect(),
                    retrieved: scored
                        .into_iter()
                        .map(|(s, j)| (g.image_item(j), s))
                        .collect(),
                },
                Direction::ImageToText => Failure {
                    query: g.image_item(q),
                    rank,
                    relevant: ranks.image_texts[ranks.image_offsets[q]..ranks.image_offsets[q + 1]]
                        .iter()
                        .map(|&t| g.caption_item(t as usize))
                        .collect(),
                    retrieved: scored
                        .into_iter()
                        .map(|(s, j)| (g.caption_item(j), s))
                        .collect(),
                },
            }
        })
        .collect()
}

/// The schema of `mirante_evaluations`.
fn evaluations_schema() -> Result<Schema> {
    let col = |n: &str, ty, nullable| ColumnDef::new(n, ty, nullable);
    Ok(Schema::new(vec![
        col("time", ColumnType::String, false),
        col("collection", ColumnType::String, false),
        col("version", ColumnType::I64, false),
        col("model", ColumnType::String, false),
        col("fingerprint", ColumnType::String, false),
        col("direction", ColumnType::String, false),
        col("filter", ColumnType::String, true),
        col("ranking", ColumnType::String, false),
        col("queries", ColumnType::I64, false),
        col("metrics", ColumnType::String, false),
    ])?)
}

/// Appends one row per (model, direction) to `mirante_evaluations`, creating it on first use.
fn record(db: &Database, e: &Evaluation) -> Result<()> {
    let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let rows: Vec<NewRow> = e
        .models
        .iter()
        .flat_map(|m| {
            m.directions.iter().map(|d| {
                let metrics: serde_json::Map<String, serde_json::Value> = d
                    .values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.map_or(serde_json::Value::Null, Into::into)))
                    .collect();
                let text = |s: &str| Value::String(s.to_string());
                NewRow {
                    metadata: vec![
                        ("time".into(), text(&time)),
                        ("collection".into(), text(&e.collection)),
                        ("version".into(), Value::I64(e.version as i64)),
                        ("model".into(), text(&m.model)),
                        ("fingerprint".into(), text(&m.fingerprint)),
                        ("direction".into(), text(&d.direction.to_string())),
                        (
                            "filter".into(),
                            e.filter.as_deref().map_or(Value::Null, text),
                        ),
                        (
                            "ranking".into(),
                            text(
                                &e.index_depth
                                    .map_or("exact".into(), |d| format!("index top {d}")),
                            ),
                        ),
                        ("queries".into(), Value::I64(d.queries as i64)),
                        (
                            "metrics".into(),
                            text(&serde_json::Value::Object(metrics).to_string()),
                        ),
                    ],
                    ..Default::default()
                }
            })
        })
        .collect();
    let mut w = db.writer()?;
    let schema = evaluations_schema()?;
    match w.snapshot().collection(EVALUATIONS) {
        Ok(existing) if existing.schema != schema => {
            return Err(Error::Invalid(format!(
                "collection {EVALUATIONS} exists with another schema; drop or rename it"
            )));
        }
        Ok(_) => {}
        Err(_) => {
            w.create_collection(EVALUATIONS, schema, IndexSpec::new("Flat"))?;
        }
    }
    w.append(EVALUATIONS, rows, &[])?;
    Ok(())
}
