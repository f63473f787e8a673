//! `FINETUNE`, `DROP MODEL`, `EXPORT MODEL`: fine-tuning a model on a collection's pairs and
//! the database's model registry (`<database>/models/<name>/`, a Hugging Face checkpoint plus
//! `mirante_model.json` with its lineage).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use mirante_query::{EvalMetric, Literal, TrainPlan};
use mirante_storage::RowRef;
use mirante_training::DualEncoder;
use mirante_training::finetune::{
    FinetuneConfig, Freeze, PairData, Precision, TrainImage, finetune,
};
use mirante_training::negatives::word_swaps;
use mirante_training::train::{AdamWConfig, Loss, Trainable};
use rand::SeedableRng;
use rayon::prelude::*;

use crate::db::{Database, row_filter};
use crate::error::{Error, Result};
use crate::exec::{options_map, string_option};
use crate::metrics::rank_metric;
use crate::ranking::{Problem, exact_ranks};
use crate::result::{Cell, ResultSet};

/// The registry folder of a database.
pub(crate) const REGISTRY: &str = "models";
/// The lineage file of a registry model.
pub(crate) const LINEAGE: &str = "mirante_model.json";
/// Images and captions embedded per batch during validation.
const VALIDATION_BATCH: usize = 32;

/// Names a registry model may have: they become folder names.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "model name '{name}' must be 1-100 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// The registry folder of model `name` in `db`.
pub(crate) fn registry_path(db: &Database, name: &str) -> PathBuf {
    db.path().join(REGISTRY).join(name)
}

fn number(opts: &std::collections::BTreeMap<String, Literal>, key: &str) -> Result<Option<f64>> {
    match opts.get(key) {
        None => Ok(None),
        Some(Literal::Int(i)) => Ok(Some(*i as f64)),
        Some(Literal::Float(f)) => Ok(Some(*f)),
        Some(other) => Err(Error::Invalid(format!(
            "option {key} expects a number, got {}",
            other.type_name()
        ))),
    }
}

/// A `true`/`false` option, false when absent.
pub(crate) fn option_flag(
    opts: &std::collections::BTreeMap<String, Literal>,
    key: &str,
) -> Result<bool> {
    match opts.get(key) {
        None => Ok(false),
        Some(Literal::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::Invalid(format!(
            "option {key} expects true or false, got {other}"
        ))),
    }
}

fn count(
    opts: &std::collections::BTreeMap<String, Literal>,
    key: &str,
    min: usize,
) -> Result<Option<usize>> {
    match opts.get(key) {
        None => Ok(None),
        Some(Literal::Int(i)) if *i >= min as i64 => Ok(Some(*i as usize)),
        Some(other) => Err(Error::Invalid(format!(
            "option {key} expects a whole number of at least {min}, got {other}"
        ))),
    }
}

/// The options FINETUNE takes.
const FINETUNE_OPTIONS: [&str; 15] = [
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "clip_norm",
    "accumulation",
    "loss",
    "freeze",
    "seed",
    "patience",
    "metric",
    "hard_negatives",
    "text_negatives",
    "precision",
];

/// A training run's settings from `WITH (...)` (the keys `allowed` lists), with the validation
/// metric and the options map for the caller's own keys.
pub(crate) fn training_config(
    options: &mirante_query::ast::Options,
    allowed: &[&str],
    progress: bool,
) -> Result<(
    FinetuneConfig,
    EvalMetric,
    std::collections::BTreeMap<String, Literal>,
)> {
    let opts = options_map(options, allowed)?;
    let mut c = FinetuneConfig {
        progress,
        ..FinetuneConfig::default()
    };
    let defaults = AdamWConfig::default();
    c.epochs = count(&opts, "epochs", 1)?.unwrap_or(c.epochs);
    c.batch_size = count(&opts, "batch_size", 2)?.unwrap_or(c.batch_size);
    c.accumulation = count(&opts, "accumulation", 1)?.unwrap_or(c.accumulation);
    c.warmup_steps = count(&opts, "warmup_steps", 0)?.unwrap_or(c.warmup_steps);
    c.patience = count(&opts, "patience", 1)?.unwrap_or(c.patience);
    c.seed = count(&opts, "seed", 0)?.map_or(c.seed, |s| s as u64);
    c.optimiser.lr = number(&opts, "lr")?.unwrap_or(defaults.lr);
    c.optimiser.weight_decay = number(&opts, "weight_decay")?.unwrap_or(defaults.weight_decay);
    if !(c.optimiser.lr > 0.0 && c.optimiser.lr.is_finite()) {
        return Err(Error::Invalid(format!(
            "option lr must be a positive number, got {}",
            c.optimiser.lr
        )));
    }
    if let Some(clip) = number(&opts, "clip_norm")? {
        c.clip_norm = (clip > 0.0).then_some(clip);
    }
    if let Some(v) = opts.get("loss") {
        c.loss = Some(match string_option(v, "loss")?.as_str() {
            "infonce" | "clip" => Loss::InfoNce,
            "sigmoid" | "siglip" => Loss::Sigmoid,
            other => {
                return Err(Error::Invalid(format!(
                    "option loss is 'infonce' or 'sigmoid', got '{other}'"
                )));
            }
        });
    }
    if let Some(v) = opts.get("freeze") {
        let s = string_option(v, "freeze")?;
        c.freeze = Freeze::parse(&s).ok_or_else(|| {
            Error::Invalid(format!(
                "option freeze is 'none', 'vision', 'text' or 'towers' (only the projections \
                 train), got '{s}'"
            ))
        })?;
    }
    if let Some(v) = opts.get("precision") {
        let s = string_option(v, "precision")?;
        c.precision = Some(Precision::parse(&s).ok_or_else(|| {
            Error::Invalid(format!(
                "option precision is 'fp32' or 'bf16' (mixed precision: bf16 matrix products, \
                 f32 weights), got '{s}'"
            ))
        })?);
    }
    let metric = match opts.get("metric") {
        Some(v) => string_option(v, "metric")?
            .parse::<EvalMetric>()
            .map_err(Error::Invalid)?,
        None => EvalMetric::Recall(1),
    };
    Ok((c, metric, opts))
}

