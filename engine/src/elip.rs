//! `TRAIN ELIP` and `RERANK WITH ELIP`: a mapping network (crate `mirante-training`'s
//! [`mirante_training::elip`]) trained on a collection's pairs over a frozen backbone, kept in
//! the model registry (`<database>/models/<name>/`: `elip_config.json`, `model.safetensors`,
//! and the lineage), and used to re-rank the first stage's top-K images of text queries in
//! `SEARCH` and `EVALUATE`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mirante_query::{EvalMetric, Literal, TrainPlan};
use mirante_training::DualEncoder;
use mirante_training::elip::{self as training_elip, ElipConfig, ElipMapper, Negatives};
use mirante_training::finetune::PairData;
use rayon::prelude::*;

use crate::db::Database;
use crate::error::{Error, Result};
use crate::finetune::{
    LINEAGE, check_name, commit_model, embed_captions, embed_images, epochs_result,
    mutual_neighbours, new_model_path, option_flag, pairs, partial_folder, registry_path,
    run_lineage, training_config,
};
use crate::metrics::rank_metric;
use crate::ranking::{Problem, exact_ranks, exact_top_k, scored_top_k};
use crate::result::{Cell, ResultSet};

/// The options `TRAIN ELIP` takes: fine-tuning's loop settings and the mapper's shape.
const ELIP_OPTIONS: [&str; 20] = [
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
    "prompt_init",
    "dropout",
    "top",
    "negatives",
    "fusion",
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
    /// The weight of ELIP's score against the first stage's (1: ELIP alone), from the lineage.
    pub fusion: f64,
}

/// ELIP models loaded by an open database, so each re-ranked query does not read its mapper
/// again. An entry is used while its files' sizes and modification times are unchanged (a
/// model dropped and trained again under the same name is read anew).
#[derive(Default)]
pub(crate) struct ElipCache(Mutex<ElipEntries>);

/// By registry folder: the files' stamps when loaded, and the model.
type ElipEntries = HashMap<PathBuf, (Vec<FileStamp>, Arc<LoadedElip>)>;

impl std::fmt::Debug for ElipCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ElipCache")
    }
}

impl ElipCache {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ElipEntries>> {
        self.0
            .lock()
            .map_err(|_| Error::Invalid("the ELIP model cache was poisoned".into()))
    }
}

type FileStamp = Option<(std::time::SystemTime, u64)>;

fn stamps(folder: &Path) -> Vec<FileStamp> {
    [
        training_elip::CONFIG_FILE,
        training_elip::WEIGHTS_FILE,
        LINEAGE,
    ]
    .iter()
    .map(|f| {
        let m = std::fs::metadata(folder.join(f)).ok()?;
        Some((m.modified().ok()?, m.len()))
    })
    .collect()
}

/// Registry ELIP model `name`, from the database's cache or loaded.
pub(crate) fn load(db: &Database, name: &str) -> Result<Arc<LoadedElip>> {
    check_name(name)?;
    let path = registry_path(db, name);
    if !path.join(training_elip::CONFIG_FILE).is_file() {
        return Err(Error::Invalid(format!(
            "'{name}' is not an ELIP model of this database; train one with TRAIN ELIP ON \
             <collection> ... AS '{name}' (SHOW MODELS lists the registry)"
        )));
    }
    let stamp = stamps(&path);
    if let Some((s, loaded)) = db.elips.lock()?.get(&path)
        && *s == stamp
    {
        return Ok(Arc::clone(loaded));
    }
    let loaded = Arc::new(read(db, name, &path)?);
    db.elips.lock()?.insert(path, (stamp, Arc::clone(&loaded)));
    Ok(loaded)
}

/// Reads ELIP model `name` from its registry folder `path`.
fn read(db: &Database, name: &str, path: &Path) -> Result<LoadedElip> {
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
        mapper: ElipMapper::load(path, &db.options.device)?,
        backbone: text("base"),
        backbone_fingerprint: text("base_fingerprint"),
        fusion: lineage["fusion"].as_f64().unwrap_or(1.0),
    })
}

