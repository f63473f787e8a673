//! Deletion vectors (`.del`): one bit per row of a segment, set when the row is deleted. A delete
//! writes a new generation of the file; segments themselves never change.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, FileKind, HEADER_LEN, HeaderFields};
use crate::manifest::FileRef;

/// A set of deleted row positions within one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeletionVector {
    bits: Vec<u8>,
    rows: usize,
    deleted: usize,
}

impl DeletionVector {
    pub fn empty(rows: usize) -> Self {
        DeletionVector {
            bits: vec![0; rows.div_ceil(8)],
            rows,
            deleted: 0,
        }
    }

    pub fn is_deleted(&self, row: usize) -> bool {
        self.bits[row >> 3] & (1 << (row & 7)) != 0
    }

    /// Marks `row` deleted; returns false if it already was.
    pub fn delete(&mut self, row: usize) -> bool {
        if self.is_deleted(row) {
            return false;
        }
        self.bits[row >> 3] |= 1 << (row & 7);
        self.deleted += 1;
        true
    }

    pub fn deleted(&self) -> usize {
        self.deleted
    }

    pub fn write(&self, path: &Path) -> Result<(u64, u32)> {
        format::write_file(
            path,
            FileKind::Deletes,
            HeaderFields {
                count: self.rows as u64,
                tag: self.deleted as u64,
                ..Default::default()
            },
            &self.bits,
        )
    }

    pub fn read(path: &Path, expect: &FileRef, rows: usize) -> Result<Self> {
        let (fields, bytes) = format::read_file(path, FileKind::Deletes, expect)?;
        let bits = bytes[HEADER_LEN..].to_vec();
        if fields.count as usize != rows || bits.len() != rows.div_ceil(8) {
            return Err(Error::corruption(
                path,
                format!(
                    "deletion vector covers {} rows in {} bytes, segment has {rows} rows",
                    fields.count,
                    bits.len()
                ),
            ));
        }
        let deleted = bits.iter().map(|b| b.count_ones() as usize).sum::<usize>();
        if deleted as u64 != fields.tag {
            return Err(Error::corruption(
                path,
                format!(
                    "header counts {} deletions, bitmap has {deleted}",
                    fields.tag
                ),
            ));
        }
        Ok(DeletionVector {
            bits,
            rows,
            deleted,
        })
    }
}
