//! Embedding columns (`.emb`): one file per (segment, embedding space), `count` little-endian f32
//! vectors of `dim` values after the 64-byte envelope header, read in place through a memory map.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, FileKind, HEADER_LEN, HeaderFields};
use crate::fsio::Mapped;
use crate::manifest::FileRef;

#[cfg(target_endian = "big")]
compile_error!(
    "Mirante's file formats are little-endian and are read in place; big-endian hosts are not supported"
);

/// Element type code stored in the header's dtype field.
pub const DTYPE_F32: u32 = 0;

/// Writes a column of `vectors.len() / dim` vectors for space `space`.
pub(crate) fn write_column(
    path: &Path,
    space: u32,
    dim: usize,
    vectors: &[f32],
) -> Result<(u64, u32)> {
    let fields = HeaderFields {
        dtype: DTYPE_F32,
        dim: dim as u32,
        count: (vectors.len() / dim.max(1)) as u64,
        tag: space as u64,
    };
    format::write_file(
        path,
        FileKind::Column,
        fields,
        bytemuck::cast_slice(vectors),
    )
}

/// A validated, memory-mapped embedding column.
#[derive(Debug)]
pub(crate) struct Column {
    map: Mapped,
    dim: usize,
    count: usize,
}

impl Column {
    /// Maps and validates a column, checking it holds `expected_count` vectors of `dim` values in
    /// space `space`.
    pub fn open(
        path: &Path,
        expect: &FileRef,
        space: u32,
        dim: usize,
        expected_count: usize,
    ) -> Result<Self> {
        let (fields, map) = format::map_file(path, FileKind::Column, expect)?;
        if fields.dtype != DTYPE_F32 {
            return Err(Error::corruption(
                path,
                format!("unknown element type code {}", fields.dtype),
            ));
        }
        let found = (fields.tag, fields.dim as usize, fields.count as usize);
        if found != (space as u64, dim, expected_count) {
            return Err(Error::corruption(
                path,
                format!(
                    "header says space {} dim {} count {}, manifest expects space {space} dim {dim} count {expected_count}",
                    found.0, found.1, found.2
                ),
            ));
        }
        let body_len = map.len() - HEADER_LEN;
        let expected_len = dim
            .checked_mul(expected_count)
            .and_then(|n| n.checked_mul(4));
        if Some(body_len) != expected_len {
            return Err(Error::corruption(
                path,
                format!("body is {body_len} bytes, expected {dim} x {expected_count} floats"),
            ));
        }
        bytemuck::try_cast_slice::<u8, f32>(&map[HEADER_LEN..]).map_err(|e| {
            Error::corruption(path, format!("column body not castable to f32: {e}"))
        })?;
        Ok(Column {
            map,
            dim,
            count: expected_count,
        })
    }

    /// All vectors, row-major.
    pub fn vectors(&self) -> &[f32] {
        // `open` checked length and alignment (64-byte aligned body in a page-aligned map).
        bytemuck::cast_slice(&self.map[HEADER_LEN..])
    }

    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors()[i * self.dim..(i + 1) * self.dim]
    }

    pub fn len(&self) -> usize {
        self.count
    }
}

/// Inner product with eight independent accumulators: the one scoring function of the engine, so
/// that exact scans, re-scoring of FAISS candidates and tests agree to the bit.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in rest_a.iter().zip(rest_b) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Scores every pair (`a[i]`, `b[j]`) into `out[i * b.len() + j]`, each score bit-identical to
/// [`dot`] of the pair (same lanes, same order of additions, no fused multiply-add), so callers
/// that mix this with `dot` (exact evaluation compares tile scores with thresholds computed
/// alone) see one scoring function. All vectors must have the same length.
pub fn dot_block(a: &[&[f32]], b: &[&[f32]], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        a.len() * b.len(),
        "output must hold one score per pair"
    );
    let dim = a.first().or(b.first()).map_or(0, |v| v.len());
    assert!(
        a.iter().chain(b).all(|v| v.len() == dim),
        "vectors differ in length"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") {
            // SAFETY: the CPU has the kernel's features; the vectors have equal lengths.
            unsafe { avx512::dot_block(a, b, out) };
            return;
        }
        if has!("avx") {
            // SAFETY: as above.
            unsafe { avx::dot_block(a, b, out) };
            return;
        }
    }
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            out[i * b.len() + j] = dot(x, y);
        }
    }
}

