//! The fine-tuning loop: epochs over image-caption pairs in shuffled batches (one caption per
//! image per epoch, so a batch holds no false negatives of the same image), AdamW with linear
//! warmup then cosine decay, gradient clipping and accumulation, frozen towers, validation after
//! each epoch with early stopping, and the best weights saved as a Hugging Face checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::encoder::DualEncoder;
use crate::error::{Error, Result};
use crate::train::{AdamWConfig, Loss, MicroBatch, Optimizer, Trainable};

/// Which parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// Everything trains.
    None,
    /// The image tower is locked and the text tower tunes (LiT).
    Vision,
    /// The text tower is locked and the image tower tunes.
    Text,
    /// Only the two projections (and the logit scale and bias) train.
    AllButProjections,
}

impl Freeze {
    pub fn parse(s: &str) -> Option<Freeze> {
        Some(match s {
            "none" => Freeze::None,
            "vision" | "image" => Freeze::Vision,
            "text" => Freeze::Text,
            "towers" | "projections" => Freeze::AllButProjections,
            _ => return None,
        })
    }

    /// Whether the parameter of this checkpoint name trains.
    pub fn trains(self, name: &str) -> bool {
        let vision = name.starts_with("vision_model.") || name.starts_with("visual_projection");
        let text = name.starts_with("text_model.") || name.starts_with("text_projection");
        let projection =
            name.starts_with("visual_projection") || name.starts_with("text_projection");
        match self {
            Freeze::None => true,
            Freeze::Vision => !vision,
            Freeze::Text => !text,
            Freeze::AllButProjections => projection || name.starts_with("logit_"),
        }
    }
}

/// The precision of training's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// bf16 mixed precision: matrix products in bf16, f32 master weights, norms, softmax and
    /// loss (see [`crate::layers::Autocast`]).
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s {
            "fp32" | "f32" | "float32" => Precision::F32,
            "bf16" | "bfloat16" => Precision::Bf16,
            _ => return None,
        })
    }

    /// The name `precision = '...'` takes.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// bf16 on a GPU (tensor cores), f32 on the CPU, where bf16 products are no faster.
    pub fn default_for(device: &candle_core::Device) -> Precision {
        if device.is_cuda() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    fn compute_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
        }
    }
}

/// Settings of a fine-tuning run.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneConfig {
    pub epochs: usize,
    /// Pairs per optimiser step (split into `accumulation` micro-batches).
    pub batch_size: usize,
    /// Micro-batches per step, embedded one at a time. Fine-tuning caches their embeddings'
    /// gradients (GradCache), so the step equals the full batch's, every pair a negative of
    /// every other; ELIP's micro-batches each have their own in-batch negatives.
    pub accumulation: usize,
    pub optimiser: AdamWConfig,
    /// Steps of linear warmup before the cosine decay to zero.
    pub warmup_steps: usize,
    /// Global gradient-norm clip (`None`: no clipping).
    pub clip_norm: Option<f64>,
    pub freeze: Freeze,
    /// Overrides the family's loss.
    pub loss: Option<Loss>,
    pub seed: u64,
    /// `None`: [`Precision::default_for`] the model's device.
    pub precision: Option<Precision>,
    /// Epochs without a better validation metric before stopping.
    pub patience: usize,
    /// Where the steps' progress shows.
    pub progress: crate::Progress,
    /// Checked before every step.
    pub stop: crate::Stop,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            epochs: 5,
            batch_size: 64,
            accumulation: 1,
            optimiser: AdamWConfig::default(),
            warmup_steps: 0,
            clip_norm: Some(1.0),
            freeze: Freeze::None,
            loss: None,
            seed: 0,
            precision: None,
            patience: 2,
            progress: crate::Progress::Hidden,
            stop: crate::Stop::default(),
        }
    }
}

