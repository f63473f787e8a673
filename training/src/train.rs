//! Training: a checkpoint in trainable form (every parameter a variable), the contrastive losses
//! (CLIP's symmetric InfoNCE, SigLIP's pairwise sigmoid loss) and AdamW with decoupled weight
//! decay on matrices only, as OpenCLIP trains.

use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::encoder::{DualEncoder, Model};
use crate::error::{Error, Result};

/// The weight files of a checkpoint, mapped, for filling variables.
pub(crate) struct Weights {
    tensors: MmapedSafetensors,
    path: PathBuf,
}

impl Weights {
    pub(crate) fn open(files: &[PathBuf]) -> Result<Self> {
        // SAFETY: the files are mapped read-only and copied into variables before this returns
        // to the caller's training; they are not modified meanwhile.
        let tensors = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| Error::Weights {
            path: files[0].clone(),
            detail: e.to_string(),
        })?;
        Ok(Weights {
            tensors,
            path: files[0].clone(),
        })
    }

    fn error(&self, detail: String) -> Error {
        Error::Weights {
            path: self.path.clone(),
            detail,
        }
    }

    /// Every tensor name with its stored dtype.
    pub(crate) fn names_and_dtypes(&self) -> Vec<(String, DType)> {
        self.tensors
            .tensors()
            .into_iter()
            .filter_map(|(name, view)| {
                let dtype = DType::try_from(view.dtype()).ok()?;
                Some((name, dtype))
            })
            .collect()
    }

    /// One tensor as stored (on the CPU).
    pub(crate) fn load(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .load(name, &Device::Cpu)
            .map_err(|e| self.error(format!("tensor '{name}': {e}")))
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tensors.get(name).is_ok()
    }

    pub(crate) fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let view = self
            .tensors
            .get(name)
            .map_err(|_| self.error(format!("tensor '{name}' is missing")))?;
        Ok(view.shape().to_vec())
    }

    /// Copies every variable's tensor from the checkpoint, checking shapes.
    pub(crate) fn fill(&self, varmap: &VarMap, device: &Device) -> Result<()> {
        let vars = varmap.data().lock().map_err(|_| {
            Error::InvalidArgument("the variable map was poisoned by a panic".into())
        })?;
        for (name, var) in vars.iter() {
            let t = self
                .tensors
                .load(name, device)
                .map_err(|e| self.error(format!("tensor '{name}': {e}")))?
                .to_dtype(DType::F32)?;
            if t.dims() != var.dims() {
                return Err(self.error(format!(
                    "tensor '{name}' has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t)?;
        }
        Ok(())
    }
}

/// Which contrastive loss trains the towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// CLIP: cross-entropy over the batch in both directions, temperature learned.
    InfoNce,
    /// SigLIP: an independent binary decision per (image, text) pair, temperature and bias
    /// learned.
    Sigmoid,
}

impl Loss {
    /// The loss a model family was trained with.
    pub fn for_model(model: &Model) -> Loss {
        match model {
            Model::Clip(_) => Loss::InfoNce,
            Model::Siglip(_) => Loss::Sigmoid,
        }
    }
}

/// `log(sigmoid(x))` without overflow: `min(x, 0) - log(1 + exp(-|x|))`.
fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    x.minimum(0f32)? - softplus
}

/// The loss of a batch of L2-normalised embeddings whose row `i` in `images` and `texts` is a
/// matching pair. `logit_scale` is the log of the temperature's inverse (as checkpoints store
/// it); `logit_bias` is SigLIP's bias.
pub fn contrastive_loss(
    loss: Loss,
    images: &Tensor,
    texts: &Tensor,
    logit_scale: &Tensor,
    logit_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let n = images.dim(0)?;
    let logits = texts
        .matmul(&images.t()?)?
        .broadcast_mul(&logit_scale.exp()?)?;
    Ok(match loss {
        Loss::InfoNce => {
            let labels = Tensor::arange(0u32, n as u32, images.device())?;
            let per_text = candle_nn::loss::cross_entropy(&logits, &labels)?;
            let per_image = candle_nn::loss::cross_entropy(&logits.t()?.contiguous()?, &labels)?;
            ((per_text + per_image)? / 2.0)?
        }
        Loss::Sigmoid => {
            let bias = logit_bias.ok_or_else(|| {
                Error::InvalidArgument("the sigmoid loss needs a logit bias".into())
            })?;
            sigmoid_loss(&logits.broadcast_add(bias)?)?
        }
    })
}

/// SigLIP's pairwise sigmoid loss of an `[n, n]` logit matrix whose diagonal holds the pairs:
/// `-sum(log sigmoid(label * logit)) / n` with label +1 on the diagonal, -1 elsewhere.
pub(crate) fn sigmoid_loss(logits: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let positives: Vec<u32> = (0..n as u32).collect();
    signed_sigmoid_loss(logits, &positives)
}

/// The pairwise sigmoid loss of `[n, k]` logits whose row `r` holds its pair at column
/// `positives[r]`: `-sum(log sigmoid(label * logit)) / n`, label +1 there and -1 elsewhere.
pub(crate) fn signed_sigmoid_loss(logits: &Tensor, positives: &[u32]) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    let mut labels = vec![-1f32; n * k];
    for (row, &p) in positives.iter().enumerate() {
        labels[row * k + p as usize] = 1.0;
    }
    let labels = Tensor::from_vec(labels, (n, k), logits.device())?.to_dtype(logits.dtype())?;
    Ok((log_sigmoid(&(labels * logits)?)?.sum_all()? / -(n as f64))?)
}

