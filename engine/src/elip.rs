//! `TRAIN ELIP` and `RERANK WITH ELIP`: a mapping network (crate `mirante-training`'s
//! [`mirante_training::elip`]) trained on a collection's pairs over a frozen backbone, kept in
//! the model registry (`<database>/models/<name>/`: `elip_config.json`, `model.safetensors`,
//! and the lineage), and used to re-rank the first stage's top-K images of text queries in
//! `SEARCH` and `EVALUATE`.

use std::collections::HashMap;

use mirante_query::{EvalMetric, Literal, TrainElipPlan};
use mirante_training::DualEncoder;
use mirante_training::elip::{self as training_elip, ElipConfig, ElipMapper};
use mirante_training::finetune::PairData;
use rayon::prelude::*;

use crate::db::Database;
use crate::error::{Error, Result};
use crate::finetune::{
    LINEAGE, check_name, commit_model, embed_captions, epochs_result, mutual_neighbours, pairs,
    partial_folder, registry_path, run_lineage, training_config,
};
use crate::metrics::rank_metric;
use crate::ranking::{Problem, exact_ranks, exact_top_k};
use crate::result::ResultSet;

/// The options `TRAIN ELIP` takes: fine-tuning's loop settings and the mapper's shape.
const ELIP_OPTIONS: [&str; 17] = [
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "clip_norm",
    "accumulation",
    "seed",
    "patience",
    "metric",
    "hard_negatives",
    "precision",
    "prompts",
    "hidden",
    "deep",
    "dropout",
    "top",
];
/// Candidates re-scored per image-encoder batch.
const RERANK_BATCH: usize = 64;
/// Validation images embedded per batch.
const EMBED_BATCH: usize = 32;
/// First-stage results re-ranked per validation query unless `top` says otherwise.
const VALIDATION_TOP: usize = 20;

/// An ELIP model of the registry with the backbone it was trained over.
pub(crate) struct LoadedElip {
    pub mapper: ElipMapper,
    /// The backbone's model key and fingerprint, from the lineage.
    pub backbone: String,
    pub backbone_fingerprint: String,
}

/// Loads registry ELIP model `name`.
pub(crate) fn load(db: &Database, name: &str) -> Result<LoadedElip> {
    check_name(name)?;
    let path = registry_path(db, name);
    if !path.join(training_elip::CONFIG_FILE).is_file() {
        return Err(Error::Invalid(format!(
            "'{name}' is not an ELIP model of this database; train one with TRAIN ELIP ON \
             <collection> ... AS '{name}' (SHOW MODELS lists the registry)"
        )));
    }
    let lineage_path = path.join(LINEAGE);
    let lineage: serde_json::Value = std::fs::read_to_string(&lineage_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "ELIP model '{name}' has no readable lineage ({})",
                lineage_path.display()
            ))
        })?;
    let text = |k: &str| lineage[k].as_str().unwrap_or_default().to_string();
    Ok(LoadedElip {
        mapper: ElipMapper::load(&path, &db.options.device)?,
        backbone: text("base"),
        backbone_fingerprint: text("base_fingerprint"),
    })
}

impl LoadedElip {
    /// Refuses re-ranking vectors of another model than the backbone.
    pub fn check_backbone(&self, name: &str, fingerprint: &str, model: &str) -> Result<()> {
        if fingerprint == self.backbone_fingerprint {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "ELIP model '{name}' was trained over {} (fingerprint {}), but the first stage uses \
             {model} (fingerprint {fingerprint}); search or evaluate with USING MODEL '{}'",
            self.backbone, self.backbone_fingerprint, self.backbone
        )))
    }
}