/// When FINETUNE mines hard-negative pairs (`hard_negatives = false | true | 'epoch'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mining {
    Off,
    /// Once, with the base model (through the collection's index when it holds its vectors).
    Once,
    /// Once with the base model, then again before every later epoch with the weights being
    /// trained, so the pairs stay confusable as the model learns to tell the first ones apart.
    EveryEpoch,
}

fn mining_option(opts: &std::collections::BTreeMap<String, Literal>) -> Result<Mining> {
    match opts.get("hard_negatives") {
        None | Some(Literal::Bool(false)) => Ok(Mining::Off),
        Some(Literal::Bool(true)) => Ok(Mining::Once),
        Some(Literal::String(s)) if s == "epoch" => Ok(Mining::EveryEpoch),
        Some(other) => Err(Error::Invalid(format!(
            "option hard_negatives expects true (mined once with the base model), 'epoch' \
             (mined again before every epoch with the weights being trained) or false, got \
             {other}"
        ))),
    }
}

/// How many word-swapped copies of each caption [`pairs`] prepares as negative texts when
/// asked to: each step draws one of them per pair.
const SWAPS_PER_CAPTION: usize = 8;

/// The pairs of the rows that pass `filter` and have an image and captions, preprocessed for
/// `model` (images decoded in parallel), with the ids of those rows in the same order. With
/// `swap_seed`, each caption also gets word-swapped copies of itself as negative texts
/// (NegCLIP), drawn with that seed.
pub(crate) fn pairs(
    db: &Database,
    (collection, filter): (&str, Option<&mirante_query::Predicate>),
    encoder: &DualEncoder,
    swap_seed: Option<u64>,
) -> Result<(PairData, Vec<u64>)> {
    let snap = db.snapshot()?;
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
    db: &Database,
    (collection, filter): (&str, Option<&mirante_query::Predicate>),
    encoder: &DualEncoder,
    base_fingerprint: &str,
    data: &PairData,
    ids: &[u64],
) -> Result<(Vec<(usize, usize)>, &'static str)> {
    Ok(
        match index_neighbours(db, (collection, filter), base_fingerprint, ids)? {
            Some(nearest) => (mutual_pairs(&nearest), "index"),
            None => (exact_mutual_neighbours(encoder, data)?, "exact"),
        },
    )
}