/// A checkpoint in trainable form.
pub struct Trainable {
    pub encoder: DualEncoder,
    /// Every parameter, named as in the checkpoint (so saving it writes a checkpoint).
    pub varmap: VarMap,
    pub loss: Loss,
}

impl std::fmt::Debug for Trainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainable")
            .field("encoder", &self.encoder)
            .field("variables", &self.varmap.all_vars().len())
            .field("loss", &self.loss)
            .finish()
    }
}

impl Trainable {
    /// Loads `folder` with every parameter, the logit scale (and SigLIP's bias) as variables.
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        let (encoder, varmap) =
            DualEncoder::load_variables(folder, device, &["logit_scale", "logit_bias"])?;
        let loss = Loss::for_model(&encoder.model);
        let t = Trainable {
            encoder,
            varmap,
            loss,
        };
        t.variable("logit_scale")?;
        if loss == Loss::Sigmoid {
            t.variable("logit_bias")?;
        }
        Ok(t)
    }

    /// The variable of a parameter by checkpoint name.
    pub fn variable(&self, name: &str) -> Result<Var> {
        self.varmap
            .data()
            .lock()
            .map_err(|_| Error::InvalidArgument("the variable map was poisoned".into()))?
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Weights {
                path: self.encoder.folder().join("model.safetensors"),
                detail: format!("the checkpoint has no '{name}', which training needs"),
            })
    }

    /// The loss of a batch: `pixels` `[N, 3, S, S]` and `ids` the N token sequences, pair `i`
    /// being image `i` with text `i`.
    pub fn batch_loss(&self, pixels: &Tensor, ids: &[Vec<u32>]) -> Result<Tensor> {
        self.batch_loss_with(pixels, ids, self.loss, crate::finetune::Freeze::None)
    }

    /// [`Trainable::batch_loss`] with another loss, and a frozen tower's embeddings detached so
    /// that no gradient is computed through it.
    pub fn batch_loss_with(
        &self,
        pixels: &Tensor,
        ids: &[Vec<u32>],
        loss: Loss,
        freeze: crate::finetune::Freeze,
    ) -> Result<Tensor> {
        let (images, texts) = self.features(pixels, ids, freeze)?;
        self.embedding_loss(&images, &texts, loss)
    }

    /// `loss` of a batch's embeddings with the model's logit scale (and bias).
    fn embedding_loss(&self, images: &Tensor, texts: &Tensor, loss: Loss) -> Result<Tensor> {
        let scale = self.variable("logit_scale")?;
        let bias = match loss {
            Loss::Sigmoid => Some(self.variable("logit_bias")?),
            Loss::InfoNce => None,
        };
        contrastive_loss(
            loss,
            images,
            texts,
            scale.as_tensor(),
            bias.as_ref().map(Var::as_tensor),
        )
    }

    /// The image and text embeddings of one micro-batch, with their graphs (a frozen tower's
    /// detached).
    fn features(
        &self,
        pixels: &Tensor,
        ids: &[Vec<u32>],
        freeze: crate::finetune::Freeze,
    ) -> Result<(Tensor, Tensor)> {
        use crate::finetune::Freeze;
        let (mut images, mut texts) = match &self.encoder.model {
            Model::Clip(m) => (m.image_features(pixels)?, m.text_features(ids)?),
            Model::Siglip(m) => (m.image_features(pixels)?, m.text_features(ids)?),
        };
        if freeze == Freeze::Vision {
            images = images.detach();
        }
        if freeze == Freeze::Text {
            texts = texts.detach();
        }
        Ok((images, texts))
    }

    /// The contrastive loss of a batch given as micro-batches `(pixels, token ids)`, and its
    /// gradients: those of the whole batch, every pair a negative of every other, while only
    /// one micro-batch's activations are alive at a time. Gradient caching (Gao et al., 2021):
    /// embed every micro-batch without keeping its graph, take the loss and its gradients with
    /// respect to the embeddings, then embed each micro-batch again with its graph and
    /// back-propagate those gradients. Costs one forward pass more than the plain step when
    /// there are several micro-batches.
    pub fn batch_gradients(
        &self,
        chunks: &[(Tensor, Vec<Vec<u32>>)],
        loss: Loss,
        freeze: crate::finetune::Freeze,
    ) -> Result<(Tensor, GradStore)> {
        use crate::finetune::Freeze;
        if let [(pixels, ids)] = chunks {
            let l = self.batch_loss_with(pixels, ids, loss, freeze)?;
            let grads = l.backward()?;
            return Ok((l, grads));
        }
        let (mut images, mut texts) = (Vec::new(), Vec::new());
        for (pixels, ids) in chunks {
            let (i, t) = self.features(pixels, ids, freeze)?;
            images.push(i.detach());
            texts.push(t.detach());
        }
        let images = Var::from_tensor(&Tensor::cat(&images, 0)?)?;
        let texts = Var::from_tensor(&Tensor::cat(&texts, 0)?)?;
        let l = self.embedding_loss(images.as_tensor(), texts.as_tensor(), loss)?;
        let mut grads = l.backward()?;
        let cached = |var: &Var, grads: &GradStore| {
            grads.get(var).cloned().ok_or_else(|| {
                Error::InvalidArgument("the loss does not depend on the embeddings".into())
            })
        };
        let (image_grads, text_grads) = (cached(&images, &grads)?, cached(&texts, &grads)?);
        grads.remove(&images);
        grads.remove(&texts);
        let vars = self.varmap.all_vars();
        let mut total = Some(grads);
        let mut offset = 0;
        for (pixels, ids) in chunks {
            let n = ids.len();
            let (i, t) = self.features(pixels, ids, freeze)?;
            // The surrogate's gradient with respect to each embedding is the cached one.
            let mut surrogate = Tensor::zeros((), i.dtype(), i.device())?;
            if freeze != Freeze::Vision {
                let g = image_grads.narrow(0, offset, n)?.to_dtype(i.dtype())?;
                surrogate = (surrogate + (i * g)?.sum_all()?)?;
            }
            if freeze != Freeze::Text {
                let g = text_grads.narrow(0, offset, n)?.to_dtype(t.dtype())?;
                surrogate = (surrogate + (t * g)?.sum_all()?)?;
            }
            crate::finetune::accumulate(&mut total, surrogate.backward()?, &vars)?;
            offset += n;
        }
        let grads = total.ok_or_else(|| Error::InvalidArgument("no gradients".into()))?;
        Ok((l, grads))
    }
}

