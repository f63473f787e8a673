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
/// matching pair. `negatives` are extra texts that match no image (word-swapped captions): each
/// image must also rank its caption above them (InfoNCE's image-to-text direction, as NegCLIP
/// does), and each is a negative pair with every image (sigmoid). `logit_scale` is the log of
/// the temperature's inverse (as checkpoints store it); `logit_bias` is SigLIP's bias.
pub fn contrastive_loss(
    loss: Loss,
    (images, texts, negatives): (&Tensor, &Tensor, Option<&Tensor>),
    logit_scale: &Tensor,
    logit_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let n = images.dim(0)?;
    let scale = logit_scale.exp()?;
    let logits = texts.matmul(&images.t()?)?.broadcast_mul(&scale)?;
    let negative_logits = match negatives {
        Some(neg) if neg.dim(0)? > 0 => Some(neg.matmul(&images.t()?)?.broadcast_mul(&scale)?),
        _ => None,
    };
    Ok(match loss {
        Loss::InfoNce => {
            let labels = Tensor::arange(0u32, n as u32, images.device())?;
            let per_text = candle_nn::loss::cross_entropy(&logits, &labels)?;
            let texts_per_image = match &negative_logits {
                Some(neg) => Tensor::cat(&[&logits, neg], 0)?,
                None => logits,
            };
            let per_image =
                candle_nn::loss::cross_entropy(&texts_per_image.t()?.contiguous()?, &labels)?;
            ((per_text + per_image)? / 2.0)?
        }
        Loss::Sigmoid => {
            let bias = logit_bias.ok_or_else(|| {
                Error::InvalidArgument("the sigmoid loss needs a logit bias".into())
            })?;
            let pairs = sigmoid_loss(&logits.broadcast_add(bias)?)?;
            match &negative_logits {
                // Every label -1: -sum(log sigmoid(-logit)) / n, n the batch's pairs.
                Some(neg) => {
                    let neg = neg.broadcast_add(bias)?.neg()?;
                    (pairs + (log_sigmoid(&neg)?.sum_all()? / -(n as f64))?)?
                }
                None => pairs,
            }
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
        let batch = MicroBatch {
            pixels: pixels.clone(),
            texts: ids.to_vec(),
            negative_texts: Vec::new(),
        };
        let (images, texts, _) = self.features(&batch, freeze)?;
        self.embedding_loss((&images, &texts, None), loss)
    }

    /// `loss` of a batch's embeddings (images, their texts, negative texts) with the model's
    /// logit scale (and bias).
    fn embedding_loss(
        &self,
        embeddings: (&Tensor, &Tensor, Option<&Tensor>),
        loss: Loss,
    ) -> Result<Tensor> {
        let scale = self.variable("logit_scale")?;
        let bias = match loss {
            Loss::Sigmoid => Some(self.variable("logit_bias")?),
            Loss::InfoNce => None,
        };
        contrastive_loss(
            loss,
            embeddings,
            scale.as_tensor(),
            bias.as_ref().map(Var::as_tensor),
        )
    }

    /// The image, text and negative-text embeddings of one micro-batch, with their graphs (a
    /// frozen tower's detached; no negatives when the batch has none).
    fn features(
        &self,
        batch: &MicroBatch,
        freeze: crate::finetune::Freeze,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        use crate::finetune::Freeze;
        let n = batch.texts.len();
        let all_texts: Vec<Vec<u32>>;
        let ids = if batch.negative_texts.is_empty() {
            &batch.texts
        } else {
            all_texts = [batch.texts.as_slice(), &batch.negative_texts].concat();
            &all_texts
        };
        let (mut images, mut texts) = match &self.encoder.model {
            Model::Clip(m) => (m.image_features(&batch.pixels)?, m.text_features(ids)?),
            Model::Siglip(m) => (m.image_features(&batch.pixels)?, m.text_features(ids)?),
        };
        if freeze == Freeze::Vision {
            images = images.detach();
        }
        if freeze == Freeze::Text {
            texts = texts.detach();
        }
        if batch.negative_texts.is_empty() {
            return Ok((images, texts, None));
        }
        let negatives = texts.narrow(0, n, batch.negative_texts.len())?;
        Ok((images, texts.narrow(0, 0, n)?, Some(negatives)))
    }

    /// The contrastive loss of a batch given as micro-batches, and its gradients: those of the
    /// whole batch, every pair a negative of every other and every negative text one of every
    /// image, while only one micro-batch's activations are alive at a time. Gradient caching
    /// (Gao et al., 2021): embed every micro-batch without keeping its graph, take the loss and
    /// its gradients with respect to the embeddings, then embed each micro-batch again with its
    /// graph and back-propagate those gradients. Costs one forward pass more than the plain
    /// step when there are several micro-batches.
    pub fn batch_gradients(
        &self,
        chunks: &[MicroBatch],
        loss: Loss,
        freeze: crate::finetune::Freeze,
    ) -> Result<(Tensor, GradStore)> {
        use crate::finetune::Freeze;
        if let [batch] = chunks {
            let (images, texts, negatives) = self.features(batch, freeze)?;
            let l = self.embedding_loss((&images, &texts, negatives.as_ref()), loss)?;
            let grads = l.backward()?;
            return Ok((l, grads));
        }
        let (mut images, mut texts, mut negatives) = (Vec::new(), Vec::new(), Vec::new());
        for batch in chunks {
            let (i, t, neg) = self.features(batch, freeze)?;
            images.push(i.detach());
            texts.push(t.detach());
            negatives.extend(neg.map(|n| n.detach()));
        }
        let images = Var::from_tensor(&Tensor::cat(&images, 0)?)?;
        let texts = Var::from_tensor(&Tensor::cat(&texts, 0)?)?;
        let negatives = if negatives.is_empty() {
            None
        } else {
            Some(Var::from_tensor(&Tensor::cat(&negatives, 0)?)?)
        };
        let l = self.embedding_loss(
            (
                images.as_tensor(),
                texts.as_tensor(),
                negatives.as_ref().map(Var::as_tensor),
            ),
            loss,
        )?;
        let mut grads = l.backward()?;
        let mut cached = |var: &Var| {
            grads.remove(var).ok_or_else(|| {
                Error::InvalidArgument("the loss does not depend on the embeddings".into())
            })
        };
        let image_grads = cached(&images)?;
        let text_grads = cached(&texts)?;
        let negative_grads = negatives.as_ref().map(&mut cached).transpose()?;
        let vars = self.varmap.all_vars();
        let mut total = Some(grads);
        let (mut offset, mut negative_offset) = (0, 0);
        for batch in chunks {
            let (n, m) = (batch.texts.len(), batch.negative_texts.len());
            let (i, t, neg) = self.features(batch, freeze)?;
            // The surrogate's gradient with respect to each embedding is the cached one.
            let mut surrogate = Tensor::zeros((), i.dtype(), i.device())?;
            let mut add = |e: &Tensor, cached: &Tensor, at: usize, len: usize| -> Result<()> {
                let g = cached.narrow(0, at, len)?.to_dtype(e.dtype())?;
                surrogate = (&surrogate + (e * g)?.sum_all()?)?;
                Ok(())
            };
            if freeze != Freeze::Vision {
                add(&i, &image_grads, offset, n)?;
            }
            if freeze != Freeze::Text {
                add(&t, &text_grads, offset, n)?;
                if let (Some(e), Some(g)) = (&neg, &negative_grads) {
                    add(e, g, negative_offset, m)?;
                }
            }
            crate::finetune::accumulate(&mut total, surrogate.backward()?, &vars)?;
            offset += n;
            negative_offset += m;
        }
        let grads = total.ok_or_else(|| Error::InvalidArgument("no gradients".into()))?;
        Ok((l, grads))
    }
}

/// One micro-batch of a training step.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// `[n, 3, S, S]` pixel values.
    pub pixels: Tensor,
    /// The n captions' token ids, caption `i` describing image `i`.
    pub texts: Vec<Vec<u32>>,
    /// Token ids of captions that describe none of the images (hard negatives, such as
    /// word-swapped copies of `texts`).
    pub negative_texts: Vec<Vec<u32>>,
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
    /// CPU variables (f32): the moments as plain vectors, and the parameter updated in place in
    /// one fused parallel pass that reads the gradient where it lies (instead of a dozen tensor
    /// operations, each allocating a copy of the parameter, or copying the gradient out and the
    /// parameter back, which profiles showed at a sixth of the training thread's own time).
    Host { m: Vec<f32>, v: Vec<f32> },
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

/// One AdamW update of one variable, in the f32 terms of PyTorch's formula.
#[derive(Debug, Clone, Copy)]
struct Update {
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// `1 - lr * weight_decay`, or 1 where the variable does not decay.
    decay: f32,
    /// `lr / (1 - beta1^t)`.
    step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    root_correction2: f32,
    /// The gradient's factor (clipping).
    scale: f32,
    /// Clamp the result to `[0, ln 100]` (CLIP's logit scale).
    clamped: bool,
}

impl Update {
    /// PyTorch's AdamW formula over `p` with moments `m` and `v` and gradient `g`, in parallel,
    /// in f32 and in PyTorch's order of operations (decay, then `p -= lr / c1 * m / (sqrt(v) /
    /// sqrt(c2) + eps)`): vectorised, where f64 arithmetic made the update of the 12.6 M-value
    /// token embedding compute-bound.
    fn apply(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        use rayon::prelude::*;
        let u = *self;
        p.par_chunks_mut(UPDATE_CHUNK)
            .zip(m.par_chunks_mut(UPDATE_CHUNK))
            .zip(v.par_chunks_mut(UPDATE_CHUNK))
            .zip(g.par_chunks(UPDATE_CHUNK))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    let g = g[i] * u.scale;
                    m[i] = u.beta1 * m[i] + (1.0 - u.beta1) * g;
                    v[i] = u.beta2 * v[i] + (1.0 - u.beta2) * g * g;
                    let x = p[i] * u.decay
                        - u.step_size * m[i] / (v[i].sqrt() / u.root_correction2 + u.eps);
                    p[i] = if u.clamped {
                        x.clamp(0.0, 100f32.ln())
                    } else {
                        x
                    };
                }
            });
    }
}