impl LoadedElip {
    /// The fusion weight a re-ranking uses: the statement's `FUSION`, else the model's.
    pub fn fusion_for(&self, r: &mirante_query::RerankPlan) -> f64 {
        r.fusion.unwrap_or(self.fusion)
    }

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
    backbone: &crate::models::LoadedModel,
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
    progress: bool,
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
    let bar = crate::exec::progress(progress);
    bar.set_length(queries.len() as u64);
    bar.set_message("re-ranking");
    let mut ranks = vec![first.to_vec(); fusions.len()];
    for (&t, top_k) in queries.iter().zip(&candidates) {
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

/// A validation split prepared once: the frozen backbone's embeddings, its first-stage ranks,
/// and the images' pixels.
struct Validation {
    texts: Vec<Vec<f32>>,
    images: Vec<Vec<f32>>,
    gold: Vec<Option<u32>>,
    first: Vec<Option<u32>>,
    pixels: Vec<Arc<Vec<f32>>>,
}

impl Validation {
    fn new(encoder: &DualEncoder, data: &PairData) -> Result<Self> {
        let texts = embed_captions(encoder, data)?;
        // Decoded once: the same pixels give the first stage's embeddings and the candidates.
        let pixels: Vec<Arc<Vec<f32>>> = data
            .images
            .par_iter()
            .map(|i| Ok(Arc::new(i.pixels(encoder)?.into_owned())))
            .collect::<Result<_>>()?;
        let mut images = Vec::with_capacity(pixels.len());
        for chunk in pixels.chunks(EMBED_BATCH) {
            let chunk: Vec<&[f32]> = chunk.iter().map(|p| p.as_slice()).collect();
            images.extend(encoder.embed_pixels(&chunk)?);
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

    /// `metric` after re-ranking the top `top` with `mapper`, per fusion weight of `fusions`.
    fn scores(
        &self,
        encoder: &DualEncoder,
        mapper: &ElipMapper,
        metric: EvalMetric,
        (top, fusions): (usize, &[f64]),
    ) -> Result<Vec<Option<f64>>> {
        let ranks = reranked_text_ranks(
            encoder,
            mapper,
            &self.problem(),
            &self.first,
            (top, fusions),
            |i| Ok(Arc::clone(&self.pixels[i as usize])),
            false,
        )?;
        Ok(ranks
            .iter()
            .map(|r| rank_metric(metric, queries(r).into_iter()))
            .collect())
    }
}

/// Text queries (captions with an image) as the rank of their one relevant item.
fn queries(ranks: &[Option<u32>]) -> Vec<&[u32]> {
    ranks.iter().flatten().map(std::slice::from_ref).collect()
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

/// Per training caption, the `n` images other than its own that the backbone ranks highest
/// (exact scores over the training rows): the confusions re-ranking is there to undo.
fn retrieved_negatives(
    encoder: &DualEncoder,
    data: &PairData,
    n: usize,
) -> Result<Vec<Vec<usize>>> {
    let images = embed_images(encoder, data)?;
    let texts = embed_captions(encoder, data)?;
    let top = exact_top_k(
        &texts.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        &images.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        n + 1,
    );
    Ok(top
        .into_iter()
        .zip(data.gold())
        .map(|(ranked, gold)| {
            ranked
                .into_iter()
                .filter(|&i| Some(i) != gold)
                .take(n)
                .map(|i| i as usize)
                .collect()
        })
        .collect())
}

/// `TRAIN ELIP`: trains a mapper over the backbone on the collection's pairs and registers the
/// best one as `name`.
pub(crate) fn train(db: &Database, plan: &TrainPlan, backbone: Option<&str>) -> Result<ResultSet> {
    let target = new_model_path(db, &plan.name)?;
    let (mut config, metric, opts) =
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
    let locator = match backbone {
        Some(b) => b.to_string(),
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

    // 'patch': prompts start as a typical patch token, so the untrained mapper leaves the
    // ranking nearly intact; 'zero': the reference's near-zero start.
    let anchored = match opts.get("prompt_init") {
        None => true,
        Some(v) => match crate::exec::string_option(v, "prompt_init")?.as_str() {
            "patch" => true,
            "zero" => false,
            other => {
                return Err(Error::Invalid(format!(
                    "option prompt_init is 'patch' (prompts start as the mean patch token) or \
                     'zero' (the reference's near-zero start), got '{other}'"
                )));
            }
        },
    };

    let schema = &c.schema;
    let sql = |p: &Option<mirante_query::Predicate>| {
        p.as_ref().map(|p| crate::db::predicate_sql(schema, p))
    };
    let (mut train, train_ids) =
        pairs(db, (&plan.collection, plan.filter.as_ref()), encoder, None)?;
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
            &pairs(db, (&plan.collection, Some(p)), encoder, None)?.0,
        )?),
        None => None,
    };
    let baseline = validation.as_ref().and_then(|v| v.baseline(metric));

    let retrieved = match opts.get("negatives") {
        None => None,
        Some(_) => {
            let n = option_count(&opts, "negatives", 1)?;
            if n >= train.images.len() {
                return Err(Error::Invalid(format!(
                    "option negatives asks for {n} retrieved negatives per caption, but the \
                     training rows hold only {} images",
                    train.images.len()
                )));
            }
            Some(retrieved_negatives(encoder, &train, n)?)
        }
    };
    let negatives = match &retrieved {
        Some(lists) => Negatives::Retrieved(lists),
        None => Negatives::InBatch,
    };

    let fixed_fusion = match opts.get("fusion") {
        None => None,
        Some(Literal::Float(w)) if (0.0..=1.0).contains(w) => Some(*w),
        Some(Literal::Int(w @ (0 | 1))) => Some(*w as f64),
        Some(other) => {
            return Err(Error::Invalid(format!(
                "option fusion expects a weight in [0, 1] (1: ELIP's score alone), got {other}"
            )));
        }
    };
    // Tuned on validation unless fixed; the grid ends with ELIP alone, reported beside.
    let fusions: Vec<f64> = match (fixed_fusion, &validation) {
        (Some(w), _) => vec![w],
        (None, Some(_)) => (0..=10).map(|i| f64::from(i) / 10.0).collect(),
        (None, None) => vec![1.0],
    };
    // Per validation (the untrained mapper first, then each epoch): the chosen weight and
    // ELIP's score alone.
    let mut chosen: Vec<(f64, Option<f64>)> = Vec::new();

    let partial = partial_folder(db, &plan.name)?;
    let mapper = ElipMapper::new(elip, config.seed, &db.options.device)?;
    if anchored {
        mapper.anchor_prompts(encoder, &train)?;
    }
    let report = training_elip::train(
        encoder,
        &mapper,
        (&train, negatives),
        &config,
        &partial,
        |m| {
            let Some(v) = &validation else {
                return Ok(None);
            };
            let per = v.scores(encoder, m, metric, (top, &fusions)).map_err(|e| {
                mirante_training::Error::InvalidArgument(format!("validation failed: {e}"))
            })?;
            // Ties keep the lighter fusion weight.
            let mut best = 0;
            for (i, s) in per.iter().enumerate() {
                if s.unwrap_or(f64::MIN) > per[best].unwrap_or(f64::MIN) {
                    best = i;
                }
            }
            let alone = (fusions.last() == Some(&1.0))
                .then(|| per[per.len() - 1])
                .flatten();
            chosen.push((fusions[best], alone));
            Ok(per[best])
        },
    )?;
    // The saved mapper: the best epoch's, or the last one when none beat the untrained mapper.
    let kept_validation = if report.best_epoch == 0 {
        chosen.len().saturating_sub(1)
    } else {
        report.best_epoch
    };
    let fusion = chosen.get(kept_validation).map_or(fusions[0], |&(w, _)| w);
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
            "fusion": fusion,
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
    if validation.is_some() {
        out.columns
            .extend(["fusion".to_string(), format!("ELIP alone {metric}")]);
        for (row, &(w, alone)) in out.rows.iter_mut().zip(chosen.iter().skip(1)) {
            row.push(Cell::Float(w));
            row.push(alone.map_or(Cell::Null, Cell::Float));
        }
    }
    let kept_score = if report.best_epoch == 0 {
        report.epochs.last().and_then(|e| e.validation)
    } else {
        report.best_validation
    };
    let validated = match (kept_score, baseline) {
        (Some(v), Some(b)) => format!(
            ", validation {metric} {v:.4} re-ranked (fusion {fusion}) vs {b:.4} without (top \
             {top})"
        ),
        _ => format!(", fusion {fusion}"),
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