/// An image of the training data.
#[derive(Debug, Clone)]
pub enum TrainImage {
    /// Preprocessed pixel values, `3 * S * S`.
    Pixels(Vec<f32>),
    /// Encoded bytes (JPEG, PNG, ...), decoded and preprocessed each time a batch needs them:
    /// memory holds compressed images instead of float tensors (a 224-pixel image is 600 KB as
    /// pixels), so data sets larger than memory as pixels still train.
    Encoded { bytes: Vec<u8>, source: String },
}

impl TrainImage {
    /// The pixel values, preprocessed for `encoder`.
    pub fn pixels(&self, encoder: &DualEncoder) -> Result<std::borrow::Cow<'_, [f32]>> {
        match self {
            TrainImage::Pixels(p) => Ok(std::borrow::Cow::Borrowed(p)),
            TrainImage::Encoded { bytes, source } => {
                Ok(std::borrow::Cow::Owned(encoder.pixels(bytes, source)?))
            }
        }
    }
}

/// Training pairs: image `images[i]` is described by `captions[j]` for each `j` in `pairs[i]`.
#[derive(Debug, Clone, Default)]
pub struct PairData {
    pub images: Vec<TrainImage>,
    /// Token ids per caption.
    pub captions: Vec<Vec<u32>>,
    /// Per image, its captions.
    pub pairs: Vec<Vec<usize>>,
    /// Hard negatives: pairs of images that are each other's nearest neighbour. Each epoch puts
    /// the two next to each other, so they land in one batch as each other's negatives.
    pub hard_pairs: Vec<(usize, usize)>,
    /// Per caption, token ids of captions that describe no image of the data (such as
    /// [`crate::negatives::word_swaps`] of it); each step adds one, drawn at random, per pair
    /// as a negative text. Empty: none.
    pub text_negatives: Vec<Vec<Vec<u32>>>,
}

impl PairData {
    /// Per caption, the image it describes.
    pub fn gold(&self) -> Vec<Option<u32>> {
        let mut gold = vec![None; self.captions.len()];
        for (image, captions) in self.pairs.iter().enumerate() {
            for &c in captions {
                gold[c] = Some(image as u32);
            }
        }
        gold
    }

    /// The images of `(image, caption)` pairs as a `[B, 3, S, S]` tensor on the encoder's
    /// device.
    pub fn pixel_batch(&self, part: &[(usize, usize)], encoder: &DualEncoder) -> Result<Tensor> {
        let indices: Vec<usize> = part.iter().map(|&(i, _)| i).collect();
        self.image_tensor(&indices, encoder)
    }

    /// Images `indices` as a `[N, 3, S, S]` tensor on the encoder's device.
    pub fn image_tensor(&self, indices: &[usize], encoder: &DualEncoder) -> Result<Tensor> {
        let size = encoder.model.image_size();
        Ok(Tensor::from_vec(
            self.batch_pixels(indices, encoder)?,
            (indices.len(), 3, size, size),
            encoder.device(),
        )?)
    }

    /// The pixels of images `indices`, concatenated (decoded in parallel where encoded).
    pub fn batch_pixels(&self, indices: &[usize], encoder: &DualEncoder) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        let parts: Vec<std::borrow::Cow<'_, [f32]>> = indices
            .par_iter()
            .map(|&i| self.images[i].pixels(encoder))
            .collect::<Result<_>>()?;
        Ok(parts.concat())
    }
}

