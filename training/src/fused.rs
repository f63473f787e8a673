//! Custom kernels where candle's composed operations cost too much:
//! - `act(x + bias)` over the rows of a matrix product's output: one parallel CPU pass instead
//!   of candle's three to four single-threaded ones (bias add, scale, sigmoid or tanh,
//!   multiply), which profiles showed to be a tenth of an encoder's time. Inference only: when
//!   an input tracks gradients the unfused ops run.
//! - multi-head attention with one single-threaded CPU task per (batch, head), inference only;
//! - a matrix product with a frozen right operand, whose backward pass skips that operand's
//!   gradient (CPU and CUDA).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::layers::Activation;

/// `act(x + bias)` with `bias` broadcast over the last dimension; `None` adds the bias only.
#[derive(Debug, Clone, Copy)]
struct BiasAct(Option<Activation>);

/// Rows per parallel task: enough work to amortise scheduling.
const ROWS_PER_TASK: usize = 16;

fn apply(act: Option<Activation>, v: f32) -> f32 {
    match act {
        None => v,
        Some(Activation::QuickGelu) => v / (1.0 + (-1.702 * v).exp()),
        Some(Activation::GeluTanh) => {
            // 0.5 v (1 + tanh(u)) is v sigmoid(2u): one `exp` instead of libm's `tanhf`, whose
            // scalar `expm1f` was 16% of the encoder benchmark's profile.
            const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
            v / (1.0 + (-TWO_SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v)).exp())
        }
        Some(Activation::Gelu) => {
            0.5 * v * (1.0 + candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
        }
    }
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("bias-act: f32 tensors only")
        };
        let (Some((xs, xe)), Some((bs, be))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("bias-act: contiguous tensors only")
        };
        let (x, b) = (&x[xs..xe], &b[bs..be]);
        let n = b.len();
        if n == 0 || x.len() % n != 0 {
            candle_core::bail!("bias-act: {} values do not split into rows of {n}", x.len())
        }
        let act = self.0;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(x.par_chunks(n * ROWS_PER_TASK))
            .for_each(|(o, xi)| {
                for (orow, xrow) in o.chunks_mut(n).zip(xi.chunks(n)) {
                    for ((o, &v), &bias) in orow.iter_mut().zip(xrow).zip(b) {
                        *o = apply(act, v + bias);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `act(x + bias)`: fused on CPU for contiguous f32 inputs that need no gradient, candle's ops
/// elsewhere (GPU, other dtypes, training), so results are the same everywhere up to rounding.
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Option<Activation>) -> Result<Tensor> {
    let fusable = !x.track_op()
        && !bias.track_op()
        && x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && bias.dtype() == candle_core::DType::F32
        && x.is_contiguous()
        && bias.is_contiguous()
        && bias.rank() == 1
        && x.dims().last() == Some(&bias.dim(0)?);
    if fusable {
        return x.apply_op2_no_bwd(bias, &BiasAct(act));
    }
    let y = x.broadcast_add(bias)?;
    match act {
        None => Ok(y),
        Some(a) => a.apply(&y),
    }
}

/// Multi-head self-attention over the fused `[B, L, 3 * H * D]` output of the QKV projection,
/// returning `[B, L, H * D]`. candle runs the B * H small per-head products one after another,
/// each split across threads (for 50 x 64 matrices, mostly synchronisation); here each
/// (batch, head) pair is one task that reads q, k and v in place through strides, computes its
/// scores, softmax and context single-threaded, and the tasks run in parallel.
#[derive(Debug, Clone)]
struct FusedAttention {
    heads: usize,
    head_dim: usize,
    /// Additive `[L, L]` mask (CLIP's causal mask), shared by every batch and head.
    mask: Option<Vec<f32>>,
}

/// `C = scale * A B` for row-major `A` (m x k, row stride `a_rs`), `B` given by its strides,
/// into a packed row-major `C` (row stride `c_rs`), on the calling thread.
#[allow(clippy::too_many_arguments)]
fn small_gemm(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    c_rs: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    scale: f32,
) {
    assert!(c.len() >= (m - 1) * c_rs + n && a.len() >= (m - 1) * a_rs + k);
    assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts above keep every element gemm reads or writes inside the slices
    // (indices i * rs + j * cs with i < rows, j < cols), and `c` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            false,
            a.as_ptr(),
            1,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

impl candle_core::CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("fused-attention: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused-attention: contiguous input only")
        };
        let qkv = &all[start..end];
        let (b, l, three_hd) = layout.shape().dims3()?;
        let (h, d) = (self.heads, self.head_dim);
        if three_hd != 3 * h * d || l == 0 || d == 0 {
            candle_core::bail!("fused-attention: last dim {three_hd} is not 3 x {h} x {d}")
        }
        if self.mask.as_ref().is_some_and(|m| m.len() != l * l) {
            candle_core::bail!("fused-attention: mask is not {l} x {l}")
        }
        let hd = h * d;
        let scale = (d as f32).powf(-0.5);
        let contexts: Vec<Vec<f32>> = (0..b * h)
            .into_par_iter()
            .map(|task| {
                let (bi, hi) = (task / h, task % h);
                let base = bi * l * three_hd + hi * d;
                let q = &qkv[base..];
                let k = &qkv[base + hd..];
                let v = &qkv[base + 2 * hd..];
                let mut scores = vec![0f32; l * l];
                // scores = scale * q k^T: k^T's row stride is 1, its column stride a token.
                small_gemm(
                    (l, l, d),
                    &mut scores,
                    l,
                    q,
                    three_hd,
                    k,
                    (1, three_hd),
                    scale,
                );
                for (row, s) in scores.chunks_mut(l).enumerate() {
                    if let Some(mask) = &self.mask {
                        for (x, m) in s.iter_mut().zip(&mask[row * l..(row + 1) * l]) {
                            *x += m;
                        }
                    }
                    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for x in s.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    s.iter_mut().for_each(|x| *x *= inv);
                }
                let mut ctx = vec![0f32; l * d];
                small_gemm((l, d, l), &mut ctx, d, &scores, l, v, (three_hd, 1), 1.0);
                ctx
            })
            .collect();
        let mut out = vec![0f32; b * l * hd];
        for (task, ctx) in contexts.iter().enumerate() {
            let (bi, hi) = (task / h, task % h);
            for (t, row) in ctx.chunks(d).enumerate() {
                let at = (bi * l + t) * hd + hi * d;
                out[at..at + d].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, l, hd))))
    }
}

