//! `EVALUATE`: retrieval quality of stored embeddings, exact, in both directions, for one or
//! more models; every run is recorded in the `mirante_evaluations` collection (`record`).
//!
//! Ground truth comes from the rows (`gallery`): a caption is relevant to the image of its row,
//! and rows whose image bytes are identical share one gallery image. The `WHERE` clause
//! restricts queries and gallery alike. Ranks come from [`crate::ranking`] (or the search path,
//! `index`), the metric definitions from [`crate::metrics`] (written out in
//! `docs/evaluation.md`), the worst queries from `failures`.

mod failures;
mod gallery;
mod index;
mod record;

use std::time::Instant;

use mirante_query::{Direction, EvalMetric, EvaluatePlan};
use mirante_storage::{CollectionMeta, SpaceId, Vectors};

use self::failures::worst_failures;
use self::gallery::Gallery;
use self::index::{INDEX_RECALL_AT, index_depth, index_ranks};
use crate::catalog::predicate_sql;
use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result};
use crate::metrics::rank_metric;
use crate::output::{DirectionResult, EVALUATIONS, Evaluation, ModelEvaluation};
use crate::ranking::{Problem, Ranks, exact_ranks};
use crate::spaces::{ModelSpaces, Spaces};

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
                None => Err(Error::MissingEmbeddings {
                    collection: c.name.clone(),
                    detail: format!(
                        "has rows without {} embeddings from {model} yet; run EMBED {} USING \
                         MODEL '{model}' first",
                        c.space(space)?.spec.modality,
                        c.name
                    ),
                }),
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
    let spaces = Spaces::new(db, c);
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
        let m = spaces.pair(locator)?;
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
        lines.push(format!("  report: {}", p.path));
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
            crate::rerank::explain(db, r, r.top)?
                .into_iter()
                .map(|l| format!("  {l}")),
        );
    }
    Ok(lines)
}

pub(crate) fn run(db: &Database, plan: &EvaluatePlan, exec: &ExecOptions) -> Result<Evaluation> {
    let snap = db.snapshot()?;
    let c = snap.collection(&plan.collection)?;
    let resolver = Spaces::new(db, c);
    let spaces: Vec<ModelSpaces> = if plan.models.is_empty() {
        vec![resolver.pair(None)?]
    } else {
        plan.models
            .iter()
            .map(|m| resolver.pair(Some(m)))
            .collect::<Result<_>>()?
    };
    let g = Gallery::collect(&snap, c, plan.filter.as_ref())?;
    let filter = filter_sql(c, plan);
    let mut models = Vec::with_capacity(spaces.len());
    for m in &spaces {
        exec.cancel.check()?;
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
            let (ranks, recall) = index_ranks(&snap, plan, m, &g, &problem, &exact, &exec.cancel)?;
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
            let elip = db.models.elip(&r.elip)?;
            elip.check_backbone(&r.elip, &m.fingerprint, &m.label)?;
            let backbone = db.models.load(&elip.backbone)?;
            let pixels = |image: u32| {
                let row = g.row(g.images[image as usize]);
                Ok(crate::rerank::candidate_pixels(db, &backbone, &row)?.0)
            };
            let mut reranked = ranks.clone();
            reranked.text_to_image = crate::rerank::reranked_text_ranks(
                &backbone.encoder,
                &elip.mapper,
                &problem,
                &ranks.text_to_image,
                (r.top as usize, &[elip.fusion_for(r)]),
                pixels,
                (&db.progress(exec), &exec.cancel),
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
    if let Err(e) = record::record(db, &evaluation) {
        evaluation.not_recorded = Some(e.to_string());
    }
    if let Some(into) = &plan.into {
        let file = crate::access::create_checked(&db.options.access, into)?;
        crate::report::write_evaluation_report(file, &evaluation)?;
        evaluation.report = Some(into.path.clone());
    }
    Ok(evaluation)
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
