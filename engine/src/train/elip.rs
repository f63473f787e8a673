//! `TRAIN ELIP`: trains an ELIP mapper (crate `mirante-training`'s
//! [`mirante_training::elip`]) on a collection's pairs over a frozen backbone, validates it by
//! re-ranking each validation caption's first-stage top K (tuning the fusion weight there), and
//! registers it (`elip_config.json`, `model.safetensors`, the lineage). Using it is
//! [`crate::rerank`].

use std::sync::Arc;

use mirante_query::options::{ElipOptions, PromptInit};
use mirante_query::{EvalMetric, TrainPlan};
use mirante_training::elip::{self as training_elip, ElipConfig, ElipMapper, Negatives};
use mirante_training::finetune::{FinetuneReport, PairData};
use mirante_training::{DualEncoder, Progress};
use rayon::prelude::*;

use super::data::{embed_captions, embed_images};
use super::{DataSpec, Job, epoch_rows};
use crate::cancel::CancelToken;
use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result};
use crate::metrics::rank_metric;
use crate::models::LoadedModel;
use crate::output::TrainingRun;
use crate::ranking::{Problem, exact_ranks, exact_top_k};
use crate::rerank::reranked_text_ranks;
use crate::spaces::Spaces;

/// Validation images embedded per batch.
const EMBED_BATCH: usize = 32;

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
        cancel: &CancelToken,
    ) -> Result<Vec<Option<f64>>> {
        let ranks = reranked_text_ranks(
            encoder,
            mapper,
            &self.problem(),
            &self.first,
            (top, fusions),
            |i| Ok(Arc::clone(&self.pixels[i as usize])),
            (&Progress::Hidden, cancel),
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

/// The fusion weights a run tries, and per validation (the untrained mapper first, then each
/// epoch) the one chosen with ELIP's score alone beside it.
struct FusionTuning {
    /// Tuned on validation unless fixed; the grid ends with ELIP alone, reported beside.
    weights: Vec<f64>,
    chosen: Vec<(f64, Option<f64>)>,
}

impl FusionTuning {
    fn new(fixed: Option<f64>, validated: bool) -> Self {
        let weights = match (fixed, validated) {
            (Some(w), _) => vec![w],
            (None, true) => (0..=10).map(|i| f64::from(i) / 10.0).collect(),
            (None, false) => vec![1.0],
        };
        FusionTuning {
            weights,
            chosen: Vec::new(),
        }
    }

    /// Records one validation's metric per weight; returns the best (ties keep the lighter
    /// weight).
    fn record(&mut self, per: &[Option<f64>]) -> Option<f64> {
        let mut best = 0;
        for (i, s) in per.iter().enumerate() {
            if s.unwrap_or(f64::MIN) > per[best].unwrap_or(f64::MIN) {
                best = i;
            }
        }
        let alone = (self.weights.last() == Some(&1.0))
            .then(|| per[per.len() - 1])
            .flatten();
        self.chosen.push((self.weights[best], alone));
        per[best]
    }

    /// The weight of the saved mapper: the best epoch's, or the last one's when none beat the
    /// untrained mapper.
    fn kept(&self, report: &FinetuneReport) -> f64 {
        let at = if report.best_epoch == 0 {
            self.chosen.len().saturating_sub(1)
        } else {
            report.best_epoch
        };
        self.chosen.get(at).map_or(self.weights[0], |&(w, _)| w)
    }
}

/// The backbone: the one named, else the collection's active model.
fn backbone(db: &Database, plan: &TrainPlan, named: Option<&str>) -> Result<Arc<LoadedModel>> {
    if let Some(b) = named {
        return db.models.load(b);
    }
    let snap = db.snapshot()?;
    let c = snap.collection(&plan.collection)?;
    Spaces::new(db, c).active_model()?.ok_or_else(|| {
        Error::Invalid(format!(
            "collection {} has no model; name the backbone with USING MODEL '<model>'",
            plan.collection
        ))
    })
}

/// The mapper's shape for `encoder` from the options.
fn mapper_config(encoder: &DualEncoder, options: &ElipOptions) -> Result<ElipConfig> {
    let (width, _) = encoder.model.vision_shape();
    let mut elip = ElipConfig::for_model(
        &encoder.model,
        options.prompts,
        options.hidden.unwrap_or(width.min(1024)),
        options.deep,
    )?;
    elip.dropout = options.dropout;
    Ok(elip)
}

/// `negatives = N`: each training caption's retrieved negatives.
fn retrieved(
    options: &ElipOptions,
    encoder: &DualEncoder,
    train: &PairData,
) -> Result<Option<Vec<Vec<usize>>>> {
    match options.negatives {
        None => Ok(None),
        Some(n) if n >= train.images.len() => Err(Error::Invalid(format!(
            "option negatives asks for {n} retrieved negatives per caption, but the training \
             rows hold only {} images",
            train.images.len()
        ))),
        Some(n) => Ok(Some(retrieved_negatives(encoder, train, n)?)),
    }
}

/// `TRAIN ELIP`: trains a mapper over the backbone on the collection's pairs and registers the
/// best one as the plan's name.
pub(crate) fn run(
    db: &Database,
    plan: &TrainPlan,
    named_backbone: Option<&str>,
    options: &ElipOptions,
    exec: &ExecOptions,
) -> Result<TrainingRun> {
    let t = &options.training;
    let metric = t.metric;
    // Before any model is loaded: a taken or invalid name fails at once.
    db.registry().check_new(&plan.name)?;
    let backbone = backbone(db, plan, named_backbone)?;
    let encoder = &backbone.encoder;
    let elip = mapper_config(encoder, options)?;
    let job = Job::prepare(
        db,
        plan,
        exec,
        DataSpec {
            encoder,
            mine_with: options
                .hard_negatives
                .then_some(backbone.fingerprint.as_str()),
            swap_seed: None,
            what: "ELIP",
        },
    )?;
    let validation = match &job.validation {
        Some(v) => Some(Validation::new(encoder, v)?),
        None => None,
    };
    let baseline = validation.as_ref().and_then(|v| v.baseline(metric));
    let retrieved = retrieved(options, encoder, &job.train)?;
    let negatives = match &retrieved {
        Some(lists) => Negatives::Retrieved(lists),
        None => Negatives::InBatch,
    };
    let mut tuning = FusionTuning::new(options.fusion, validation.is_some());
    let mapper = ElipMapper::new(elip, t.seed, &db.options.device)?;
    if options.prompt_init == PromptInit::Patch {
        // Prompts start as a typical patch token, so the untrained mapper leaves the ranking
        // nearly intact.
        mapper.anchor_prompts(encoder, &job.train)?;
    }
    let top = options.top;
    let report = training_elip::train(
        encoder,
        &mapper,
        (&job.train, negatives),
        &job.config(t),
        job.install.folder(),
        |m| -> Result<Option<f64>> {
            let Some(v) = &validation else {
                return Ok(None);
            };
            let per = v.scores(encoder, m, metric, (top, &tuning.weights), &exec.cancel)?;
            Ok(tuning.record(&per))
        },
    )?;
    let fusion = tuning.kept(&report);
    let mut lineage = job.lineage(("elip", &backbone.key, &backbone.fingerprint), t, &report)?;
    lineage.validation_top = Some(top);
    lineage.baseline_validation = baseline;
    lineage.fusion = Some(fusion);
    let mut epochs = epoch_rows(&report);
    if validation.is_some() {
        for (row, &tuned) in epochs.iter_mut().zip(tuning.chosen.iter().skip(1)) {
            row.fusion = Some(tuned);
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
    let status = format!(
        "trained ELIP '{}' over {} on {} rows of {} ({}{validated}); use SEARCH {} BY TEXT \
         '...' RERANK WITH ELIP '{}'",
        plan.name,
        backbone.key,
        job.train.images.len(),
        plan.collection,
        if report.best_epoch == 0 {
            "no epoch beat the untrained mapper; kept the last".to_string()
        } else {
            format!("kept epoch {}", report.best_epoch)
        },
        plan.collection,
        plan.name
    );
    job.finish(&lineage, epochs, format!("reranked {metric}"), status)
}