/// [`Update`] as candle's in-place op on a CPU variable (the first operand) with its gradient
/// (the second), holding the variable's moments.
struct HostUpdate<'a> {
    update: Update,
    moments: std::sync::Mutex<(&'a mut [f32], &'a mut [f32])>,
}

impl candle_core::InplaceOp2 for HostUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::CpuStorage;
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("adamw: f32 variables and gradients only")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adamw: contiguous variables and gradients only")
        };
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw: poisoned moments".into()))?;
        let (m, v) = &mut *moments;
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!(
                "adamw: {} values, {} gradients, {} moments",
                p.len(),
                g.len(),
                m.len()
            )
        }
        self.update.apply(p, m, v, g);
        Ok(())
    }
}

/// The sum of the squares of a gradient's values: read in place for a contiguous f32 CPU
/// tensor (summed per chunk in f64, in chunk order, so runs repeat), candle's ops elsewhere.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    use rayon::prelude::*;
    {
        let (storage, layout) = g.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            let partials: Vec<f64> = data[a..b]
                .par_chunks(UPDATE_CHUNK)
                .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
                .collect();
            return Ok(partials.iter().sum());
        }
    }
    Ok(f64::from(
        g.sqr()?
            .sum_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?,
    ))
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
                if var.dtype() != DType::F32 {
                    return Err(Error::InvalidArgument(format!(
                        "variable {name} is {:?}; the CPU optimiser trains f32 variables",
                        var.dtype()
                    )));
                }
                State::Host {
                    m: vec![0.0; var.elem_count()],
                    v: vec![0.0; var.elem_count()],
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

    /// Where the trained variables live (the CPU when there are none).
    pub fn device(&self) -> candle_core::Device {
        self.slots
            .first()
            .map_or(candle_core::Device::Cpu, |s| s.var.device().clone())
    }

    /// The global L2 norm of the trained variables' gradients.
    pub fn gradient_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0f64;
        for slot in &self.slots {
            if let Some(g) = grads.get(&slot.var) {
                sum += sum_of_squares(g)?;
            }
        }
        Ok(sum.sqrt())
    }

    /// Whether every trained variable holds finite values only.
    pub fn weights_finite(&self) -> Result<bool> {
        for slot in &self.slots {
            if !sum_of_squares(slot.var.as_tensor())?.is_finite() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One update from the gradients of a loss.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_scaled(grads, 1.0)
    }

    /// One update from the gradients times `scale` (gradient clipping scales them all).
    pub fn step_scaled(&mut self, grads: &GradStore, scale: f64) -> Result<()> {
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
            match &mut slot.state {
                State::Host { m, v } => {
                    let update = Update {
                        beta1: b1 as f32,
                        beta2: b2 as f32,
                        eps: c.eps as f32,
                        decay: decay as f32,
                        step_size: (lr / correction1) as f32,
                        root_correction2: correction2.sqrt() as f32,
                        scale: scale as f32,
                        clamped: slot.clamped,
                    };
                    let op = HostUpdate {
                        update,
                        moments: std::sync::Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                    };
                    // A transposed gradient (a weight used as `w.t()`) is copied into order.
                    let g = g.to_dtype(DType::F32)?.contiguous()?;
                    slot.var.as_tensor().inplace_op2(&g, &op)?;
                }
                State::Device { m, v } => {
                    let g = (g.to_dtype(DType::F32)? * scale)?;
                    *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
                    *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let denominator = ((&*v / correction2)?.sqrt()? + c.eps)?;
                    let update = ((&*m / correction1)? / denominator)?;
                    let p = slot.var.as_tensor().to_dtype(DType::F32)?;
                    let p = ((p * decay)? - (update * lr)?)?;
                    let p = if slot.clamped {
                        p.clamp(0f32, 100f32.ln())?
                    } else {
                        p
                    };
                    slot.var.set(&p.to_dtype(slot.var.dtype())?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-normalised pseudo-random `[rows, 4]` embeddings.
    fn unit_rows(rows: usize, k: f64) -> Vec<Vec<f64>> {
        (0..rows)
            .map(|r| {
                let v: Vec<f64> = (0..4).map(|c| ((r * 4 + c) as f64 * k).sin()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn tensor(rows: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
        Tensor::from_vec(flat, (rows.len(), 4), &Device::Cpu).unwrap()
    }

    /// The losses with negative texts, written out term by term in f64.
    #[test]
    fn negative_texts_enter_the_losses_as_written() {
        let (images, texts, negatives) = (unit_rows(3, 0.9), unit_rows(3, 1.7), unit_rows(2, 2.3));
        let (scale, bias) = (2.5f64, -1.5f64);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let logit = |t: &[f64], i: &[f64]| scale.exp() * dot(t, i);
        // InfoNCE: text -> image over the batch; image -> text over the batch and negatives.
        let mut per_text = 0.0;
        let mut per_image = 0.0;
        for i in 0..3 {
            let row: Vec<f64> = images.iter().map(|im| logit(&texts[i], im)).collect();
            per_text += row.iter().map(|x| x.exp()).sum::<f64>().ln() - row[i];
            let col: Vec<f64> = texts
                .iter()
                .chain(&negatives)
                .map(|t| logit(t, &images[i]))
                .collect();
            per_image += col.iter().map(|x| x.exp()).sum::<f64>().ln() - col[i];
        }
        let infonce = (per_text / 3.0 + per_image / 3.0) / 2.0;
        // Sigmoid: +1 on the diagonal, -1 elsewhere and for every negative, over n = 3.
        let log_sigmoid = |x: f64| -(1.0 + (-x).exp()).ln();
        let mut sigmoid = 0.0;
        for (t, text) in texts.iter().chain(&negatives).enumerate() {
            for (i, image) in images.iter().enumerate() {
                let label = if t == i { 1.0 } else { -1.0 };
                sigmoid -= log_sigmoid(label * (logit(text, image) + bias));
            }
        }
        sigmoid /= 3.0;

        let (im, tx, neg) = (tensor(&images), tensor(&texts), tensor(&negatives));
        let scale_t = Tensor::new(scale as f32, &Device::Cpu).unwrap();
        let bias_t = Tensor::new(bias as f32, &Device::Cpu).unwrap();
        for (loss, expected, b) in [
            (Loss::InfoNce, infonce, None),
            (Loss::Sigmoid, sigmoid, Some(&bias_t)),
        ] {
            let got = contrastive_loss(loss, (&im, &tx, Some(&neg)), &scale_t, b)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                (f64::from(got) - expected).abs() < 1e-4 * expected.abs().max(1.0),
                "{loss:?}: {got} vs {expected}"
            );
            let without = contrastive_loss(loss, (&im, &tx, None), &scale_t, b)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(got > without, "{loss:?}: negatives must add to the loss");
        }
    }

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