/// `x W` for a 2-D `x` that tracks gradients and a 2-D `W` that does not (a frozen tower's
/// weight): the backward pass computes `x`'s gradient only. candle's matrix product also
/// computes the gradient of `W` and discards it, a third of a frozen encoder's backward work
/// (ELIP, frozen towers).
#[derive(Debug, Clone, Copy)]
struct FrozenMatmul;

impl FrozenMatmul {
    fn dims(l1: &Layout, l2: &Layout) -> Result<(usize, usize, usize)> {
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-matmul: [{m}, {k}] x [{k2}, {n}]")
        }
        Ok((m, n, k))
    }
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, n, k) = Self::dims(l1, l2)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, l2)?, Shape::from((m, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, n, k) = Self::dims(l1, l2)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, l2)?, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&w.t()?)?), None))
    }
}

/// `x W`, through [`FrozenMatmul`] when only `x` needs a gradient.
pub fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.track_op() && !w.track_op() && x.rank() == 2 && w.rank() == 2 {
        x.apply_op2(w, FrozenMatmul)
    } else {
        x.matmul(w)
    }
}

/// Self-attention of a fused QKV projection `[B, L, 3 * heads * head_dim]` (q, k, v blocks,
/// each head-major), with an optional additive `[1, 1, L, L]` mask; `None` when the inputs
/// cannot take the fused CPU path (the caller then runs candle's ops).
pub fn attention(
    qkv: &Tensor,
    heads: usize,
    head_dim: usize,
    mask: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if qkv.track_op()
        || !qkv.device().is_cpu()
        || qkv.dtype() != candle_core::DType::F32
        || !qkv.is_contiguous()
        || qkv.rank() != 3
    {
        return Ok(None);
    }
    let l = qkv.dim(1)?;
    let mask = match mask {
        None => None,
        Some(m) if m.dims() == [1, 1, l, l] && m.dtype() == candle_core::DType::F32 => {
            Some(m.flatten_all()?.to_vec1::<f32>()?)
        }
        Some(_) => return Ok(None),
    };
    qkv.apply_op1_no_bwd(&FusedAttention {
        heads,
        head_dim,
        mask,
    })
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn frozen_matmul_matches_matmul_and_skips_the_weight_gradient() {
        let x = candle_core::Var::randn(0f32, 1.0, (5, 7), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (7, 3), &Device::Cpu).unwrap();
        let frozen = matmul(x.as_tensor(), &w).unwrap();
        let plain = x.as_tensor().matmul(&w).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert_eq!(diff(&frozen, &plain), 0.0);
        let gf = frozen.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gp = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(diff(gf.get(&x).unwrap(), gp.get(&x).unwrap()) < 1e-5);
        assert!(gf.get(&w).is_none(), "no gradient for the frozen weight");
        assert!(gp.get(&w).is_some(), "candle's product computes it");
        // A product of untracked tensors stays a plain product.
        assert!(!matmul(&w.t().unwrap(), &w).unwrap().track_op());
    }

    #[test]
    fn fused_equals_unfused() {
        let x = Tensor::randn(0f32, 2.0, (37, 24), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 24, &Device::Cpu).unwrap();
        for act in [
            None,
            Some(Activation::QuickGelu),
            Some(Activation::GeluTanh),
            Some(Activation::Gelu),
        ] {
            let fused: Vec<Vec<f32>> = bias_act(&x, &b, act).unwrap().to_vec2().unwrap();
            let y = x.broadcast_add(&b).unwrap();
            let plain = match act {
                None => y,
                Some(a) => a.apply(&y).unwrap(),
            };
            let plain: Vec<Vec<f32>> = plain.to_vec2().unwrap();
            for (f, p) in fused.iter().flatten().zip(plain.iter().flatten()) {
                assert!(
                    (f - p).abs() <= 1e-5 * p.abs().max(1.0),
                    "{act:?}: {f} vs {p}"
                );
            }
        }
        // Non-contiguous input takes the unfused path and still agrees.
        let xt = x.t().unwrap();
        let bt = Tensor::randn(0f32, 1.0, 37, &Device::Cpu).unwrap();
        assert!(bias_act(&xt, &bt, Some(Activation::QuickGelu)).is_ok());
    }

    /// candle's ops, as `Attention::attend` ran them before fusing.
    fn reference_attention(qkv: &Tensor, h: usize, d: usize, mask: Option<&Tensor>) -> Tensor {
        let (b, l, _) = qkv.dims3().unwrap();
        let qkv = qkv.reshape((b, l, 3, h, d)).unwrap();
        let take = |i: usize| {
            qkv.narrow(2, i, 1)
                .unwrap()
                .squeeze(2)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = (take(0) * (d as f64).powf(-0.5)).unwrap();
        let mut scores = q.matmul(&take(1).t().unwrap()).unwrap();
        if let Some(m) = mask {
            scores = scores.broadcast_add(m).unwrap();
        }
        let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        p.matmul(&take(2))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, l, h * d))
            .unwrap()
    }

    #[test]
    fn fused_attention_equals_candle_ops() {
        let (b, l, h, d) = (3, 7, 4, 8);
        let qkv = Tensor::randn(0f32, 1.0, (b, l, 3 * h * d), &Device::Cpu).unwrap();
        let causal: Vec<f32> = (0..l * l)
            .map(|i| {
                if i % l > i / l {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, l, l), &Device::Cpu).unwrap();
        for mask in [None, Some(&causal)] {
            let fused: Vec<f32> = attention(&qkv, h, d, mask)
                .unwrap()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want: Vec<f32> = reference_attention(&qkv, h, d, mask)
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (f, w) in fused.iter().zip(&want) {
                assert!((f - w).abs() < 1e-5, "{f} vs {w}");
            }
        }
    }
}
