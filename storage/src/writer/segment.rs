//! Segments being written: rows built in memory (`PendingSegment`), their files written and
//! fsynced (rows, blob, an embedding column per space, a FAISS index when the column is large
//! enough), staged into the next manifest without publishing it.

use std::collections::HashSet;
use std::path::PathBuf;

use super::checked_vectors;
use crate::column;
use crate::crashpoint::crash_point;
use crate::deletes::DeletionVector;
use crate::error::{Error, Result};
use crate::fsio;
use crate::index::{self, IndexSpec};
use crate::manifest::{ColumnEntry, FileRef, IndexEntry, Manifest, SegmentMeta};
use crate::rows::{self, RowRecord, StoredImage};
use crate::schema::{Modality, NewRow, SpaceId, SpaceSpec};
use crate::snapshot::SegmentView;

/// A segment built in memory, not yet written.
#[derive(Debug, Default)]
pub(super) struct PendingSegment {
    pub records: Vec<RowRecord>,
    pub blob: Vec<u8>,
    pub texts: u64,
    pub columns: Vec<(SpaceId, Vec<f32>)>,
}

impl PendingSegment {
    pub(super) fn push(&mut self, row: RowRecordParts) {
        let image = row.image.map(|(bytes, source)| {
            let offset = self.blob.len() as u64;
            self.blob.extend_from_slice(bytes);
            StoredImage {
                offset,
                len: bytes.len() as u64,
                source,
            }
        });
        let text_start = self.texts;
        self.texts += row.texts.len() as u64;
        self.records.push(RowRecord {
            id: row.id,
            image,
            texts: row.texts,
            text_start,
            split: row.split,
            meta: row.meta,
        });
    }
}

/// The owned parts of a row on its way into a segment.
pub(super) struct RowRecordParts<'a> {
    pub id: u64,
    pub image: Option<(&'a [u8], String)>,
    pub texts: Vec<String>,
    pub split: Option<String>,
    pub meta: Vec<rows::StoredValue>,
}

/// Where a segment's files go and how they are named: by the manifest's counter for the
/// writer's own commits, by a random token for a [`super::SegmentBuilder`], which writes without
/// the writer lock and so cannot advance the counter.
pub(super) struct SegmentFiles {
    dir: PathBuf,
    naming: Naming,
}

enum Naming {
    Counter,
    Token { token: String, next: u64 },
}

/// The first letter of the files segment builders write (`s<token>-<n>.<ext>`); the writer's
/// own are `f<counter>.<ext>`.
pub(crate) const BUILT_FILE_PREFIX: char = 's';

impl SegmentFiles {
    pub(super) fn counter(dir: PathBuf) -> Self {
        SegmentFiles {
            dir,
            naming: Naming::Counter,
        }
    }

    pub(super) fn token(dir: PathBuf, token: String) -> Self {
        SegmentFiles {
            dir,
            naming: Naming::Token { token, next: 1 },
        }
    }

    fn name(&mut self, next: &mut Manifest, ext: &str) -> String {
        match &mut self.naming {
            Naming::Counter => next.new_file_name(ext),
            Naming::Token { token, next } => {
                *next += 1;
                format!("{BUILT_FILE_PREFIX}{token}-{:06}.{ext}", *next - 1)
            }
        }
    }

    /// Stages rows as a new segment of `next` with ids from the collection's `next_row_id`:
    /// files are written and fsynced, nothing is published.
    pub(super) fn stage_append(
        &mut self,
        next: &mut Manifest,
        collection: &str,
        rows: Vec<NewRow>,
        embeddings: &[(SpaceId, &[f32])],
    ) -> Result<Vec<u64>> {
        let c = next.collection(collection)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut pending = PendingSegment::default();
        let first_id = c.next_row_id;
        for (i, row) in rows.iter().enumerate() {
            let meta = rows::validate_row(&c.schema, row)
                .map_err(|e| Error::InvalidArgument(format!("row {i}: {e}")))?;
            pending.push(RowRecordParts {
                id: first_id + i as u64,
                image: row
                    .image
                    .as_ref()
                    .map(|im| (&im.bytes[..], im.source.clone())),
                texts: row.texts.clone(),
                split: row.split.clone(),
                meta,
            });
        }
        let mut seen = HashSet::new();
        for &(space, vectors) in embeddings {
            if !seen.insert(space) {
                return Err(Error::InvalidArgument(format!(
                    "embeddings for space {space} are given twice"
                )));
            }
            let spec = &c.space(space)?.spec;
            let items = match spec.modality {
                Modality::Image => rows.len(),
                Modality::Text => pending.texts as usize,
            };
            pending
                .columns
                .push((space, checked_vectors(spec, space, items, vectors)?));
        }
        let ids: Vec<u64> = (first_id..first_id + rows.len() as u64).collect();
        let seg = self.write_segment(next, collection, pending)?;
        let c = next.collection_mut(collection)?;
        c.next_row_id = first_id + rows.len() as u64;
        c.segments.push(seg);
        Ok(ids)
    }