/// An x86 kernel for [`dot_block`]: one 8-lane register per pair holds `dot`'s eight
/// accumulators, `$rows x $cols` pairs at a time (as many as the registers of `$features`
/// hold), multiplies and adds kept separate as `dot` does them.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernel {
    ($name:ident, $features:literal, $rows:literal, $cols:literal) => {
        mod $name {
            use std::arch::x86_64::*;

            const ROWS: usize = $rows;
            const COLS: usize = $cols;

            /// # Safety
            /// The CPU must have the module's features; all vectors must have one length.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn dot_block(a: &[&[f32]], b: &[&[f32]], out: &mut [f32]) {
                let cols = b.len();
                // Columns outer: a block of `b` rows stays in L1 while the rows of `a` stream
                // past it (fewer bytes from L2 per multiply than the other way round).
                let mut j = 0;
                while j < cols {
                    let width = COLS.min(cols - j);
                    let mut i = 0;
                    while i < a.len() {
                        let rows = ROWS.min(a.len() - i);
                        if rows == ROWS && width == COLS {
                            let s = block::<ROWS, COLS>(
                                std::array::from_fn(|r| a[i + r]),
                                std::array::from_fn(|c| b[j + c]),
                            );
                            for (r, row) in s.iter().enumerate() {
                                out[(i + r) * cols + j..][..COLS].copy_from_slice(row);
                            }
                        } else {
                            for r in 0..rows {
                                for c in 0..width {
                                    let [[s]] = block::<1, 1>([a[i + r]], [b[j + c]]);
                                    out[(i + r) * cols + j + c] = s;
                                }
                            }
                        }
                        i += rows;
                    }
                    j += width;
                }
            }

            /// `R x C` dot products, each accumulated exactly as [`super::dot`] does.
            #[inline]
            #[target_feature(enable = $features)]
            fn block<const R: usize, const C: usize>(
                a: [&[f32]; R],
                b: [&[f32]; C],
            ) -> [[f32; C]; R] {
                let dim = a[0].len();
                let full = dim / 8 * 8;
                // Raw pointers keep the loop free of bounds checks and the accumulators in
                // registers (slices made the compiler store them on every step).
                let pa: [*const f32; R] = std::array::from_fn(|r| a[r].as_ptr());
                let pb: [*const f32; C] = std::array::from_fn(|c| b[c].as_ptr());
                let mut acc = [[_mm256_setzero_ps(); C]; R];
                let mut k = 0;
                while k < full {
                    let mut av = [_mm256_setzero_ps(); R];
                    for r in 0..R {
                        // SAFETY: k + 8 <= full <= the length of every vector.
                        av[r] = unsafe { _mm256_loadu_ps(pa[r].add(k)) };
                    }
                    for c in 0..C {
                        // SAFETY: as above.
                        let bv = unsafe { _mm256_loadu_ps(pb[c].add(k)) };
                        for r in 0..R {
                            acc[r][c] = _mm256_add_ps(acc[r][c], _mm256_mul_ps(av[r], bv));
                        }
                    }
                    k += 8;
                }
                let mut out = [[0f32; C]; R];
                for r in 0..R {
                    for c in 0..C {
                        let mut tail = 0f32;
                        for (x, y) in a[r][full..].iter().zip(&b[c][full..]) {
                            tail += x * y;
                        }
                        // ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)), as `dot` adds.
                        let halves = _mm_add_ps(
                            _mm256_castps256_ps128(acc[r][c]),
                            _mm256_extractf128_ps::<1>(acc[r][c]),
                        );
                        let pairs = _mm_hadd_ps(halves, halves);
                        out[r][c] = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs))) + tail;
                    }
                }
                out
            }
        }
    };
}

// 16 vector registers: 3 x 3 accumulators, 3 + 1 operands, one product.
#[cfg(target_arch = "x86_64")]
x86_kernel!(avx, "avx", 3, 3);
// AVX-512VL gives 32 registers for 256-bit operations: 4 x 6 accumulators.
#[cfg(target_arch = "x86_64")]
x86_kernel!(avx512, "avx,avx512f,avx512vl", 4, 6);

/// L2-normalises each `dim`-sized vector in place; zero vectors stay zero.
pub fn normalize(vectors: &mut [f32], dim: usize) {
    for v in vectors.chunks_exact_mut(dim) {
        let norm = dot(v, v).sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vectors(seed: u64, n: usize, dim: usize) -> Vec<Vec<f32>> {
        // A small LCG keeps the test free of RNG crates; values span signs and magnitudes.
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                (0..dim)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
                    })
                    .collect()
            })
            .collect()
    }

    proptest! {
        #[test]
        fn dot_block_equals_dot_bit_for_bit(
            seed in any::<u64>(),
            rows in 1usize..9,
            cols in 1usize..11,
            dim in 1usize..70,
        ) {
            let a = vectors(seed, rows, dim);
            let b = vectors(seed ^ 0xdead_beef, cols, dim);
            let ar: Vec<&[f32]> = a.iter().map(Vec::as_slice).collect();
            let br: Vec<&[f32]> = b.iter().map(Vec::as_slice).collect();
            let mut out = vec![0f32; rows * cols];
            let check = |out: &[f32]| -> Result<(), TestCaseError> {
                for i in 0..rows {
                    for j in 0..cols {
                        prop_assert_eq!(out[i * cols + j].to_bits(), dot(&a[i], &b[j]).to_bits());
                    }
                }
                Ok(())
            };
            dot_block(&ar, &br, &mut out);
            check(&out)?;
            // Every kernel this CPU can run, whichever `dot_block` picks.
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx") {
                    out.fill(0.0);
                    // SAFETY: the CPU has AVX; the vectors have one length.
                    unsafe { avx::dot_block(&ar, &br, &mut out) };
                    check(&out)?;
                }
                if std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512f")
                {
                    out.fill(0.0);
                    // SAFETY: the CPU has AVX-512F/VL; the vectors have one length.
                    unsafe { avx512::dot_block(&ar, &br, &mut out) };
                    check(&out)?;
                }
            }
        }
    }

    #[test]
    fn dot_block_of_nothing_is_nothing() {
        let mut out = [];
        dot_block(&[], &[&[1.0, 2.0]], &mut out);
        dot_block(&[&[1.0, 2.0]], &[], &mut out);
    }
}
