//! `FINETUNE`: trains a dual encoder on a collection's pairs, starting from the base model, and
//! registers the best weights (validated each epoch) as a new registry model.

use mirante_query::TrainPlan;
use mirante_query::options::{FinetuneOptions, FreezeChoice, LossChoice, Mining};
use mirante_training::finetune::{Freeze, finetune};
use mirante_training::train::{Loss, Trainable};

use super::{DataSpec, Job, data, epoch_rows};
use crate::database::{Database, ExecOptions};
use crate::error::Result;
use crate::output::TrainingRun;

pub(crate) fn run(
    db: &Database,
    plan: &TrainPlan,
    base: &str,
    options: &FinetuneOptions,
    exec: &ExecOptions,
) -> Result<TrainingRun> {
    let t = &options.training;
    // Before any model is loaded: a taken or invalid name fails at once.
    db.registry().check_new(&plan.name)?;
    let key = db.models.key(base)?;
    let model = Trainable::load(&db.models.folder(&key)?, &db.options.device)?;
    let base_fingerprint = model.encoder.fingerprint()?;
    let job = Job::prepare(
        db,
        plan,
        exec,
        DataSpec {
            encoder: &model.encoder,
            mine_with: (options.hard_negatives != Mining::Off).then_some(base_fingerprint.as_str()),
            swap_seed: options.text_negatives.then_some(t.seed),
            what: "fine-tuning",
        },
    )?;
    let mut config = job.config(t);
    config.loss = options.loss.map(|l| match l {
        LossChoice::InfoNce => Loss::InfoNce,
        LossChoice::Sigmoid => Loss::Sigmoid,
    });
    config.freeze = match options.freeze {
        FreezeChoice::None => Freeze::None,
        FreezeChoice::Vision => Freeze::Vision,
        FreezeChoice::Text => Freeze::Text,
        FreezeChoice::Towers => Freeze::AllButProjections,
    };
    let metric = t.metric;
    // Pairs found before each later epoch, for the lineage.
    let mut remined = Vec::new();
    let report = finetune(
        &model,
        &job.train,
        &config,
        job.install.folder(),
        |m| -> Result<Option<f64>> {
            exec.cancel.check()?;
            match &job.validation {
                Some(v) => data::score(m, v, metric),
                None => Ok(None),
            }
        },
        |m| {
            if options.hard_negatives != Mining::EveryEpoch {
                return Ok(None);
            }
            let pairs = data::exact_mutual_neighbours(&m.encoder, &job.train)?;
            remined.push(pairs.len());
            Ok(Some(pairs))
        },
    )?;
    let mut lineage = job.lineage(
        (model.encoder.model.family(), &key, &base_fingerprint),
        t,
        &report,
    )?;
    // With hard_negatives = 'epoch': the pairs found before each later epoch.
    lineage.hard_negative_pairs_remined =
        (options.hard_negatives == Mining::EveryEpoch).then_some(remined);
    let kept = if report.best_epoch == 0 {
        "no epoch beat the base model, so its weights were kept".to_string()
    } else {
        format!("kept epoch {}", report.best_epoch)
    };
    let status = format!(
        "fine-tuned {base} on {} rows of {} as '{}' ({kept}{}); embed with EMBED {} USING MODEL '{}'",
        job.train.images.len(),
        plan.collection,
        plan.name,
        report
            .best_validation
            .map(|v| format!(", validation {metric} {v:.4}"))
            .unwrap_or_default(),
        plan.collection,
        plan.name
    );
    job.finish(&lineage, epoch_rows(&report), metric.to_string(), status)
}