    /// Writes rows, blob, columns and indexes of a new segment; returns its manifest entry.
    pub(super) fn write_segment(
        &mut self,
        next: &mut Manifest,
        collection: &str,
        pending: PendingSegment,
    ) -> Result<SegmentMeta> {
        let c = next.collection(collection)?.clone();
        let id = next.next_segment_id;
        next.next_segment_id += 1;
        let rows_name = self.name(next, "rows");
        let (len, crc32c) = rows::write_rows(&self.dir.join(&rows_name), &pending.records)?;
        let rows_file = FileRef {
            name: rows_name,
            len,
            crc32c,
        };
        let blob_name = self.name(next, "blob");
        let (len, crc32c) = crate::format::write_file(
            &self.dir.join(&blob_name),
            crate::format::FileKind::Blob,
            Default::default(),
            &pending.blob,
        )?;
        let blob_file = FileRef {
            name: blob_name,
            len,
            crc32c,
        };
        let mut columns = Vec::new();
        for (space, vectors) in pending.columns {
            let spec = c.space(space)?.spec.clone();
            columns.push(self.write_column(next, &c.index, &spec, space, vectors)?);
        }
        crash_point("storage::segment-written");
        Ok(SegmentMeta {
            id,
            rows: pending.records.len() as u64,
            texts: pending.texts,
            min_row_id: pending.records.first().map_or(0, |r| r.id),
            max_row_id: pending.records.last().map_or(0, |r| r.id),
            rows_file,
            blob_file,
            deletes: None,
            deleted: 0,
            columns,
        })
    }

    pub(super) fn write_column(
        &mut self,
        next: &mut Manifest,
        index: &IndexSpec,
        spec: &SpaceSpec,
        space: SpaceId,
        vectors: Vec<f32>,
    ) -> Result<ColumnEntry> {
        let name = self.name(next, "emb");
        let (len, crc32c) = column::write_column(&self.dir.join(&name), space, spec.dim, &vectors)?;
        let index = self.build_index(next, index, spec.dim, &vectors)?;
        Ok(ColumnEntry {
            space,
            file: FileRef { name, len, crc32c },
            index,
        })
    }

    /// Builds and writes a FAISS index when the column is large enough for `spec`.
    pub(super) fn build_index(
        &mut self,
        next: &mut Manifest,
        spec: &IndexSpec,
        dim: usize,
        vectors: &[f32],
    ) -> Result<Option<IndexEntry>> {
        if vectors.len() / dim < spec.min_items() {
            return Ok(None);
        }
        let name = self.name(next, "faiss");
        let path = self.dir.join(&name);
        index::build(spec, dim, vectors, &path)?;
        let bytes = fsio::read(&path)?;
        Ok(Some(IndexEntry {
            spec: spec.clone(),
            file: FileRef {
                name,
                len: bytes.len() as u64,
                crc32c: crc32c::crc32c(&bytes),
            },
        }))
    }

    /// A deletion vector's file, written and fsynced.
    pub(super) fn write_deletes(
        &mut self,
        next: &mut Manifest,
        dv: &DeletionVector,
    ) -> Result<FileRef> {
        let name = self.name(next, "del");
        let (len, crc32c) = dv.write(&self.dir.join(&name))?;
        Ok(FileRef { name, len, crc32c })
    }
}

impl SegmentView<'_> {
    /// A copy of the segment's deletions, to extend in a new generation.
    pub(crate) fn deletion_vector(&self) -> DeletionVector {
        let mut dv = DeletionVector::empty(self.len());
        for i in (0..self.len()).filter(|&i| self.is_deleted(i)) {
            dv.delete(i);
        }
        dv
    }
}

pub(super) fn stored_value(v: crate::ValueRef<'_>) -> rows::StoredValue {
    match v {
        crate::ValueRef::Null => rows::StoredValue::Null,
        crate::ValueRef::String(s) => rows::StoredValue::Str(s.to_string()),
        crate::ValueRef::I64(x) => rows::StoredValue::I64(x),
        crate::ValueRef::F64(x) => rows::StoredValue::F64(x),
        crate::ValueRef::Bool(x) => rows::StoredValue::Bool(x),
    }
}
