//! Transformer building blocks shared by the CLIP and SigLIP towers, with parameter names equal
//! to the Hugging Face checkpoints' (`self_attn.q_proj`, `mlp.fc1`, `layer_norm1`, ...).

use std::cell::Cell;

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

thread_local! {
    /// The dtype matrix products run in on this thread while an [`Autocast`] guard lives.
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Mixed precision as PyTorch's `torch.autocast` does it: while the guard lives, the matrix
/// products of forward passes on this thread (projections, MLPs, attention, patch embedding)
/// cast their operands to the given dtype (bf16 for tensor cores) and their results back, so
/// weights, layer norms, softmax and the loss stay in f32. Gradients flow through the casts to
/// the f32 variables, which keeps f32 master weights for the optimiser. Thread-local, like
/// PyTorch's, because a forward pass runs on the thread that calls it.
#[derive(Debug)]
pub struct Autocast {
    previous: Option<DType>,
}

impl Autocast {
    /// Matrix products in `dtype` until the guard drops; `None` turns autocast off inside.
    pub fn new(dtype: Option<DType>) -> Self {
        Autocast {
            previous: AUTOCAST.replace(dtype),
        }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        AUTOCAST.set(self.previous);
    }
}

/// `a @ b`, in the autocast dtype when one is set and differs from the operands'.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match AUTOCAST.get() {
        Some(dtype) if a.dtype() != dtype => {
            crate::fused::matmul(&a.to_dtype(dtype)?, &b.to_dtype(dtype)?)?.to_dtype(a.dtype())
        }
        _ => crate::fused::matmul(a, b),
    }
}

/// Activation functions named as in `config.json`'s `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            _ => return None,
        })
    }

    /// Parses `hidden_act` from `config.json`, naming the file and the supported values on error.
    pub fn from_config(name: &str, path: &std::path::Path) -> crate::error::Result<Self> {
        Self::parse(name).ok_or_else(|| {
            crate::error::Error::config(
                path,
                format!(
                    "hidden_act '{name}' is not supported (quick_gelu, gelu, gelu_pytorch_tanh)"
                ),
            )
        })
    }

    pub(crate) fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
        }
    }
}

/// Layer normalisation: candle's fused kernel for inference; when gradients are tracked (candle's
/// kernel has no backward pass), Mirante's fused op with one on the CPU in f32, the composed
/// form elsewhere.
#[derive(Debug, Clone)]
pub struct Norm {
    inner: LayerNorm,
    eps: f64,
}

/// A layer norm with weight and bias (`<prefix>.weight`, `<prefix>.bias`).
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<Norm> {
    Ok(Norm {
        inner: candle_nn::layer_norm(size, eps, vb)?,
        eps,
    })
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let weight = self.inner.weight();
        if !x.track_op() && !weight.track_op() {
            return self.inner.forward(x);
        }
        if let Some(bias) = self.inner.bias()
            && let Some(y) = crate::fused::layer_norm(x, weight, bias, self.eps)?
        {
            return Ok(y);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let scaled = normed.broadcast_mul(weight)?;
        match self.inner.bias() {
            Some(b) => scaled.broadcast_add(b),
            None => Ok(scaled),
        }
    }
}

/// Softmax over the last dimension: candle's fused kernel for inference, the composed form when
/// gradients are tracked (the fused kernel has no backward pass).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// Sizes of one transformer tower.
#[derive(Debug, Clone, Copy)]
pub struct TowerShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    pub eps: f64,
    pub act: Activation,
}

/// A weight laid out for inference (a contiguous copy, fastest to multiply) or, when it is a
/// trainable variable or derived from one, a view of it: an optimiser updates variables in
/// place, and a copy taken at construction would keep the old values and cut the gradient.
pub(crate) fn layout(view: Tensor) -> Result<Tensor> {
    if view.track_op() {
        Ok(view)
    } else {
        view.contiguous()
    }
}

