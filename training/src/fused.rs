//! Custom kernels where candle's composed operations cost too much:
//! - `act(x + bias)` over the rows of a matrix product's output: one parallel CPU pass instead
//!   of candle's three to four single-threaded ones (bias add, scale, sigmoid or tanh,
//!   multiply), which profiles showed to be a tenth of an encoder's time;
//! - layer normalisation (candle's fused kernel has no backward pass);
//! - multi-head attention with one single-threaded CPU task per (batch, head);
//!
//! each with a fused backward pass, so that training on the CPU runs them too instead of
//! candle's composed operations (a graph node and a pass over the activations per operation);
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

/// `2 sqrt(2 / pi)`: GELU's tanh form `0.5 v (1 + tanh(u))` is `v sigmoid(2u)`.
const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;

/// QuickGELU is `v sigmoid(z(v))` with `z(v) = 1.702 v`: `z(v)` and `z'(v)`.
fn quick_gelu_gate(v: f32) -> (f32, f32) {
    (1.702 * v, 1.702)
}

/// GELU's tanh form is `v sigmoid(z(v))` with `z(v) = 2u`: `z(v)` and `z'(v)`. One `exp` per
/// value instead of libm's `tanhf`, whose scalar `expm1f` was 16% of the encoder benchmark's
/// profile.
fn tanh_gelu_gate(v: f32) -> (f32, f32) {
    (
        TWO_SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v),
        TWO_SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * v * v),
    )
}

/// `exp` of every value, eight lanes at a time with `wide`'s vectorised exp: libm's scalar
/// `expf`, one call per value, was the activations' and the softmax's main cost.
fn exp_in_place(xs: &mut [f32]) {
    let mut lanes = [0f32; 8];
    for chunk in xs.chunks_mut(8) {
        lanes[..chunk.len()].copy_from_slice(chunk);
        let e = wide::f32x8::from(lanes).exp().to_array();
        chunk.copy_from_slice(&e[..chunk.len()]);
    }
}

/// Exact GELU, `0.5 v (1 + erf(v / sqrt 2))`.
fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d gelu(v) / dv`.
fn gelu_derivative(v: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2));
    cdf + v * INV_SQRT_2PI * (-0.5 * v * v).exp()
}

/// `out = act(x + bias)` over one row.
fn activate_row(act: Option<Activation>, out: &mut [f32], x: &[f32], bias: &[f32]) {
    for ((o, &v), &b) in out.iter_mut().zip(x).zip(bias) {
        *o = v + b;
    }
    match act {
        None => {}
        Some(Activation::Gelu) => out.iter_mut().for_each(|o| *o = gelu(*o)),
        Some(Activation::QuickGelu) => gated_row(out, x, bias, quick_gelu_gate),
        Some(Activation::GeluTanh) => gated_row(out, x, bias, tanh_gelu_gate),
    }
}

/// `out = v sigmoid(z(v)) = v / (1 + exp(-z(v)))` for `v = x + bias` already in `out`, the
/// row's exponentials computed together.
fn gated_row(out: &mut [f32], x: &[f32], bias: &[f32], gate: impl Fn(f32) -> (f32, f32)) {
    for o in out.iter_mut() {
        *o = -gate(*o).0;
    }
    exp_in_place(out);
    for ((o, &v), &b) in out.iter_mut().zip(x).zip(bias) {
        *o = (v + b) / (1.0 + *o);
    }
}

/// `dx = g * act'(x + bias)` over one row.
fn derivative_row(act: Option<Activation>, dx: &mut [f32], x: &[f32], g: &[f32], bias: &[f32]) {
    match act {
        None => dx.copy_from_slice(g),
        Some(Activation::Gelu) => {
            for (((d, &v), &g), &b) in dx.iter_mut().zip(x).zip(g).zip(bias) {
                *d = g * gelu_derivative(v + b);
            }
        }
        Some(Activation::QuickGelu) => gated_derivative_row(dx, x, g, bias, quick_gelu_gate),
        Some(Activation::GeluTanh) => gated_derivative_row(dx, x, g, bias, tanh_gelu_gate),
    }
}