/// AdamW settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// CLIP's fine-tuning settings.
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.2,
        }
    }
}

/// Parameters excluded from weight decay: vectors and scalars (biases, norms, class and
/// position vectors of rank 1) and the logit scale and bias, as OpenCLIP excludes them.
pub fn decays(name: &str, var: &Var) -> bool {
    var.rank() >= 2 && !name.starts_with("logit_")
}

/// One trained variable and its AdamW state.
#[derive(Debug)]
struct Slot {
    var: Var,
    state: State,
    decays: bool,
    /// CLIP's logit scale, clamped to `[0, ln 100]` after each step as OpenCLIP does.
    clamped: bool,
}

/// Where the AdamW state lives.
#[derive(Debug)]
enum State {
    /// CPU variables: plain vectors, updated in one fused parallel pass (instead of a dozen
    /// tensor operations, each allocating a copy of the parameter). `value` mirrors the
    /// parameter (the optimiser is the only writer of trained variables).
    Host {
        value: Vec<f32>,
        m: Vec<f32>,
        v: Vec<f32>,
    },
    /// GPU variables: moment tensors on the device, updated with tensor operations there, so
    /// a step moves no gradient or parameter between host and device.
    Device { m: Tensor, v: Tensor },
}

/// AdamW (decoupled weight decay, PyTorch's formula) over the trainable variables, with weight
/// decay on matrices only, a global gradient-norm clip, and CLIP's logit-scale clamp.
#[derive(Debug)]
pub struct Optimizer {
    slots: Vec<Slot>,
    config: AdamWConfig,
    lr: f64,
    steps: i32,
}

