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
        if body_len != dim * expected_count * 4 {
            return Err(Error::corruption(
                path,
                format!(
                    "body is {body_len} bytes, expected {}",
                    dim * expected_count * 4
                ),
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

/// L2-normalises each `dim`-sized vector in place; zero vectors stay zero.
pub fn normalize(vectors: &mut [f32], dim: usize) {
    for v in vectors.chunks_exact_mut(dim) {
        let norm = dot(v, v).sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
}