/// `dx = g * d/dv [v sigmoid(z(v))] = g (s + v s (1 - s) z'(v))`, `s = 1 / (1 + exp(-z))`.
fn gated_derivative_row(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    bias: &[f32],
    gate: impl Fn(f32) -> (f32, f32),
) {
    for ((d, &v), &b) in dx.iter_mut().zip(x).zip(bias) {
        *d = -gate(v + b).0;
    }
    exp_in_place(dx);
    for (((d, &v), &g), &b) in dx.iter_mut().zip(x).zip(g).zip(bias) {
        let v = v + b;
        let s = 1.0 / (1.0 + *d);
        *d = g * (s + v * s * (1.0 - s) * gate(v).1);
    }
}

/// `f(out_row, input_rows)` over every row of `n` values of `out` and the same rows of each
/// input (as long as `out`), `ROWS_PER_TASK` rows per parallel task.
fn par_rows<const K: usize>(
    out: &mut [f32],
    n: usize,
    inputs: [&[f32]; K],
    f: impl Fn(&mut [f32], [&[f32]; K]) + Sync,
) {
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (r, row) in chunk.chunks_mut(n).enumerate() {
                let at = (task * ROWS_PER_TASK + r) * n;
                f(row, inputs.map(|x| &x[at..at + n]));
            }
        });
}

/// The contiguous f32 values of a CPU storage, or an error naming the op.
fn values<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 tensors only")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous tensors only")
    };
    Ok(&v[start..end])
}

/// The operands of a backward kernel over rows: `x` (rows of `n`), a vector of `n` (bias or
/// weight) and the output's gradient (as many values as `x`).
fn row_operands<'a>(
    op: &str,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
    let (x, v, g) = (
        values(op, s1, l1)?,
        values(op, s2, l2)?,
        values(op, s3, l3)?,
    );
    let n = v.len();
    if n == 0 || x.len() % n != 0 || g.len() != x.len() {
        candle_core::bail!("{op}: shapes do not match")
    }
    Ok((x, v, g))
}

/// The gradient of `act(x + bias)` with respect to `x` (and, with `bias_grad`, to `bias`: the
/// column sums of `dx`, packed after it, computed in the same parallel pass; candle's `sum(0)`
/// over the rows is a single-threaded strided reduction that profiles showed at a quarter of
/// the training thread's own time): inputs `x`, `bias` and the output's gradient.
#[derive(Debug, Clone, Copy)]
struct BiasActGrad {
    act: Option<Activation>,
    bias_grad: bool,
}