/// Elements per parallel task of the update.
const UPDATE_CHUNK: usize = 1 << 16;

/// A gradient's values on the CPU, row-major.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Optimizer {
    /// Optimises the variables of `model` that `trains(name)` selects.
    pub fn new(
        model: &Trainable,
        config: AdamWConfig,
        trains: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        Self::over(&model.varmap, config, trains, model.loss == Loss::InfoNce)
    }

    /// Optimises the variables of `varmap` that `trains(name)` selects; `clamp_logit_scale`
    /// clamps a variable named `logit_scale` as CLIP does.
    pub fn over(
        varmap: &VarMap,
        config: AdamWConfig,
        trains: impl Fn(&str) -> bool,
        clamp_logit_scale: bool,
    ) -> Result<Self> {
        Self::with_state(varmap, config, trains, clamp_logit_scale, None)
    }

    /// [`Optimizer::over`] with the state's place forced (`None`: on the device of each
    /// variable), so tests can run the device update on the CPU.
    fn with_state(
        varmap: &VarMap,
        config: AdamWConfig,
        trains: impl Fn(&str) -> bool,
        clamp_logit_scale: bool,
        on_device: Option<bool>,
    ) -> Result<Self> {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| Error::InvalidArgument("the variable map was poisoned".into()))?;
        let mut names: Vec<&String> = vars.keys().filter(|n| trains(n)).collect();
        // A fixed order: runs must be repeatable.
        names.sort();
        let mut slots = Vec::with_capacity(names.len());
        for name in names {
            let var = vars[name].clone();
            let state = if on_device.unwrap_or_else(|| !var.device().is_cpu()) {
                let zeros = Tensor::zeros(var.shape(), DType::F32, var.device())?;
                State::Device {
                    m: zeros.clone(),
                    v: zeros,
                }
            } else {
                let value = values(var.as_tensor())?;
                State::Host {
                    m: vec![0.0; value.len()],
                    v: vec![0.0; value.len()],
                    value,
                }
            };
            slots.push(Slot {
                decays: decays(name, &var),
                clamped: name == "logit_scale" && clamp_logit_scale,
                state,
                var,
            });
        }
        Ok(Optimizer {
            slots,
            config,
            lr: config.lr,
            steps: 0,
        })
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The variables this optimiser trains, in its fixed order.
    pub fn variables(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// The global L2 norm of the trained variables' gradients.
    pub fn gradient_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0f64;
        for slot in &self.slots {
            if let Some(g) = grads.get(&slot.var) {
                sum += f64::from(
                    g.sqr()?
                        .sum_all()?
                        .to_dtype(DType::F32)?
                        .to_scalar::<f32>()?,
                );
            }
        }
        Ok(sum.sqrt())
    }

    /// One update from the gradients of a loss.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_scaled(grads, 1.0)
    }

    /// One update from the gradients times `scale` (gradient clipping scales them all).
    pub fn step_scaled(&mut self, grads: &GradStore, scale: f64) -> Result<()> {
        use rayon::prelude::*;
        self.steps += 1;
        let c = self.config;
        let lr = self.lr;
        let (b1, b2) = (c.beta1, c.beta2);
        let correction1 = 1.0 - b1.powi(self.steps);
        let correction2 = 1.0 - b2.powi(self.steps);
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.var) else {
                continue;
            };
            let decay = if slot.decays {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let updated = match &mut slot.state {
                State::Host { value, m, v } => {
                    let g = values(g)?;
                    value
                        .par_chunks_mut(UPDATE_CHUNK)
                        .zip(m.par_chunks_mut(UPDATE_CHUNK))
                        .zip(v.par_chunks_mut(UPDATE_CHUNK))
                        .zip(g.par_chunks(UPDATE_CHUNK))
                        .for_each(|(((p, m), v), g)| {
                            for i in 0..p.len() {
                                let g = f64::from(g[i]) * scale;
                                let mi = b1 * f64::from(m[i]) + (1.0 - b1) * g;
                                let vi = b2 * f64::from(v[i]) + (1.0 - b2) * g * g;
                                m[i] = mi as f32;
                                v[i] = vi as f32;
                                let update =
                                    (mi / correction1) / ((vi / correction2).sqrt() + c.eps);
                                p[i] = (f64::from(p[i]) * decay - lr * update) as f32;
                            }
                        });
                    if slot.clamped {
                        for x in value.iter_mut() {
                            *x = x.clamp(0.0, 100f32.ln());
                        }
                    }
                    Tensor::from_slice(value, slot.var.shape(), slot.var.device())?
                }
                State::Device { m, v } => {
                    let g = (g.to_dtype(DType::F32)? * scale)?;
                    *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
                    *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let denominator = ((&*v / correction2)?.sqrt()? + c.eps)?;
                    let update = ((&*m / correction1)? / denominator)?;
                    let p = slot.var.as_tensor().to_dtype(DType::F32)?;
                    let p = ((p * decay)? - (update * lr)?)?;
                    if slot.clamped {
                        p.clamp(0f32, 100f32.ln())?
                    } else {
                        p
                    }
                }
            };
            slot.var.set(&updated.to_dtype(slot.var.dtype())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A variable map with a matrix (decayed), a vector (not decayed) and CLIP's logit scale
    /// (clamped), the same values every call.
    fn varmap() -> VarMap {
        let vm = VarMap::new();
        let cpu = Device::Cpu;
        let mut vars = vm.data().lock().unwrap();
        let t = |n: usize, shape: &[usize], k: f32| {
            let values: Vec<f32> = (0..n).map(|i| ((i as f32 * k).sin()) * 0.5).collect();
            Var::from_tensor(&Tensor::from_vec(values, shape, &cpu).unwrap()).unwrap()
        };
        vars.insert("w".into(), t(12, &[3, 4], 1.3));
        vars.insert("b".into(), t(4, &[4], 0.7));
        vars.insert("logit_scale".into(), t(1, &[], 1.0));
        drop(vars);
        vm
    }

    #[test]
    fn device_update_equals_the_fused_host_update() {
        let config = AdamWConfig {
            lr: 0.05,
            ..AdamWConfig::default()
        };
        let (host_vars, device_vars) = (varmap(), varmap());
        let mut host =
            Optimizer::with_state(&host_vars, config, |_| true, true, Some(false)).unwrap();
        let mut device =
            Optimizer::with_state(&device_vars, config, |_| true, true, Some(true)).unwrap();
        for step in 0..3 {
            // The same loss on both copies: a weighted sum whose gradients differ per element.
            let loss = |vm: &VarMap| -> Tensor {
                let vars = vm.data().lock().unwrap();
                let mut total = Tensor::new(0f32, &Device::Cpu).unwrap();
                for (name, var) in vars.iter() {
                    let x = var.as_tensor();
                    let weight = if name == "logit_scale" {
                        -40.0
                    } else {
                        1.0 + step as f64
                    };
                    let term = (x.sqr().unwrap().sum_all().unwrap() * weight).unwrap();
                    total = (total + (term + x.sum_all().unwrap()).unwrap()).unwrap();
                }
                total
            };
            let (gh, gd) = (
                loss(&host_vars).backward().unwrap(),
                loss(&device_vars).backward().unwrap(),
            );
            host.step_scaled(&gh, 0.5).unwrap();
            device.step_scaled(&gd, 0.5).unwrap();
        }
        let (h, d) = (
            host_vars.data().lock().unwrap(),
            device_vars.data().lock().unwrap(),
        );
        for (name, var) in h.iter() {
            let a: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = d[name]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "{name}: {x} vs {y}");
            }
        }
        // The clamp holds on both paths: the loss's gradient (+1 at 0) pushes the logit scale
        // below 0, where the clamp keeps it.
        let scale: f32 = d["logit_scale"].as_tensor().to_scalar().unwrap();
        assert_eq!(scale, 0.0);
    }
}