/// A linear layer applied as one matrix product over all leading dimensions (candle's
/// `Linear` runs one small product per batch element on 3-D input, which is much slower).
#[derive(Debug, Clone)]
pub struct Dense {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Dense {
            weight_t: layout(weight.t()?)?,
            bias,
        })
    }

    pub fn load(vb: VarBuilder, inp: usize, out: usize, with_bias: bool) -> Result<Self> {
        let weight = vb.get((out, inp), "weight")?;
        let bias = if with_bias {
            Some(vb.get(out, "bias")?)
        } else {
            None
        };
        Dense::new(weight, bias)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, None)
    }

    /// `act(x W^T + b)`, the bias and activation fused into one pass where possible.
    pub fn forward_act(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let mut y = matmul(&x.reshape((rows, inp))?, &self.weight_t)?;
        y = match (&self.bias, act) {
            (Some(b), act) => crate::fused::bias_act(&y, b, act)?,
            (None, Some(a)) => a.apply(&y)?,
            (None, None) => y,
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.weight_t.dim(1)?;
        y.reshape(out_dims)
    }
}

/// Query, key and value projections.
#[derive(Debug)]
enum Qkv {
    /// Inference: the three weights concatenated once, one product for all three.
    Fused(Dense),
    /// Training: the checkpoint's three (weight, bias) variables, concatenated at each forward
    /// pass so that updates and gradients reach them.
    Parts([(Tensor, Tensor); 3]),
}

#[derive(Debug)]
struct Attention {
    qkv: Qkv,
    out: Dense,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, s: &TowerShape) -> Result<Self> {
        let h = s.hidden;
        let part = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                vb.get((h, h), &format!("{name}.weight"))?,
                vb.get(h, &format!("{name}.bias"))?,
            ))
        };
        let parts = [part("q_proj")?, part("k_proj")?, part("v_proj")?];
        let qkv = if parts[0].0.track_op() {
            Qkv::Parts(parts)
        } else {
            let [(qw, qb), (kw, kb), (vw, vbias)] = &parts;
            Qkv::Fused(Dense::new(
                Tensor::cat(&[qw, kw, vw], 0)?,
                Some(Tensor::cat(&[qb, kb, vbias], 0)?),
            )?)
        };
        Ok(Attention {
            qkv,
            out: Dense::load(vb.pp("out_proj"), h, h, true)?,
            heads: s.heads,
            head_dim: h / s.heads,
        })
    }

    /// Multi-head self-attention; `mask` is added to the scores.
    pub fn attend(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let qkv = match &self.qkv {
            Qkv::Fused(dense) => dense.forward(x)?,
            Qkv::Parts([(qw, qb), (kw, kb), (vw, vbias)]) => Dense::new(
                Tensor::cat(&[qw, kw, vw], 0)?,
                Some(Tensor::cat(&[qb, kb, vbias], 0)?),
            )?
            .forward(x)?,
        };
        if let Some(ctx) = crate::fused::attention(&qkv, self.heads, self.head_dim, mask)? {
            return self.out.forward(&ctx);
        }
        let qkv = qkv.reshape((b, l, 3, self.heads, self.head_dim))?;
        let take = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (take(0)? * (self.head_dim as f64).powf(-0.5))?;
        let k = take(1)?;
        let v = take(2)?;
        let mut scores = matmul(&q, &k.t()?)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let probs = softmax_last_dim(&scores)?;
        let ctx = matmul(&probs, &v)?.transpose(1, 2)?.reshape((b, l, h))?;
        self.out.forward(&ctx)
    }
}

#[derive(Debug)]
pub(crate) struct Mlp {
    fc1: Dense,
    fc2: Dense,
    act: Activation,
}