impl candle_core::CustomOp3 for BiasActGrad {
    fn name(&self) -> &'static str {
        "bias-act-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b, g) = row_operands("bias-act-grad", (s1, l1), (s2, l2), (s3, l3))?;
        let n = b.len();
        let act = self.act;
        let mut dx = vec![0f32; x.len()];
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(n * ROWS_PER_TASK)
            .zip(x.par_chunks(n * ROWS_PER_TASK))
            .zip(g.par_chunks(n * ROWS_PER_TASK))
            .map(|((dxc, xc), gc)| {
                let mut db = if self.bias_grad {
                    vec![0f32; n]
                } else {
                    Vec::new()
                };
                for ((dxrow, xrow), grow) in dxc.chunks_mut(n).zip(xc.chunks(n)).zip(gc.chunks(n)) {
                    derivative_row(act, dxrow, xrow, grow, b);
                    db.iter_mut().zip(dxrow.iter()).for_each(|(s, &d)| *s += d);
                }
                db
            })
            .collect();
        if !self.bias_grad {
            return Ok((CpuStorage::F32(dx), l1.shape().clone()));
        }
        let [db] = column_sums(n, partials.iter().map(|p| [p.as_slice()]));
        dx.extend_from_slice(&db);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// The sums of per-task partial column sums, `K` vectors of `n` per task, added in task order
/// rather than in rayon's reduction order, so that every run (and every thread count) gives the
/// same bits: training is deterministic with a seed.
fn column_sums<'a, const K: usize>(
    n: usize,
    partials: impl Iterator<Item = [&'a [f32]; K]>,
) -> [Vec<f32>; K] {
    let mut sums: [Vec<f32>; K] = std::array::from_fn(|_| vec![0f32; n]);
    for task in partials {
        for (sum, part) in sums.iter_mut().zip(task) {
            sum.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
    }
    sums
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // A frozen bias (ELIP's backbone, frozen towers) needs no column sums.
        let bias_grad = bias.track_op();
        let op = BiasActGrad {
            act: self.0,
            bias_grad,
        };
        let packed = x.apply_op3_no_bwd(bias, &grad.contiguous()?, &op)?;
        if !bias_grad {
            return Ok((Some(packed), None));
        }
        let total = x.elem_count();
        let dx = packed.narrow(0, 0, total)?.reshape(x.shape())?;
        let dbias = packed.narrow(0, total, bias.dim(0)?)?;
        Ok((Some(dx), Some(dbias)))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (values("bias-act", s1, l1)?, values("bias-act", s2, l2)?);
        let n = b.len();
        if n == 0 || x.len() % n != 0 {
            candle_core::bail!("bias-act: {} values do not split into rows of {n}", x.len())
        }
        let act = self.0;
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, n, [x], |orow, [xrow]| {
            activate_row(act, orow, xrow, b)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `act(x + bias)`: fused on CPU for contiguous f32 inputs (with a fused backward pass when
/// they track gradients), candle's ops elsewhere (GPU, other dtypes), so results are the same
/// everywhere up to rounding.
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Option<Activation>) -> Result<Tensor> {
    let fusable = x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && bias.dtype() == candle_core::DType::F32
        && x.is_contiguous()
        && bias.is_contiguous()
        && bias.rank() == 1
        && x.dims().last() == Some(&bias.dim(0)?);
    if fusable {
        return if x.track_op() || bias.track_op() {
            x.apply_op2(bias, BiasAct(act))
        } else {
            x.apply_op2_no_bwd(bias, &BiasAct(act))
        };
    }
    let y = x.broadcast_add(bias)?;
    match act {
        None => Ok(y),
        Some(a) => a.apply(&y),
    }
}

/// Layer normalisation over the last dimension, `(x - mean) / sqrt(var + eps) * weight + bias`
/// (inputs `x`, `weight`, `bias`), with a fused backward pass: candle's own fused kernel has
/// none, and its composed form is eight graph nodes, each a pass over the activations.
#[derive(Debug, Clone, Copy)]
struct LayerNorm {
    eps: f32,
}

/// Mean and `1 / sqrt(var + eps)` of one row.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl candle_core::CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = values("layer-norm", s1, l1)?;
        let (w, b) = (values("layer-norm", s2, l2)?, values("layer-norm", s3, l3)?);
        let n = w.len();
        if n == 0 || b.len() != n || x.len() % n != 0 {
            candle_core::bail!("layer-norm: rows of {n} do not fit")
        }
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, n, [x], |orow, [xrow]| {
            let (mean, rstd) = row_stats(xrow, eps);
            for (((o, &v), &w), &b) in orow.iter_mut().zip(xrow).zip(w).zip(b) {
                *o = (v - mean) * rstd * w + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let (total, n) = (x.elem_count(), weight.dim(0)?);
        let dx = packed.narrow(0, 0, total)?.reshape(x.shape())?;
        let dweight = packed.narrow(0, total, n)?;
        let dbias = packed.narrow(0, total + n, n)?;
        Ok((Some(dx), Some(dweight), Some(dbias)))
    }
}

/// The gradients of [`LayerNorm`] from `x`, `weight` and the output's gradient, packed into one
/// vector: `dx` (as many values as `x`), then `dweight` and `dbias`.
#[derive(Debug, Clone, Copy)]
struct LayerNormGrad {
    eps: f32,
}

impl candle_core::CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, g) = row_operands("layer-norm-grad", (s1, l1), (s2, l2), (s3, l3))?;
        let n = w.len();
        let eps = self.eps;
        let mut dx = vec![0f32; x.len()];
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(n * ROWS_PER_TASK)
            .zip(x.par_chunks(n * ROWS_PER_TASK))
            .zip(g.par_chunks(n * ROWS_PER_TASK))
            .map(|((dxc, xc), gc)| {
                let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                let mut dxhat = vec![0f32; n];
                for ((dxrow, xrow), grow) in dxc.chunks_mut(n).zip(xc.chunks(n)).zip(gc.chunks(n)) {
                    let (mean, rstd) = row_stats(xrow, eps);
                    // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = g w.
                    let (mut sum, mut sum_xhat) = (0f32, 0f32);
                    for i in 0..n {
                        let xhat = (xrow[i] - mean) * rstd;
                        dxhat[i] = grow[i] * w[i];
                        sum += dxhat[i];
                        sum_xhat += dxhat[i] * xhat;
                        dw[i] += grow[i] * xhat;
                        db[i] += grow[i];
                    }
                    let (a, c) = (sum / n as f32, sum_xhat / n as f32);
                    for i in 0..n {
                        let xhat = (xrow[i] - mean) * rstd;
                        dxrow[i] = rstd * (dxhat[i] - a - xhat * c);
                    }
                }
                (dw, db)
            })
            .collect();
        let [dw, db] = column_sums(
            n,
            partials.iter().map(|(w, b)| [w.as_slice(), b.as_slice()]),
        );
        dx.extend_from_slice(&dw);
        dx.extend_from_slice(&db);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// Layer normalisation of `x` over its last dimension through the fused CPU op (with its
/// backward pass); `None` when the inputs cannot take it (the caller then runs candle's ops).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(f32_cpu(x) && f32_cpu(weight) && f32_cpu(bias))
        || weight.rank() != 1
        || x.dims().last() != Some(&weight.dim(0)?)
        || bias.dims() != weight.dims()
    {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (weight, bias) = (weight.contiguous()?, bias.contiguous()?);
    x.apply_op3(&weight, &bias, LayerNorm { eps: eps as f32 })
        .map(Some)
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

/// `C = scale * A B` for `A` (m x k) and `B` (k x n) given by their (row, column) strides, into
/// a packed row-major `C` (row stride `c_rs`), on the calling thread.
fn small_gemm(
    (m, n, k): (usize, usize, usize),
    (c, c_rs): (&mut [f32], usize),
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    scale: f32,
) {
    assert!(c.len() >= (m - 1) * c_rs + n);
    assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
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
            a_cs as isize,
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

/// The attention probabilities of one (batch, head): `softmax(scale q k^T + mask)` row by row,
/// `q` and `k` read in place from the QKV block (rows `stride` apart).
fn attention_probs(
    (q, k, stride): (&[f32], &[f32], usize),
    (l, d): (usize, usize),
    mask: Option<&[f32]>,
) -> Vec<f32> {
    let scale = (d as f32).powf(-0.5);
    let mut scores = vec![0f32; l * l];
    // scores = scale * q k^T: k^T's row stride is 1, its column stride a token.
    small_gemm(
        (l, l, d),
        (&mut scores, l),
        (q, stride, 1),
        (k, 1, stride),
        scale,
    );
    for (row, s) in scores.chunks_mut(l).enumerate() {
        if let Some(mask) = mask {
            for (x, m) in s.iter_mut().zip(&mask[row * l..(row + 1) * l]) {
                *x += m;
            }
        }
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        s.iter_mut().for_each(|x| *x -= max);
        exp_in_place(s);
        let inv = 1.0 / s.iter().sum::<f32>();
        s.iter_mut().for_each(|x| *x *= inv);
    }
    scores
}

impl FusedAttention {
    /// Checks a `[B, L, 3 * H * D]` QKV layout and returns `(B, L)`.
    fn dims(&self, layout: &Layout) -> Result<(usize, usize)> {
        let (b, l, three_hd) = layout.shape().dims3()?;
        let (h, d) = (self.heads, self.head_dim);
        if three_hd != 3 * h * d || l == 0 || d == 0 {
            candle_core::bail!("fused-attention: last dim {three_hd} is not 3 x {h} x {d}")
        }
        if self.mask.as_ref().is_some_and(|m| m.len() != l * l) {
            candle_core::bail!("fused-attention: mask is not {l} x {l}")
        }
        Ok((b, l))
    }
}

impl candle_core::CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = values("fused-attention", storage, layout)?;
        let (b, l) = self.dims(layout)?;
        let (h, d) = (self.heads, self.head_dim);
        let (hd, three_hd) = (h * d, 3 * h * d);
        let contexts: Vec<Vec<f32>> = (0..b * h)
            .into_par_iter()
            .map(|task| {
                let (bi, hi) = (task / h, task % h);
                let base = bi * l * three_hd + hi * d;
                let (q, k, v) = (&qkv[base..], &qkv[base + hd..], &qkv[base + 2 * hd..]);
                let probs = attention_probs((q, k, three_hd), (l, d), self.mask.as_deref());
                let mut ctx = vec![0f32; l * d];
                small_gemm(
                    (l, d, l),
                    (&mut ctx, d),
                    (&probs, l, 1),
                    (v, three_hd, 1),
                    1.0,
                );
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

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad_op = FusedAttentionGrad(self.clone());
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &grad_op)?))
    }
}

/// The gradient of [`FusedAttention`] with respect to its QKV input, from that input and the
/// context's gradient `[B, L, H * D]`. Per (batch, head), the probabilities are recomputed
/// (as FlashAttention's backward does) rather than kept from the forward pass:
/// `dv = P^T dctx`, `dP = dctx v^T`, `dS = P * (dP - rowsum(dP * P))`, `dq = scale dS k`,
/// `dk = scale dS^T q`.
#[derive(Debug, Clone)]
struct FusedAttentionGrad(FusedAttention);

impl CustomOp2 for FusedAttentionGrad {
    fn name(&self) -> &'static str {
        "fused-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = values("fused-attention-grad", s1, l1)?;
        let dctx = values("fused-attention-grad", s2, l2)?;
        let attention = &self.0;
        let (b, l) = attention.dims(l1)?;
        let (h, d) = (attention.heads, attention.head_dim);
        let (hd, three_hd) = (h * d, 3 * h * d);
        if dctx.len() != b * l * hd {
            candle_core::bail!("fused-attention-grad: the gradient is not [{b}, {l}, {hd}]")
        }
        let scale = (d as f32).powf(-0.5);
        // Per task: dq, dk, dv, each L x D.
        let parts: Vec<[Vec<f32>; 3]> = (0..b * h)
            .into_par_iter()
            .map(|task| {
                let (bi, hi) = (task / h, task % h);
                let base = bi * l * three_hd + hi * d;
                let (q, k, v) = (&qkv[base..], &qkv[base + hd..], &qkv[base + 2 * hd..]);
                let g = &dctx[bi * l * hd + hi * d..];
                let probs = attention_probs((q, k, three_hd), (l, d), attention.mask.as_deref());
                let mut dv = vec![0f32; l * d];
                small_gemm((l, d, l), (&mut dv, d), (&probs, 1, l), (g, hd, 1), 1.0);
                let mut ds = vec![0f32; l * l];
                small_gemm((l, l, d), (&mut ds, l), (g, hd, 1), (v, 1, three_hd), 1.0);
                for (dsrow, prow) in ds.chunks_mut(l).zip(probs.chunks(l)) {
                    let dot: f32 = dsrow.iter().zip(prow).map(|(a, p)| a * p).sum();
                    for (x, p) in dsrow.iter_mut().zip(prow) {
                        *x = p * (*x - dot);
                    }
                }
                let mut dq = vec![0f32; l * d];
                small_gemm(
                    (l, d, l),
                    (&mut dq, d),
                    (&ds, l, 1),
                    (k, three_hd, 1),
                    scale,
                );
                let mut dk = vec![0f32; l * d];
                small_gemm(
                    (l, d, l),
                    (&mut dk, d),
                    (&ds, 1, l),
                    (q, three_hd, 1),
                    scale,
                );
                [dq, dk, dv]
            })
            .collect();
        let mut out = vec![0f32; qkv.len()];
        for (task, grads) in parts.iter().enumerate() {
            let (bi, hi) = (task / h, task % h);
            for (which, part) in grads.iter().enumerate() {
                for (t, row) in part.chunks(d).enumerate() {
                    let at = (bi * l + t) * three_hd + which * hd + hi * d;
                    out[at..at + d].copy_from_slice(row);
                }
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
    if !qkv.device().is_cpu()
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
    let op = FusedAttention {
        heads,
        head_dim,
        mask,
    };
    if qkv.track_op() {
        qkv.apply_op1(op).map(Some)
    } else {
        qkv.apply_op1_no_bwd(&op).map(Some)
    }
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
        // 27 columns: three vectors of eight lanes and a tail.
        let x = Tensor::randn(0f32, 2.0, (37, 27), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 27, &Device::Cpu).unwrap();
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

    /// candle's ops, as `Attention::attend` ran them before fusing (with the differentiable
    /// softmax, so gradients flow through it).
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
        let p = candle_nn::ops::softmax(&scores, candle_core::D::Minus1).unwrap();
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

    /// The largest absolute difference between two tensors.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Gradients of `sum(f(inputs) * weights)` with respect to each input, for random weights
    /// (the same for both functions compared).
    fn gradients(
        inputs: &[candle_core::Var],
        weights: &Tensor,
        f: impl Fn(&[Tensor]) -> Tensor,
    ) -> Vec<Tensor> {
        let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = (f(&tensors) * weights).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        inputs
            .iter()
            .map(|v| grads.get(v).unwrap().clone())
            .collect()
    }

    fn var(shape: &[usize], std: f32) -> candle_core::Var {
        candle_core::Var::randn(0f32, std, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn bias_act_backward_equals_candle_ops() {
        // 27 columns: three vectors of eight lanes and a tail.
        let (x, b) = (var(&[37, 27], 2.0), var(&[27], 1.0));
        let weights = Tensor::randn(0f32, 1.0, (37, 27), &Device::Cpu).unwrap();
        for act in [
            None,
            Some(Activation::QuickGelu),
            Some(Activation::GeluTanh),
            Some(Activation::Gelu),
        ] {
            let fused = gradients(&[x.clone(), b.clone()], &weights, |t| {
                let y = bias_act(&t[0], &t[1], act).unwrap();
                assert!(y.track_op(), "the output tracks the inputs");
                y
            });
            let plain = gradients(&[x.clone(), b.clone()], &weights, |t| {
                let y = t[0].broadcast_add(&t[1]).unwrap();
                act.map_or(y.clone(), |a| a.apply(&y).unwrap())
            });
            for (f, p) in fused.iter().zip(&plain) {
                let scale = p
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(max_diff(f, p) <= 1e-4 * scale.max(1.0), "{act:?}");
            }
        }
    }

    #[test]
    fn layer_norm_and_its_backward_equal_candle_ops() {
        let (x, w, b) = (var(&[2, 9, 16], 3.0), var(&[16], 1.0), var(&[16], 1.0));
        let weights = Tensor::randn(0f32, 1.0, (2, 9, 16), &Device::Cpu).unwrap();
        let eps = 1e-5;
        let composed = |t: &[Tensor]| {
            let mean = t[0].mean_keepdim(candle_core::D::Minus1).unwrap();
            let centred = t[0].broadcast_sub(&mean).unwrap();
            let var = centred
                .sqr()
                .unwrap()
                .mean_keepdim(candle_core::D::Minus1)
                .unwrap();
            let normed = centred
                .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
                .unwrap();
            normed
                .broadcast_mul(&t[1])
                .unwrap()
                .broadcast_add(&t[2])
                .unwrap()
        };
        let fused_fn = |t: &[Tensor]| layer_norm(&t[0], &t[1], &t[2], eps).unwrap().unwrap();
        let inputs = [x.clone(), w.clone(), b.clone()];
        let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        assert!(max_diff(&fused_fn(&tensors), &composed(&tensors)) < 1e-5);
        let fused = gradients(&inputs, &weights, fused_fn);
        let plain = gradients(&inputs, &weights, composed);
        for (name, (f, p)) in ["x", "weight", "bias"].iter().zip(fused.iter().zip(&plain)) {
            assert_eq!(f.dims(), p.dims(), "{name}");
            assert!(max_diff(f, p) < 1e-4, "{name}: {}", max_diff(f, p));
        }
    }

    /// The weight gradient sums per-row terms across tasks: the same bits whatever the number
    /// of threads (fine-tuning with a seed must write the same weights every run).
    #[test]
    fn layer_norm_gradients_do_not_depend_on_the_thread_count() {
        let x = var(&[1024, 64], 3.0);
        let (w, b) = (var(&[64], 1.0), var(&[64], 1.0));
        let weights = Tensor::randn(0f32, 1.0, (1024, 64), &Device::Cpu).unwrap();
        let run = |threads: usize| -> Vec<Vec<f32>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                gradients(&[x.clone(), w.clone(), b.clone()], &weights, |t| {
                    layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap().unwrap()
                })
                .iter()
                .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
                .collect()
            })
        };
        let one = run(1);
        for threads in [2, 3, 7] {
            assert!(
                one == run(threads),
                "{threads} threads give other gradients"
            );
        }
    }

    #[test]
    fn fused_attention_backward_equals_candle_ops() {
        let (b, l, h, d) = (2, 6, 3, 4);
        let qkv = var(&[b, l, 3 * h * d], 1.0);
        let weights = Tensor::randn(0f32, 1.0, (b, l, h * d), &Device::Cpu).unwrap();
        let causal: Vec<f32> = (0..l * l)
            .map(|i| if i % l > i / l { -1e9 } else { 0.0 })
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, l, l), &Device::Cpu).unwrap();
        for mask in [None, Some(&causal)] {
            let fused = gradients(std::slice::from_ref(&qkv), &weights, |t| {
                attention(&t[0], h, d, mask).unwrap().unwrap()
            });
            let plain = gradients(std::slice::from_ref(&qkv), &weights, |t| {
                reference_attention(&t[0], h, d, mask)
            });
            let diff = max_diff(&fused[0], &plain[0]);
            assert!(diff < 1e-4, "mask {}: {diff}", mask.is_some());
        }
    }
}