/// `EXPLAIN`'s lines for the second stage: what re-scores the first stage's top `top` and
/// what it costs, keeping the best `keep`.
pub(crate) fn explain(
    db: &Database,
    r: &mirante_query::RerankPlan,
    keep: u64,
) -> Result<Vec<String>> {
    let elip = load(db, &r.elip)?;
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

/// Text-to-image ranks after ELIP re-scores each caption's first-stage top `top` (exact
/// scores over `problem`): a gold image within the top `top` takes its new place there (ties
/// ranked pessimistically); one below keeps its first-stage rank. `pixels(image)` preprocesses
/// a gallery image; each is decoded once, in parallel.
pub(crate) fn reranked_text_ranks(
    encoder: &DualEncoder,
    mapper: &ElipMapper,
    problem: &Problem<'_>,
    first: &[Option<u32>],
    top: usize,
    pixels: impl Fn(u32) -> Result<Vec<f32>> + Sync,
    progress: bool,
) -> Result<Vec<Option<u32>>> {
    let queries: Vec<usize> = (0..problem.texts.len())
        .filter(|&t| first[t].is_some_and(|r| (r as usize) <= top))
        .collect();
    let texts: Vec<&[f32]> = queries.iter().map(|&t| problem.texts[t]).collect();
    let candidates = exact_top_k(&texts, &problem.images, top);
    let mut needed: Vec<u32> = candidates.iter().flatten().copied().collect();
    needed.sort_unstable();
    needed.dedup();
    let cache: HashMap<u32, Vec<f32>> = needed
        .par_iter()
        .map(|&i| Ok((i, pixels(i)?)))
        .collect::<Result<_>>()?;
    let bar = crate::exec::progress(progress);
    bar.set_length(queries.len() as u64);
    bar.set_message("re-ranking");
    let mut ranks = first.to_vec();
    for (&t, top_k) in queries.iter().zip(&candidates) {
        let Some(gold) = problem.gold[t] else {
            continue;
        };
        let Some(at) = top_k.iter().position(|&i| i == gold) else {
            continue;
        };
        // Borrowed from the cache: the candidates' pixels are not copied per query.
        let batch: Vec<&[f32]> = top_k.iter().map(|i| cache[i].as_slice()).collect();
        let s = scores(encoder, mapper, problem.texts[t], &batch)?;
        let ahead = s
            .iter()
            .enumerate()
            .filter(|&(j, &x)| j != at && x >= s[at])
            .count();
        ranks[t] = Some(ahead as u32 + 1);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(ranks)
}

/// A validation split prepared once: the frozen backbone's embeddings, its first-stage ranks,
/// and the images' pixels.
struct Validation {
    texts: Vec<Vec<f32>>,
    images: Vec<Vec<f32>>,
    gold: Vec<Option<u32>>,
    first: Vec<Option<u32>>,
    pixels: Vec<Vec<f32>>,
}

impl Validation {
    fn new(encoder: &DualEncoder, data: &PairData) -> Result<Self> {
        let texts = embed_captions(encoder, data)?;
        // Decoded once: the same pixels give the first stage's embeddings and the candidates.
        let pixels: Vec<Vec<f32>> = data
            .images
            .par_iter()
            .map(|i| Ok(i.pixels(encoder)?.into_owned()))
            .collect::<Result<_>>()?;
        let mut images = Vec::with_capacity(pixels.len());
        for chunk in pixels.chunks(EMBED_BATCH) {
            images.extend(encoder.embed_pixels(chunk)?);
        }
        let gold = data.gold();
        let first = exact_ranks(&Problem {
            texts: texts.iter().map(Vec::as_slice).collect(),
            images: images.iter().map(Vec::as_slice).collect(),
            gold: gold.clone(),
        })
        .text_to_image;
        Ok(Validation {
            texts,
            images,
            gold,
            first,
            pixels,
        })
    }

    fn problem(&self) -> Problem<'_> {
        Problem {
            texts: self.texts.iter().map(Vec::as_slice).collect(),
            images: self.images.iter().map(Vec::as_slice).collect(),
            gold: self.gold.clone(),
        }
    }

    /// `metric` of the first stage alone.
    fn baseline(&self, metric: EvalMetric) -> Option<f64> {
        rank_metric(metric, queries(&self.first).into_iter())
    }

    /// `metric` after re-ranking the top `top` with `mapper`.
    fn score(
        &self,
        encoder: &DualEncoder,
        mapper: &ElipMapper,
        metric: EvalMetric,
        top: usize,
    ) -> Result<Option<f64>> {
        let ranks = reranked_text_ranks(
            encoder,
            mapper,
            &self.problem(),
            &self.first,
            top,
            |i| Ok(self.pixels[i as usize].clone()),
            false,
        )?;
        Ok(rank_metric(metric, queries(&ranks).into_iter()))
    }
}

/// Text queries (captions with an image) as the rank of their one relevant item.
fn queries(ranks: &[Option<u32>]) -> Vec<&[u32]> {
    ranks.iter().flatten().map(std::slice::from_ref).collect()
}

fn option_flag(opts: &std::collections::BTreeMap<String, Literal>, key: &str) -> Result<bool> {
    match opts.get(key) {
        None => Ok(false),
        Some(Literal::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::Invalid(format!(
            "option {key} expects true or false, got {other}"
        ))),
    }
}

fn option_count(
    opts: &std::collections::BTreeMap<String, Literal>,
    key: &str,
    default: usize,
) -> Result<usize> {
    match opts.get(key) {
        None => Ok(default),
        Some(Literal::Int(i)) if *i >= 1 => Ok(*i as usize),
        Some(other) => Err(Error::Invalid(format!(
            "option {key} expects a whole number of at least 1, got {other}"
        ))),
    }
}

/// `TRAIN ELIP`: trains a mapper over the backbone on the collection's pairs and registers the
/// best one as `name`.
pub(crate) fn train(db: &Database, plan: &TrainElipPlan) -> Result<ResultSet> {
    check_name(&plan.name)?;
    let target = registry_path(db, &plan.name);
    if target.exists() {
        return Err(Error::Invalid(format!(
            "model '{}' already exists in this database; DROP MODEL '{}' first or pick another name",
            plan.name, plan.name
        )));
    }
    let (mut config, metric, _, opts) =
        training_config(&plan.options, &ELIP_OPTIONS, db.options.progress)?;
    if metric == EvalMetric::MeanSimilarity {
        return Err(Error::Invalid(
            "ELIP validates a ranking metric (recall@k, mrr, ndcg@k, median_rank)".into(),
        ));
    }
    // ELIP's own defaults where the statement is silent: the mapper learns from scratch (the
    // paper's lr 1e-3), and a batch costs B x B image passes.
    if !opts.contains_key("lr") {
        config.optimiser.lr = 1e-3;
    }
    if !opts.contains_key("batch_size") {
        config.batch_size = 16;
    }
    // Mining is the paper's recipe: on unless turned off.
    let hard_negatives =
        !opts.contains_key("hard_negatives") || option_flag(&opts, "hard_negatives")?;
    let snap = db.snapshot()?;
    let c = snap.collection(&plan.collection)?;
    let locator = match &plan.backbone {
        Some(b) => b.clone(),
        None => crate::exec::collection_model(db, c)?
            .map(|m| m.key.clone())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "collection {} has no model; name the backbone with USING MODEL '<model>'",
                    plan.collection
                ))
            })?,
    };
    let backbone = db.models.load(&locator)?;
    let encoder = &backbone.encoder;
    let (width, _) = encoder.model.vision_shape();
    let prompts = option_count(&opts, "prompts", 10)?;
    let hidden = option_count(&opts, "hidden", width.min(1024))?;
    let top = option_count(&opts, "top", VALIDATION_TOP)?;
    let mut elip =
        ElipConfig::for_model(&encoder.model, prompts, hidden, option_flag(&opts, "deep")?)?;
    if let Some(v) = opts.get("dropout") {
        elip.dropout = match v {
            Literal::Float(f) if (0.0..1.0).contains(f) => *f,
            Literal::Int(0) => 0.0,
            other => {
                return Err(Error::Invalid(format!(
                    "option dropout expects a number in [0, 1), got {other}"
                )));
            }
        };
    }

    let schema = &c.schema;
    let sql = |p: &Option<mirante_query::Predicate>| {
        p.as_ref().map(|p| crate::db::predicate_sql(schema, p))
    };
    let (mut train, train_ids) = pairs(db, &plan.collection, plan.filter.as_ref(), encoder)?;
    if train.images.len() < 2 {
        return Err(Error::Invalid(format!(
            "{} training rows with an image and captions in {}; ELIP needs at least 2",
            train.images.len(),
            plan.collection
        )));
    }
    let mut mining = None;
    if hard_negatives {
        let (found, how) = mutual_neighbours(
            db,
            (&plan.collection, plan.filter.as_ref()),
            encoder,
            &backbone.fingerprint,
            &train,
            &train_ids,
        )?;
        train.hard_pairs = found;
        mining = Some(how);
    }
    let validation = match &plan.validate {
        Some(p) => Some(Validation::new(
            encoder,
            &pairs(db, &plan.collection, Some(p), encoder)?.0,
        )?),
        None => None,
    };
    let baseline = validation.as_ref().and_then(|v| v.baseline(metric));

    let partial = partial_folder(db, &plan.name)?;
    let mapper = ElipMapper::new(elip, config.seed, &db.options.device)?;
    let report =
        training_elip::train(
            encoder,
            &mapper,
            &train,
            &config,
            &partial,
            |m| match &validation {
                Some(v) => v.score(encoder, m, metric, top).map_err(|e| {
                    mirante_training::Error::InvalidArgument(format!("validation failed: {e}"))
                }),
                None => Ok(None),
            },
        )?;
    let lineage = run_lineage(
        serde_json::json!({
            "name": plan.name,
            "family": "elip",
            "base": backbone.key,
            "base_fingerprint": backbone.fingerprint,
            "collection": plan.collection,
            "version": snap.version(),
            "filter": sql(&plan.filter),
            "validate": sql(&plan.validate),
            "validation_top": top,
            "baseline_validation": baseline,
        }),
        &train,
        mining,
        validation.as_ref().map(|v| v.images.len()),
        &plan.options,
        metric,
        &report,
    );
    commit_model(&partial, &target, &lineage)?;
    let mut out = epochs_result(&report, &format!("reranked {metric}"));
    let validated = match (report.best_validation, baseline) {
        (Some(v), Some(b)) => {
            format!(", validation {metric} {v:.4} re-ranked vs {b:.4} without (top {top})")
        }
        _ => String::new(),
    };
    out.status = Some(format!(
        "trained ELIP '{}' over {} on {} rows of {} ({}{validated}); use SEARCH {} BY TEXT \
         '...' RERANK WITH ELIP '{}'",
        plan.name,
        backbone.key,
        train.images.len(),
        plan.collection,
        if report.best_epoch == 0 {
            "no epoch beat the untrained mapper; kept the last".to_string()
        } else {
            format!("kept epoch {}", report.best_epoch)
        },
        plan.collection,
        plan.name
    ));
    Ok(out)
}