impl Mlp {
    pub(crate) fn new(
        vb: VarBuilder,
        hidden: usize,
        intermediate: usize,
        act: Activation,
    ) -> Result<Self> {
        Ok(Mlp {
            fc1: Dense::load(vb.pp("fc1"), hidden, intermediate, true)?,
            fc2: Dense::load(vb.pp("fc2"), intermediate, hidden, true)?,
            act,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_act(x, Some(self.act))?)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    attn: Attention,
    ln1: Norm,
    mlp: Mlp,
    ln2: Norm,
}

impl EncoderLayer {
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.ln1.forward(x)?;
        let x = (x + self.attn.attend(&h, mask)?)?;
        let h = self.ln2.forward(&x)?;
        x + self.mlp.forward(&h)?
    }
}

/// A pre-norm transformer encoder (`encoder.layers.N`).
#[derive(Debug)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(vb: VarBuilder, s: &TowerShape) -> Result<Self> {
        let layers = (0..s.layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(EncoderLayer {
                    attn: Attention::new(vb.pp("self_attn"), s)?,
                    ln1: layer_norm(s.hidden, s.eps, vb.pp("layer_norm1"))?,
                    mlp: Mlp::new(vb.pp("mlp"), s.hidden, s.intermediate, s.act)?,
                    ln2: layer_norm(s.hidden, s.eps, vb.pp("layer_norm2"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask)?;
        }
        Ok(x)
    }

    /// The mean of tokens `skip..` over the batch at the input of the first `layers` layers,
    /// `[H]` each: what a typical patch looks like to each layer (ELIP starts its prompts
    /// there). Runs only the layers between them.
    pub fn token_means(&self, x: &Tensor, skip: usize, layers: usize) -> Result<Vec<Tensor>> {
        let layers = layers.min(self.layers.len());
        let mut x = x.clone();
        let mut means = Vec::with_capacity(layers);
        for (i, layer) in self.layers.iter().enumerate().take(layers) {
            let tokens = x.dim(1)? - skip;
            means.push(x.narrow(1, skip, tokens)?.mean((0, 1))?);
            if i + 1 < layers {
                x = layer.forward(&x, None)?;
            }
        }
        Ok(means)
    }

    /// The forward pass with visual prompts (ELIP): `prompts[0]`, `[B, m, H]`, is inserted
    /// after the first token before layer 0; `prompts[i]` for `i >= 1` (the deep variant)
    /// replaces those `m` tokens before layer `i`. No prompts: the plain forward pass.
    pub fn forward_prompted(&self, x: &Tensor, prompts: &[Tensor]) -> Result<Tensor> {
        let Some(first) = prompts.first() else {
            return self.forward(x, None);
        };
        let m = first.dim(1)?;
        let tokens = x.dim(1)?;
        let mut x = Tensor::cat(
            &[&x.narrow(1, 0, 1)?, first, &x.narrow(1, 1, tokens - 1)?],
            1,
        )?;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(p) = prompts.get(i).filter(|_| i > 0) {
                let rest = x.dim(1)? - 1 - m;
                x = Tensor::cat(&[&x.narrow(1, 0, 1)?, p, &x.narrow(1, 1 + m, rest)?], 1)?;
            }
            x = layer.forward(&x, None)?;
        }
        Ok(x)
    }
}

/// Patch embedding of a ViT: a stride-`patch` convolution without bias, computed as a matrix
/// product over flattened patches (the weight `[hidden, 3, p, p]` flattens in the same order).
#[derive(Debug)]
pub struct PatchEmbedding {
    weight: Tensor,
    bias: Option<Tensor>,
    patch: usize,
}

impl PatchEmbedding {
    pub fn new(vb: VarBuilder, hidden: usize, patch: usize, with_bias: bool) -> Result<Self> {
        let weight = vb
            .get((hidden, 3, patch, patch), "weight")?
            .reshape((hidden, 3 * patch * patch))?;
        let bias = if with_bias {
            Some(vb.get(hidden, "bias")?)
        } else {
            None
        };
        Ok(PatchEmbedding {
            weight: layout(weight.t()?)?,
            bias,
            patch,
        })
    }

    /// `[B, 3, H, W]` pixels to `[B, N, hidden]` patch features, patches in row-major order.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        let patches = pixels
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * p * p))?;
        let mut out = matmul(&patches, &self.weight)?;
        if let Some(bias) = &self.bias {
            out = out.broadcast_add(bias)?;
        }
        out.reshape((b, gh * gw, ()))
    }
}

/// L2-normalises the rows of a `[N, D]` tensor.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from PyTorch: `F.gelu`, `F.gelu(approximate="tanh")`, `x * sigmoid(1.702x)`.
    #[test]
    fn activations_match_pytorch() {
        let x = Tensor::new(&[-2.0f32, -0.5, 0.0, 1.0, 3.0], &candle_core::Device::Cpu).unwrap();
        let cases = [
            (
                Activation::Gelu,
                [-0.045_500_26, -0.154_268_73, 0.0, 0.841_344_7, 2.995_950_2],
            ),
            (
                Activation::GeluTanh,
                [-0.045_402_31, -0.154_286, 0.0, 0.841_192, 2.996_362_7],
            ),
            (
                Activation::QuickGelu,
                [-0.064_341_37, -0.149_611_56, 0.0, 0.845_795_75, 2.981_928_8],
            ),
        ];
        for (act, want) in cases {
            let got: Vec<f32> = act.apply(&x).unwrap().to_vec1().unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{act:?}: {g} vs {w}");
            }
        }
        assert_eq!(Activation::parse("gelu_new"), Some(Activation::GeluTanh));
        assert_eq!(Activation::parse("relu"), None);
    }
}
