//! Training statements (`FINETUNE`, `TRAIN ELIP`) share one skeleton, [`Job`]: reserve the new
//! registry model's folder, read the training (and validation) pairs from one snapshot, mine
//! hard negatives, run the kind's training loop into the folder, then publish the model with
//! its lineage and return the epochs. `finetune` and `elip` hold only what differs.

pub(crate) mod data;
pub(crate) mod elip;
pub(crate) mod finetune;

use std::time::SystemTime;

use mirante_query::TrainPlan;
use mirante_query::options::{PrecisionChoice, TrainingLoop};
use mirante_storage::Snapshot;
use mirante_training::DualEncoder;
use mirante_training::finetune::{FinetuneConfig, FinetuneReport, PairData, Precision};
use mirante_training::train::AdamWConfig;

use crate::catalog::predicate_sql;
use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result};
use crate::output::{EpochRow, TrainingRun};
use crate::registry::{EpochRecord, Install, Lineage};

/// What a training job shares, prepared by [`Job::prepare`].
pub(crate) struct Job<'a> {
    pub db: &'a Database,
    pub plan: &'a TrainPlan,
    pub exec: &'a ExecOptions,
    /// The new model's folder, published by [`Job::finish`].
    pub install: Install,
    pub snap: Snapshot,
    pub train: PairData,
    /// `index` or `exact` when hard negatives were mined.
    pub mining: Option<&'static str>,
    pub validation: Option<PairData>,
}

/// How a job reads its data.
pub(crate) struct DataSpec<'e> {
    /// The model whose preprocessing and tokenizer the pairs are made for.
    pub encoder: &'e DualEncoder,
    /// Mine hard negatives under the weights with this fingerprint (the collection's index
    /// serves them when it holds those vectors).
    pub mine_with: Option<&'e str>,
    /// Word-swapped negative captions drawn with this seed.
    pub swap_seed: Option<u64>,
    /// What the job is called in messages ("fine-tuning", "ELIP").
    pub what: &'static str,
}

impl<'a> Job<'a> {
    pub fn prepare(
        db: &'a Database,
        plan: &'a TrainPlan,
        exec: &'a ExecOptions,
        spec: DataSpec<'_>,
    ) -> Result<Self> {
        let install = db.registry().install(&plan.name)?;
        let snap = db.snapshot()?;
        let rows = (plan.collection.as_str(), plan.filter.as_ref());
        let (mut train, train_ids) = data::pairs(&snap, rows, spec.encoder, spec.swap_seed)?;
        if train.images.len() < 2 {
            return Err(Error::Invalid(format!(
                "{} training rows with an image and captions in {}; {} needs at least 2",
                train.images.len(),
                plan.collection,
                spec.what
            )));
        }
        exec.cancel.check()?;
        let mut mining = None;
        if let Some(fingerprint) = spec.mine_with {
            let (pairs, how) = data::mutual_neighbours(
                &snap,
                rows,
                spec.encoder,
                fingerprint,
                &train,
                &train_ids,
            )?;
            train.hard_pairs = pairs;
            mining = Some(how);
        }
        exec.cancel.check()?;
        let validation = match &plan.validate {
            Some(p) => Some(data::pairs(&snap, (&plan.collection, Some(p)), spec.encoder, None)?.0),
            None => None,
        };
        Ok(Job {
            db,
            plan,
            exec,
            install,
            snap,
            train,
            mining,
            validation,
        })
    }

    /// The training loop's settings from the statement's options.
    pub fn config(&self, t: &TrainingLoop) -> FinetuneConfig {
        FinetuneConfig {
            epochs: t.epochs,
            batch_size: t.batch_size,
            accumulation: t.accumulation,
            optimiser: AdamWConfig {
                lr: t.lr,
                weight_decay: t.weight_decay,
                ..AdamWConfig::default()
            },
            warmup_steps: t.warmup_steps,
            clip_norm: t.clip_norm,
            seed: t.seed,
            precision: t.precision.map(|p| match p {
                PrecisionChoice::Fp32 => Precision::F32,
                PrecisionChoice::Bf16 => Precision::Bf16,
            }),
            patience: t.patience,
            progress: self.db.progress(self.exec),
            stop: self.exec.cancel.stop(),
            ..FinetuneConfig::default()
        }
    }

    /// The lineage every training run records; the caller adds what its kind knows.
    pub fn lineage(
        &self,
        (family, base, base_fingerprint): (&str, &str, &str),
        t: &TrainingLoop,
        report: &FinetuneReport,
    ) -> Result<Lineage> {
        let schema = &self.snap.collection(&self.plan.collection)?.schema;
        let sql =
            |p: &Option<mirante_query::Predicate>| p.as_ref().map(|p| predicate_sql(schema, p));
        Ok(Lineage {
            lineage_format: crate::registry::LINEAGE_FORMAT,
            name: self.plan.name.clone(),
            family: family.to_string(),
            base: base.to_string(),
            base_fingerprint: base_fingerprint.to_string(),
            collection: self.plan.collection.clone(),
            version: self.snap.version(),
            filter: sql(&self.plan.filter),
            validate: sql(&self.plan.validate),
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            train_rows: self.train.images.len(),
            train_captions: self.train.captions.len(),
            hard_negative_pairs: self.mining.map(|_| self.train.hard_pairs.len()),
            hard_negative_mining: self.mining.map(str::to_string),
            text_negative_captions: (!self.train.text_negatives.is_empty())
                .then(|| self.train.text_negatives.iter().map(Vec::len).sum()),
            validation_rows: self.validation.as_ref().map(|v| v.images.len()),
            options: t.written.iter().cloned().collect(),
            metric: t.metric.to_string(),
            best_epoch: report.best_epoch,
            best_validation: report.best_validation,
            stopped_early: report.stopped_early,
            precision: report.precision.name().to_string(),
            epochs: report
                .epochs
                .iter()
                .map(|e| EpochRecord {
                    epoch: e.epoch,
                    loss: e.mean_loss,
                    validation: e.validation,
                    samples_per_second: e.samples_per_second,
                })
                .collect(),
            hard_negative_pairs_remined: None,
            validation_top: None,
            baseline_validation: None,
            fusion: None,
        })
    }

    /// Publishes the model with `lineage` and returns the run's result.
    pub fn finish(
        self,
        lineage: &Lineage,
        epochs: Vec<EpochRow>,
        metric_column: String,
        status: String,
    ) -> Result<TrainingRun> {
        self.install.commit(lineage)?;
        Ok(TrainingRun {
            model: self.plan.name.clone(),
            metric: lineage.metric.clone(),
            metric_column,
            epochs,
            status,
        })
    }
}

/// The epochs of a report as result rows.
pub(crate) fn epoch_rows(report: &FinetuneReport) -> Vec<EpochRow> {
    report
        .epochs
        .iter()
        .map(|e| EpochRow {
            epoch: e.epoch,
            loss: e.mean_loss,
            validation: e.validation,
            samples_per_second: e.samples_per_second,
            fusion: None,
        })
        .collect()
}