/// Pairs of the data's images that are each other's nearest neighbour under the encoder's
/// current weights, by exact scores.
fn exact_mutual_neighbours(encoder: &DualEncoder, data: &PairData) -> Result<Vec<(usize, usize)>> {
    let images = embed_images(encoder, data)?;
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    let nearest: Vec<Option<usize>> = crate::ranking::exact_top_k(&refs, &refs, 2)
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
    db: &Database,
    (collection, filter): (&str, Option<&mirante_query::Predicate>),
    base_fingerprint: &str,
    ids: &[u64],
) -> Result<Option<Vec<Option<usize>>>> {
    let snap = db.snapshot()?;
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
fn score(model: &Trainable, data: &PairData, metric: EvalMetric) -> Result<Option<f64>> {
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

/// Where registry model `name`, which must not exist yet, will live.
pub(crate) fn new_model_path(db: &Database, name: &str) -> Result<std::path::PathBuf> {
    check_name(name)?;
    let target = registry_path(db, name);
    if target.exists() {
        return Err(Error::Invalid(format!(
            "model '{name}' already exists in this database; DROP MODEL '{name}' first or pick \
             another name"
        )));
    }
    Ok(target)
}

/// `FINETUNE`: trains `base` on the collection's pairs and registers the best weights as
/// `name`.
pub(crate) fn run(db: &Database, plan: &TrainPlan, base: &str) -> Result<ResultSet> {
    let target = new_model_path(db, &plan.name)?;
    let (config, metric, opts) =
        training_config(&plan.options, &FINETUNE_OPTIONS, db.options.progress)?;
    let mining_mode = mining_option(&opts)?;
    let swap_seed = option_flag(&opts, "text_negatives")?.then_some(config.seed);
    let key = db.models.key(base)?;
    let folder = crate::models::model_folder(&key)?;
    let model = Trainable::load(&folder, &db.options.device)?;
    let base_fingerprint = model.encoder.fingerprint()?;
    let snap = db.snapshot()?;
    let version = snap.version();
    let schema = &snap.collection(&plan.collection)?.schema;
    let sql = |p: &Option<mirante_query::Predicate>| {
        p.as_ref().map(|p| crate::db::predicate_sql(schema, p))
    };
    let (train_filter, validate_filter) = (sql(&plan.filter), sql(&plan.validate));
    let (mut train, train_ids) = pairs(
        db,
        (&plan.collection, plan.filter.as_ref()),
        &model.encoder,
        swap_seed,
    )?;
    let mut mining = None;
    if mining_mode != Mining::Off {
        let (pairs, how) = mutual_neighbours(
            db,
            (&plan.collection, plan.filter.as_ref()),
            &model.encoder,
            &base_fingerprint,
            &train,
            &train_ids,
        )?;
        train.hard_pairs = pairs;
        mining = Some(how);
    }
    if train.images.len() < 2 {
        return Err(Error::Invalid(format!(
            "{} training rows with an image and captions in {}; fine-tuning needs at least 2",
            train.images.len(),
            plan.collection
        )));
    }
    let validation = match &plan.validate {
        Some(p) => Some(pairs(db, (&plan.collection, Some(p)), &model.encoder, None)?.0),
        None => None,
    };
    let partial = partial_folder(db, &plan.name)?;
    // Pairs found before each later epoch, for the lineage.
    let mut remined = Vec::new();
    let report = finetune(
        &model,
        &train,
        &config,
        &partial,
        |m| match &validation {
            Some(v) => score(m, v, metric).map_err(|e| {
                mirante_training::Error::InvalidArgument(format!("validation failed: {e}"))
            }),
            None => Ok(None),
        },
        |m| {
            if mining_mode != Mining::EveryEpoch {
                return Ok(None);
            }
            let pairs = exact_mutual_neighbours(&m.encoder, &train).map_err(|e| {
                mirante_training::Error::InvalidArgument(format!(
                    "hard-negative mining failed: {e}"
                ))
            })?;
            remined.push(pairs.len());
            Ok(Some(pairs))
        },
    )?;
    let lineage = run_lineage(
        serde_json::json!({
            "name": plan.name,
            "family": model.encoder.model.family(),
            "base": key,
            "base_fingerprint": base_fingerprint,
            "collection": plan.collection,
            "version": version,
            "filter": train_filter,
            "validate": validate_filter,
            // With hard_negatives = 'epoch': the pairs found before each later epoch.
            "hard_negative_pairs_remined": (mining_mode == Mining::EveryEpoch).then_some(&remined),
        }),
        &train,
        mining,
        validation.as_ref().map(|v| v.images.len()),
        &plan.options,
        metric,
        &report,
    );
    commit_model(&partial, &target, &lineage)?;
    let mut out = epochs_result(&report, &metric.to_string());
    let kept = if report.best_epoch == 0 {
        "no epoch beat the base model, so its weights were kept".to_string()
    } else {
        format!("kept epoch {}", report.best_epoch)
    };
    out.status = Some(format!(
        "fine-tuned {} on {} rows of {} as '{}' ({kept}{}); embed with EMBED {} USING MODEL '{}'",
        base,
        train.images.len(),
        plan.collection,
        plan.name,
        report
            .best_validation
            .map(|v| format!(", validation {metric} {v:.4}"))
            .unwrap_or_default(),
        plan.collection,
        plan.name
    ));
    Ok(out)
}

/// The folder a registry model is written into, `<registry>/.partial-<name>` (emptied): it is
/// renamed to its name when complete, so a crash leaves no half model.
pub(crate) fn partial_folder(db: &Database, name: &str) -> Result<PathBuf> {
    let registry = db.path().join(REGISTRY);
    std::fs::create_dir_all(&registry).map_err(|e| Error::io(&registry, e))?;
    let partial = registry.join(format!(".partial-{name}"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    Ok(partial)
}

/// A trained model's lineage: the caller's keys (`own`: name, family, base, data) and what
/// every training run records (creation time, data sizes, hard-negative mining, options,
/// validation metric, per-epoch history).
pub(crate) fn run_lineage(
    mut own: serde_json::Value,
    train: &PairData,
    mining: Option<&str>,
    validation_rows: Option<usize>,
    options: &mirante_query::ast::Options,
    metric: EvalMetric,
    report: &mirante_training::FinetuneReport,
) -> serde_json::Value {
    let run = serde_json::json!({
        "created": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "train_rows": train.images.len(),
        "train_captions": train.captions.len(),
        "hard_negative_pairs": mining.map(|_| train.hard_pairs.len()),
        "hard_negative_mining": mining,
        "text_negative_captions": (!train.text_negatives.is_empty())
            .then(|| train.text_negatives.iter().map(Vec::len).sum::<usize>()),
        "validation_rows": validation_rows,
        "options": options.0.iter().map(|(k, v)| (k.value.clone(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        "metric": metric.to_string(),
        "best_epoch": report.best_epoch,
        "best_validation": report.best_validation,
        "stopped_early": report.stopped_early,
        "precision": report.precision.name(),
        "epochs": report.epochs.iter().map(|e| serde_json::json!({
            "epoch": e.epoch,
            "loss": e.mean_loss,
            "validation": e.validation,
            "samples_per_second": e.samples_per_second,
        })).collect::<Vec<_>>(),
    });
    if let (Some(own), serde_json::Value::Object(run)) = (own.as_object_mut(), run) {
        own.extend(run);
    }
    own
}

/// Writes the lineage into the partial folder and renames it to the model's registry folder.
pub(crate) fn commit_model(
    partial: &Path,
    target: &Path,
    lineage: &serde_json::Value,
) -> Result<()> {
    let lineage_path = partial.join(LINEAGE);
    std::fs::write(
        &lineage_path,
        serde_json::to_string_pretty(lineage).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&lineage_path, e))?;
    std::fs::rename(partial, target).map_err(|e| Error::io(target, e))
}

/// One row per epoch: `epoch`, `loss`, the validation metric (column `metric`), `samples_per_s`.
pub(crate) fn epochs_result(report: &mirante_training::FinetuneReport, metric: &str) -> ResultSet {
    let mut out = ResultSet::new(
        ["epoch", "loss", metric, "samples_per_s"]
            .map(String::from)
            .to_vec(),
    );
    for e in &report.epochs {
        out.rows.push(vec![
            Cell::Int(e.epoch as i64),
            Cell::Float(e.mean_loss),
            e.validation.map_or(Cell::Null, Cell::Float),
            Cell::Float(e.samples_per_second),
        ]);
    }
    out
}

/// `DROP MODEL`: refused while a collection embeds with it.
pub(crate) fn drop_model(db: &Database, name: &str) -> Result<ResultSet> {
    check_name(name)?;
    let path = registry_path(db, name);
    if !path.join(LINEAGE).is_file() {
        return Err(Error::Invalid(format!(
            "model '{name}' is not in this database's registry"
        )));
    }
    let key = db.models.key(name)?;
    let snap = db.snapshot()?;
    for c in snap.collections() {
        for active in [c.active_image, c.active_text].into_iter().flatten() {
            if c.space(active)?.spec.model_id == key {
                return Err(Error::Invalid(format!(
                    "collection {} embeds with model '{name}'; switch it to another model first",
                    c.name
                )));
            }
        }
    }
    std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
    Ok(ResultSet::status(format!("dropped model {name}")))
}

/// `EXPORT MODEL`: the checkpoint files (Hugging Face layout, lineage included) copied out.
pub(crate) fn export_model(db: &Database, name: &str, folder: &str) -> Result<ResultSet> {
    check_name(name)?;
    let from = registry_path(db, name);
    if !from.join(LINEAGE).is_file() {
        return Err(Error::Invalid(format!(
            "model '{name}' is not in this database's registry"
        )));
    }
    let to = Path::new(folder);
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    let mut files = 0;
    for entry in std::fs::read_dir(&from).map_err(|e| Error::io(&from, e))? {
        let entry = entry.map_err(|e| Error::io(&from, e))?;
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).map_err(|e| Error::io(&target, e))?;
        files += 1;
    }
    Ok(ResultSet::status(format!(
        "exported model {name} to {folder} ({files} files)"
    )))
}
