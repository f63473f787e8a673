//! Training a CLIP model from nothing on the bundled shapes dataset: how Mirante's default model
//! is made (`mirante pretrain`). Every step is the engine's own: the dataset generator, a BPE
//! tokenizer trained on the training captions, transformers' initialisation, `IMPORT`,
//! `FINETUNE` (which here starts from random weights), `EXPORT MODEL`, and `EVALUATE` on the
//! test split of the saved (f16) checkpoint.

use std::path::{Path, PathBuf};

use mirante::output::{Output, ResultSet};
use mirante::registry::LINEAGE_FILE;
use mirante::training::scratch::{
    ClipArchitecture, convert_checkpoint, initialize_clip, train_clip_tokenizer,
};
use mirante::{Database, Options};

use crate::error::{Error, Result};
use crate::shapes::{ShapesConfig, captions, generate};

/// What to train and how.
#[derive(Debug, Clone)]
pub struct PretrainConfig {
    pub rows: usize,
    pub seed: u64,
    /// Share of Portuguese rows in the training data. The default model saw English pairs only
    /// (its tokenizer knows both languages), so that the demo's fine-tuning has a language to
    /// teach it, as users fine-tune on their own domain.
    pub portuguese: f64,
    pub architecture: ClipArchitecture,
    pub vocab_size: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    /// Re-mine hard-negative pairs before every epoch with the weights being trained
    /// (`FINETUNE ... hard_negatives = 'epoch'`). Random scenes in a batch almost always differ
    /// in colour, which alone then tells them apart; pairs the model confuses make it learn
    /// shapes too.
    pub hard_negatives: bool,
    pub progress: bool,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            rows: 25_000,
            seed: 0,
            portuguese: 0.0,
            architecture: ClipArchitecture::default(),
            vocab_size: 1024,
            epochs: 15,
            batch_size: 256,
            lr: 1e-3,
            weight_decay: 0.1,
            warmup_steps: 200,
            hard_negatives: true,
            progress: false,
        }
    }
}

/// The outcome: the saved checkpoint and its test-split evaluation.
#[derive(Debug)]
pub struct PretrainReport {
    pub model: PathBuf,
    /// `FINETUNE`'s per-epoch table.
    pub training: ResultSet,
    /// `EVALUATE` of the saved checkpoint on the test split (both directions).
    pub test: ResultSet,
}

/// Trains a model into `out` (created; must not hold a checkpoint), working in `work` (dataset,
/// database, initial weights; kept so that a run can be inspected).
pub fn pretrain(config: &PretrainConfig, out: &Path, work: &Path) -> Result<PretrainReport> {
    if out.join("model.safetensors").exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a checkpoint; choose an empty folder",
            out.display()
        )));
    }
    config.architecture.validate()?;
    let data = work.join("data");
    let summary = generate(
        &ShapesConfig {
            rows: config.rows,
            seed: config.seed,
            size: config.architecture.image_size as u32,
            portuguese: config.portuguese,
            progress: config.progress,
            ..ShapesConfig::default()
        },
        &data,
    )?;
    // The vocabulary of the whole domain: the training captions and as many again in both
    // languages from other scenes.
    let mut corpus = training_captions(&summary.folder.join("metadata.jsonl"))?;
    corpus.extend(captions(&ShapesConfig {
        rows: config.rows,
        seed: config.seed.wrapping_add(1_000_003),
        ..ShapesConfig::default()
    }));
    let tokenizer = train_clip_tokenizer(&corpus, config.vocab_size)?;
    let init = work.join("initial");
    initialize_clip(&init, &config.architecture, &tokenizer, config.seed)?;

    let db = Database::open_with(
        work.join("db"),
        Options {
            progress: config.progress,
            ..Options::default()
        },
    )?;
    let quote = |p: &Path| p.display().to_string().replace('\'', "''");
    db.sql("CREATE COLLECTION shapes WITH (model = NULL)")?;
    db.sql(&format!("IMPORT INTO shapes FROM '{}'", quote(&data)))?;
    let training = last(db.sql(&format!(
        "FINETUNE MODEL '{}' ON shapes WHERE split = 'train' VALIDATE WHERE split = 'validation' \
         WITH (epochs = {}, batch_size = {}, lr = {}, weight_decay = {}, warmup_steps = {}, \
         seed = {}, patience = {}, metric = 'mrr', hard_negatives = {}) AS 'pretrained'",
        quote(&init),
        config.epochs,
        config.batch_size,
        config.lr,
        config.weight_decay,
        config.warmup_steps,
        config.seed,
        config.epochs,
        if config.hard_negatives {
            "'epoch'"
        } else {
            "false"
        },
    ))?)?;
    db.sql(&format!("EXPORT MODEL 'pretrained' TO '{}'", quote(out)))?;
    // The registry's lineage file belongs to the database it was trained in.
    let lineage = out.join(LINEAGE_FILE);
    if lineage.exists() {
        std::fs::remove_file(&lineage).map_err(|e| Error::io(&lineage, e))?;
    }
    convert_checkpoint(out, mirante::training::DType::F16).map_err(mirante::Error::from)?;
    db.sql(&format!("EMBED shapes USING MODEL '{}'", quote(out)))?;
    let test = last(db.sql(
        "EVALUATE recall@1, recall@5, recall@10, mrr, ndcg@10 ON shapes WHERE split = 'test'",
    )?)?;
    Ok(PretrainReport {
        model: out.to_path_buf(),
        training,
        test,
    })
}

/// The result of a one-statement `sql` call, as a table.
fn last(mut results: Vec<Output>) -> Result<ResultSet> {
    results
        .pop()
        .map(Output::into_result_set)
        .ok_or_else(|| Error::Invalid("the statement returned no result".into()))
}

/// Captions of the training split of a generated dataset.
fn training_captions(metadata: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(metadata).map_err(|e| Error::io(metadata, e))?;
    let mut captions = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let row: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Data {
            path: metadata.to_path_buf(),
            detail: format!("line {}: {e}", i + 1),
        })?;
        if row["split"] == "train"
            && let Some(texts) = row["text"].as_array()
        {
            captions.extend(texts.iter().filter_map(|t| t.as_str().map(str::to_string)));
        }
    }
    Ok(captions)
}