/// The images of one epoch in batch order: shuffled, with each hard pair kept adjacent.
pub fn epoch_order(
    usable: &[usize],
    hard_pairs: &[(usize, usize)],
    rng: &mut StdRng,
) -> Vec<usize> {
    let mut partner: HashMap<usize, usize> = HashMap::new();
    for &(a, b) in hard_pairs {
        if a != b && !partner.contains_key(&a) && !partner.contains_key(&b) {
            partner.insert(a, b);
            partner.insert(b, a);
        }
    }
    let wanted: std::collections::HashSet<usize> = usable.iter().copied().collect();
    // Units: a hard pair (both usable) or a single image, shuffled as units.
    let mut units: Vec<Vec<usize>> = Vec::new();
    for &i in usable {
        match partner.get(&i) {
            Some(&j) if wanted.contains(&j) => {
                if i < j {
                    units.push(vec![i, j]);
                }
            }
            _ => units.push(vec![i]),
        }
    }
    units.shuffle(rng);
    units.into_iter().flatten().collect()
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub mean_loss: f64,
    pub steps: usize,
    pub samples_per_second: f64,
    /// The validation metric after the epoch, if validated.
    pub validation: Option<f64>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneReport {
    pub epochs: Vec<EpochReport>,
    /// Epoch (1-based) whose weights were kept; 0 means the base weights were never beaten.
    pub best_epoch: usize,
    pub best_validation: Option<f64>,
    pub stopped_early: bool,
    /// The precision the run used (the config's, or the device's default).
    pub precision: Precision,
}

/// Learning rate at `step` (0-based) of `total`: linear warmup, then cosine decay to zero.
pub fn learning_rate(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = (step - warmup) as f64 / span as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// Adds the gradients of `other` into `total`.
pub(crate) fn accumulate(
    total: &mut Option<GradStore>,
    other: GradStore,
    vars: &[candle_core::Var],
) -> Result<()> {
    let Some(t) = total else {
        *total = Some(other);
        return Ok(());
    };
    for v in vars {
        if let Some(g) = other.get(v) {
            let sum = match t.remove(v) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            t.insert(v, sum);
        }
    }
    Ok(())
}

/// Fine-tunes `model` on `data`. After each epoch `validate` scores the current weights (higher
/// is better; `None` skips validation); the best weights are written to `out` as a checkpoint
/// in the base's Hugging Face layout (the last ones when nothing validates). Before each epoch
/// after the first, `remine` may return new hard pairs found with the current weights (dynamic
/// hard-negative mining, as ANCE re-mines with the model being trained); `None` keeps the
/// previous ones (at first `data.hard_pairs`).
pub fn finetune<E: From<Error>>(
    model: &Trainable,
    data: &PairData,
    config: &FinetuneConfig,
    out: &Path,
    mut validate: impl FnMut(&Trainable) -> Result<Option<f64>, E>,
    mut remine: impl FnMut(&Trainable) -> Result<Option<Vec<(usize, usize)>>, E>,
) -> Result<FinetuneReport, E> {
    let loss_kind = config.loss.unwrap_or(model.loss);
    let mut optimiser = Optimizer::new(model, config.optimiser, |n| config.freeze.trains(n))?;
    // Its own stream, so that turning negatives on leaves the epochs' order unchanged.
    let mut negative_rng = StdRng::seed_from_u64(config.seed.wrapping_add(1));
    let report = train_pairs(
        &mut optimiser,
        data,
        config,
        |batch, micro, _| {
            if batch.len() < 2 {
                return Ok(None);
            }
            let chunks = batch
                .chunks(micro)
                .map(|part| {
                    let texts = part
                        .iter()
                        .map(|&(_, c)| data.captions[c].clone())
                        .collect();
                    let negative_texts = part
                        .iter()
                        .filter_map(|&(_, c)| data.text_negatives.get(c)?.choose(&mut negative_rng))
                        .cloned()
                        .collect();
                    Ok(MicroBatch {
                        pixels: data.pixel_batch(part, &model.encoder)?,
                        texts,
                        negative_texts,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let (loss, grads) = model.batch_gradients(&chunks, loss_kind, config.freeze)?;
            Ok(Some((
                f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?),
                grads,
            )))
        },
        |epoch| if epoch > 1 { remine(model) } else { Ok(None) },
        || validate(model),
        || Ok(save_checkpoint(model, out)?),
    )?;
    if report.best_epoch == 0 {
        // Never better than the base: keep the base weights, so the result is no worse.
        copy_base(model.encoder.folder(), out)?;
    }
    Ok(report)
}

/// The loss of a batch and its gradients as the sum over micro-batches of `micro` pairs, each
/// with its own `loss` (its negatives are its own pairs); `None` when no micro-batch has two
/// pairs.
pub(crate) fn accumulated(
    batch: &[(usize, usize)],
    micro: usize,
    vars: &[candle_core::Var],
    mut loss: impl FnMut(&[(usize, usize)]) -> Result<Tensor>,
) -> Result<Option<(f64, GradStore)>> {
    let (mut total, mut sum, mut count) = (None, 0f64, 0usize);
    for part in batch.chunks(micro).filter(|p| p.len() >= 2) {
        let l = loss(part)?;
        sum += f64::from(l.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        count += 1;
        accumulate(&mut total, l.backward()?, vars)?;
    }
    Ok(total.map(|g| (sum / count as f64, g)))
}

/// The training loop shared by fine-tuning and ELIP: epochs over `data`'s pairs in shuffled
/// batches (hard pairs kept together), one caption per image per epoch, `batch_gradients` of
/// each batch of `(image, caption)` pairs (given the micro-batch size that accumulation allows
/// and the trained variables) under the precision's autocast, clipped and applied by
/// `optimiser` with warmup and cosine decay; `hard_pairs_for(epoch)` before each epoch (new
/// hard pairs, or `None` to keep the last), `validate` after each epoch (and once before),
/// `save_best` when it improves, early stopping.
/// The caller's callbacks fail with the caller's error type `E`, which this returns unchanged.
pub(crate) fn train_pairs<E: From<Error>>(
    optimiser: &mut Optimizer,
    data: &PairData,
    config: &FinetuneConfig,
    mut batch_gradients: impl FnMut(
        &[(usize, usize)],
        usize,
        &[candle_core::Var],
    ) -> Result<Option<(f64, GradStore)>>,
    mut hard_pairs_for: impl FnMut(usize) -> Result<Option<Vec<(usize, usize)>>, E>,
    mut validate: impl FnMut() -> Result<Option<f64>, E>,
    mut save_best: impl FnMut() -> Result<(), E>,
) -> Result<FinetuneReport, E> {
    if data.images.is_empty() || data.pairs.iter().all(Vec::is_empty) {
        return Err(Error::InvalidArgument("no image-caption pairs to train on".into()).into());
    }
    if config.batch_size < 2 {
        return Err(Error::InvalidArgument(
            "batch_size must be at least 2: contrastive losses need negatives".into(),
        )
        .into());
    }
    let precision = config
        .precision
        .unwrap_or_else(|| Precision::default_for(&optimiser.device()));
    let vars = optimiser.variables();
    let usable: Vec<usize> = (0..data.images.len())
        .filter(|&i| !data.pairs[i].is_empty())
        .collect();
    let steps_per_epoch = usable.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let micro = config
        .batch_size
        .div_ceil(config.accumulation.max(1))
        .max(2);
    let mut rng = StdRng::seed_from_u64(config.seed);
    let bar = config.progress.steps(total_steps, "fine-tuning");

    let base_score = validate()?;
    let mut report = FinetuneReport {
        epochs: Vec::new(),
        best_epoch: 0,
        best_validation: base_score,
        stopped_early: false,
        precision,
    };
    let mut step = 0;
    let mut since_best = 0;
    let mut hard_pairs = std::borrow::Cow::Borrowed(data.hard_pairs.as_slice());
    for epoch in 1..=config.epochs {
        if let Some(mined) = hard_pairs_for(epoch)? {
            hard_pairs = std::borrow::Cow::Owned(mined);
        }
        let started = Instant::now();
        let order = epoch_order(&usable, &hard_pairs, &mut rng);
        // One caption per image this epoch.
        let chosen: Vec<(usize, usize)> = order
            .iter()
            .map(|&i| {
                let caps = &data.pairs[i];
                (i, caps[rand::Rng::random_range(&mut rng, 0..caps.len())])
            })
            .collect();
        let (mut loss_sum, mut loss_count, mut samples_done) = (0f64, 0usize, 0usize);
        for batch in chosen.chunks(config.batch_size) {
            config.stop.check()?;
            optimiser.set_learning_rate(learning_rate(
                config.optimiser.lr,
                step,
                config.warmup_steps,
                total_steps,
            ));
            let computed = {
                let _autocast = crate::layers::Autocast::new(precision.compute_dtype());
                batch_gradients(batch, micro, &vars)?
            };
            let Some((loss, grads)) = computed else {
                continue;
            };
            let norm = optimiser.gradient_norm(&grads)?;
            let diverged = |detail: String| Error::Diverged {
                epoch,
                step: step + 1,
                detail,
                lr: config.optimiser.lr,
            };
            if !loss.is_finite() || !norm.is_finite() {
                let detail = format!("the loss is {loss} and the gradient norm {norm}");
                return Err(diverged(detail).into());
            }
            loss_sum += loss;
            loss_count += 1;
            let scale = match config.clip_norm {
                Some(max) if norm > max => max / (norm + 1e-6),
                _ => 1.0,
            };
            optimiser.step_scaled(&grads, scale)?;
            step += 1;
            samples_done += batch.len();
            bar.set_message(format!(
                "epoch {epoch} loss {:.4} lr {:.2e} {:.0} samples/s",
                loss_sum / loss_count.max(1) as f64,
                learning_rate(config.optimiser.lr, step, config.warmup_steps, total_steps),
                samples_done as f64 / started.elapsed().as_secs_f64().max(1e-9)
            ));
            bar.inc(1);
        }
        let seconds = started.elapsed().as_secs_f64();
        // Finite gradients can still carry the weights past f32's range.
        if !optimiser.weights_finite()? {
            return Err(Error::Diverged {
                epoch,
                step,
                detail: "the weights are no longer finite".into(),
                lr: config.optimiser.lr,
            }
            .into());
        }
        let validation = validate()?;
        report.epochs.push(EpochReport {
            epoch,
            mean_loss: loss_sum / loss_count.max(1) as f64,
            steps: steps_per_epoch,
            samples_per_second: chosen.len() as f64 / seconds.max(1e-9),
            validation,
        });
        let better = match (validation, report.best_validation) {
            (Some(v), Some(best)) => v > best,
            (Some(_), None) => true,
            (None, _) => true,
        };
        if better {
            report.best_epoch = epoch;
            report.best_validation = validation.or(report.best_validation);
            save_best()?;
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= config.patience {
                report.stopped_early = epoch < config.epochs;
                break;
            }
        }
    }
    bar.finish_and_clear();
    Ok(report)
}

/// Files of a checkpoint folder that are not weights (config, tokenizer, preprocessor).
fn support_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(folder).map_err(|e| Error::io(folder, e))?;
    let mut out = Vec::new();
    for e in entries {
        let path = e.map_err(|e| Error::io(folder, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if path.is_file() && !weights && !name.starts_with("train_step") && name != "reference.json"
        {
            out.push(path);
        }
    }
    Ok(out)
}

fn copy_support_files(base: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for f in support_files(base)? {
        let target = out.join(f.file_name().unwrap_or_default());
        std::fs::copy(&f, &target).map_err(|e| Error::io(&target, e))?;
    }
    Ok(())
}

fn copy_base(base: &Path, out: &Path) -> Result<()> {
    copy_support_files(base, out)?;
    let index = base.join("model.safetensors.index.json");
    let extra = index.exists().then_some(index);
    for f in crate::encoder::weight_files(base)?.into_iter().chain(extra) {
        let target = out.join(f.file_name().unwrap_or_default());
        std::fs::copy(&f, &target).map_err(|e| Error::io(&target, e))?;
    }
    Ok(())
}

/// Writes the model's current weights as a checkpoint in `out`: the base's config, tokenizer
/// and preprocessor files, and one `model.safetensors` holding every tensor of the base (the
/// trained ones replaced, each in its original dtype), so transformers loads it as it loaded
/// the base.
pub fn save_checkpoint(model: &Trainable, out: &Path) -> Result<()> {
    let base = model.encoder.folder();
    copy_support_files(base, out)?;
    let files = crate::encoder::weight_files(base)?;
    let original = crate::train::Weights::open(&files)?;
    let vars = model
        .varmap
        .data()
        .lock()
        .map_err(|_| Error::InvalidArgument("the variable map was poisoned".into()))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, dtype) in original.names_and_dtypes() {
        let t = match vars.get(&name) {
            Some(v) => v.as_tensor().to_dtype(dtype)?,
            None => original.load(&name)?,
        };
        tensors.insert(name, t);
    }
    // Written next to the target and renamed, so a crash leaves the old file or the new one.
    let target = out.join("model.safetensors");
    let partial = out.join("model.safetensors.partial");
    candle_core::safetensors::save(&tensors, &partial)?;
    std::fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
    let index = out.join("model.safetensors.index.json");
    if index.exists() {
        std::fs::remove_file(&index).map_err(|e| Error::io(&index, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_pairs_stay_adjacent_and_every_image_comes_once() {
        let usable: Vec<usize> = (0..10).collect();
        let hard = [(2, 7), (7, 2), (4, 5), (9, 11)];
        for seed in 0..20 {
            let order = epoch_order(&usable, &hard, &mut StdRng::seed_from_u64(seed));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, usable);
            let at = |x: usize| order.iter().position(|&y| y == x).unwrap();
            assert_eq!(at(2).abs_diff(at(7)), 1);
            assert_eq!(at(4).abs_diff(at(5)), 1);
        }
    }

    #[test]
    fn pairs_mined_before_an_epoch_are_that_epochs_hard_pairs() {
        let data = PairData {
            images: vec![TrainImage::Pixels(Vec::new()); 10],
            captions: vec![Vec::new(); 10],
            pairs: (0..10).map(|i| vec![i]).collect(),
            hard_pairs: vec![(3, 4)],
            text_negatives: Vec::new(),
        };
        let varmap = candle_nn::VarMap::new();
        varmap
            .get(
                1,
                "w",
                candle_nn::Init::Const(0.0),
                DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap();
        let mut optimiser =
            Optimizer::over(&varmap, AdamWConfig::default(), |_| true, false).unwrap();
        let config = FinetuneConfig {
            epochs: 4,
            batch_size: 10,
            patience: 4,
            ..FinetuneConfig::default()
        };
        let (mut orders, mut asked) = (Vec::new(), Vec::new());
        train_pairs(
            &mut optimiser,
            &data,
            &config,
            |batch, _, _| {
                orders.push(batch.iter().map(|&(i, _)| i).collect::<Vec<_>>());
                Ok(None)
            },
            |epoch| {
                asked.push(epoch);
                Ok((epoch == 2).then(|| vec![(0, 9), (1, 8), (2, 7)]))
            },
            || Ok(None),
            || Ok::<_, Error>(()),
        )
        .unwrap();
        assert_eq!(asked, [1, 2, 3, 4]);
        let adjacent = |order: &[usize], a: usize, b: usize| {
            let at = |x| order.iter().position(|&y| y == x).unwrap();
            at(a).abs_diff(at(b)) == 1
        };
        assert!(adjacent(&orders[0], 3, 4), "{:?}", orders[0]);
        // Mined before epoch 2 and kept until the next mining.
        for order in &orders[1..] {
            for (a, b) in [(0, 9), (1, 8), (2, 7)] {
                assert!(adjacent(order, a, b), "{order:?}");
            }
        }
    }
}
