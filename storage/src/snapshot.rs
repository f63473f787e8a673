//! Snapshots: an immutable view of one committed version. Everything a reader sees comes from the
//! manifest it was opened on, so concurrent commits never show a half-written state.

use std::any::Any;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::column::Column;
use crate::db::Shared;
use crate::deletes::DeletionVector;
use crate::error::Result;
use crate::index::LoadedIndex;
use crate::manifest::{CollectionMeta, FILES_DIR, FileRef, Manifest, SegmentMeta};
use crate::pins::Pin;
use crate::rows::{BlobFile, RowRef, RowsFile, RowsShape};
use crate::schema::{Modality, Schema, SpaceId};

/// Rows and image bytes of one segment, memory-mapped.
#[derive(Debug)]
pub(crate) struct SegmentData {
    pub rows: RowsFile,
    pub blob: BlobFile,
}

/// A consistent, read-only view of one committed version. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) shared: Arc<Shared>,
    pub(crate) manifest: Arc<Manifest>,
    /// Strong references to the files this snapshot loaded, so they stay mapped while it lives.
    held: Arc<Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>>,
    /// Keeps vacuums from removing this version's files while the snapshot lives.
    _pin: Arc<Pin>,
}

/// One segment of a collection in a snapshot: its rows, deletions and embedding columns.
#[derive(Debug, Clone)]
pub struct SegmentView<'s> {
    pub meta: &'s SegmentMeta,
    pub schema: &'s Schema,
    data: Arc<SegmentData>,
    deletes: Option<Arc<DeletionVector>>,
    snapshot: &'s Snapshot,
}

/// A row fetched by id, owning what keeps its memory map alive.
#[derive(Debug, Clone)]
pub struct RowHandle {
    data: Arc<SegmentData>,
    /// The snapshot's manifest, which holds the collection's schema (shared, not copied).
    manifest: Arc<Manifest>,
    collection: usize,
    local: usize,
}

impl RowHandle {
    pub fn row(&self) -> RowRef<'_> {
        RowRef {
            rec: &self.data.rows.rows()[self.local],
            blob: self.data.blob.body(),
            schema: &self.manifest.collections[self.collection].schema,
        }
    }
}

impl Snapshot {
    pub(crate) fn new(shared: Arc<Shared>, manifest: Arc<Manifest>, pin: Arc<Pin>) -> Snapshot {
        Snapshot {
            shared,
            manifest,
            held: Arc::default(),
            _pin: pin,
        }
    }

    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn collections(&self) -> &[CollectionMeta] {
        &self.manifest.collections
    }

    pub fn collection(&self, name: &str) -> Result<&CollectionMeta> {
        self.manifest.collection(name)
    }

    pub(crate) fn file_path(&self, name: &str) -> PathBuf {
        self.shared.root.join(FILES_DIR).join(name)
    }

    fn load<T: Any + Send + Sync>(
        &self,
        file: &FileRef,
        load: impl FnOnce(PathBuf) -> Result<T>,
    ) -> Result<Arc<T>> {
        let value = self
            .shared
            .cache
            .get_or_load(&file.name, || load(self.shared.local_file(file)?))?;
        let erased: Arc<dyn Any + Send + Sync> = value.clone();
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(file.name.clone())
            .or_insert(erased);
        Ok(value)
    }

    /// The segments of a collection, loaded (mapped and verified) on first use.
    pub fn segments<'s>(&'s self, collection: &'s CollectionMeta) -> Result<Vec<SegmentView<'s>>> {
        collection
            .segments
            .iter()
            .map(|meta| self.segment(collection, meta))
            .collect()
    }

    pub fn segment<'s>(
        &'s self,
        collection: &'s CollectionMeta,
        meta: &'s SegmentMeta,
    ) -> Result<SegmentView<'s>> {
        let data = self.load(&meta.rows_file, |rows_path| {
            let rows = RowsFile::open(&rows_path, &meta.rows_file, &RowsShape::of(meta))?;
            let blob = BlobFile::open(&self.shared.local_file(&meta.blob_file)?, &meta.blob_file)?;
            Ok(SegmentData { rows, blob })
        })?;
        let deletes = match &meta.deletes {
            Some(f) => Some(self.load(f, |p| DeletionVector::read(&p, f, meta.rows as usize))?),
            None => None,
        };
        Ok(SegmentView {
            meta,
            schema: &collection.schema,
            data,
            deletes,
            snapshot: self,
        })
    }

    /// The segment and position of a live row, if there is one with this id.
    fn locate<'s>(
        &'s self,
        c: &'s CollectionMeta,
        id: u64,
    ) -> Result<Option<(SegmentView<'s>, usize)>> {
        // Id ranges of segments built in parallel may interleave (a merged segment's range
        // spans ids another builder held), so every segment whose range holds the id is asked.
        for meta in c
            .segments
            .iter()
            .filter(|s| (s.min_row_id..=s.max_row_id).contains(&id))
        {
            let seg = self.segment(c, meta)?;
            let found = seg
                .data
                .rows
                .rows()
                .binary_search_by_key(&id, |r| r.id.to_native());
            match found {
                Ok(local) if !seg.is_deleted(local) => return Ok(Some((seg, local))),
                Ok(_) => return Ok(None),
                Err(_) => {}
            }
        }
        Ok(None)
    }

    /// Fetches a live row by id.
    pub fn get(&self, collection: &str, id: u64) -> Result<Option<RowHandle>> {
        let index = self.manifest.collection_index(collection)?;
        let c = &self.manifest.collections[index];
        let Some((seg, local)) = self.locate(c, id)? else {
            return Ok(None);
        };
        Ok(Some(RowHandle {
            data: seg.data.clone(),
            manifest: self.manifest.clone(),
            collection: index,
            local,
        }))
    }

    /// The stored vector of a live row in `space`: its image vector, or for a text space the
    /// vector of caption `text_index`. `None` when the row does not exist, has no such caption,
    /// or its segment is not embedded in `space`.
    pub fn vector_of(
        &self,
        collection: &str,
        space: SpaceId,
        row_id: u64,
        text_index: usize,
    ) -> Result<Option<Vec<f32>>> {
        let c = self.collection(collection)?;
        let modality = c.space(space)?.spec.modality;
        let Some((seg, local)) = self.locate(c, row_id)? else {
            return Ok(None);
        };
        let item = match modality {
            Modality::Image => local,
            Modality::Text if text_index < seg.row(local).text_count() => {
                seg.text_start(local) + text_index
            }
            Modality::Text => return Ok(None),
        };
        Ok(seg.vectors(c, space)?.map(|v| v.get(item).to_vec()))
    }

    /// Calls `f` on every live row of `collection` (in id order) that passes `filter`.
    pub fn scan(
        &self,
        collection: &str,
        filter: Option<&crate::RowFilter<'_>>,
        mut f: impl FnMut(RowRef<'_>) -> Result<()>,
    ) -> Result<()> {
        let c = self.collection(collection)?;
        for seg in self.segments(c)? {
            for (_, row) in seg.live_rows() {
                if filter.is_none_or(|p| p(&row)) {
                    f(row)?;
                }
            }
        }
        Ok(())
    }

    /// Number of live rows in `collection`.
    pub fn count(&self, collection: &str) -> Result<u64> {
        Ok(self.collection(collection)?.live_rows())
    }
}

impl<'s> SegmentView<'s> {
    pub fn len(&self) -> usize {
        self.meta.rows as usize
    }

    pub fn is_empty(&self) -> bool {
        self.meta.rows == 0
    }

    pub fn is_deleted(&self, local: usize) -> bool {
        self.deletes.as_ref().is_some_and(|d| d.is_deleted(local))
    }

    /// Row at position `local` of the segment (deleted or not).
    pub fn row(&self, local: usize) -> RowRef<'_> {
        RowRef {
            rec: &self.data.rows.rows()[local],
            blob: self.data.blob.body(),
            schema: self.schema,
        }
    }

    /// Live rows with their positions.
    pub fn live_rows(&self) -> impl Iterator<Item = (usize, RowRef<'_>)> + '_ {
        (0..self.len())
            .filter(|&i| !self.is_deleted(i))
            .map(|i| (i, self.row(i)))
    }

    /// Position of the first caption of row `local` among the segment's captions.
    pub fn text_start(&self, local: usize) -> usize {
        self.data.rows.rows()[local].text_start.to_native() as usize
    }

    /// Row position owning caption position `item`.
    pub fn row_of_text(&self, item: usize) -> usize {
        let rows = self.data.rows.rows();
        rows.partition_point(|r| r.text_start.to_native() as usize <= item) - 1
    }

    /// The segment's vectors in `space` (`None` if the segment was not embedded in it): one per
    /// row for image spaces, one per caption for text spaces, row-major, memory-mapped.
    pub fn vectors(&self, collection: &CollectionMeta, space: SpaceId) -> Result<Option<Vectors>> {
        let Some(entry) = self.meta.column(space) else {
            return Ok(None);
        };
        let spec = &collection.space(space)?.spec;
        let count = self.meta.items(spec.modality) as usize;
        let column = self.snapshot.load(&entry.file, |p| {
            Column::open(&p, &entry.file, space, spec.dim, count)
        })?;
        Ok(Some(Vectors {
            column,
            dim: spec.dim,
        }))
    }

    pub(crate) fn index(&self, space: SpaceId) -> Result<Option<Arc<LoadedIndex>>> {
        let Some(entry) = self.meta.column(space).and_then(|c| c.index.as_ref()) else {
            return Ok(None);
        };
        self.snapshot
            .load(&entry.file, |p| {
                let bytes = crate::fsio::read(&p)?;
                crate::format::check_committed(&p, &bytes, crc32c::crc32c(&bytes), &entry.file)?;
                LoadedIndex::load(&p, &entry.spec)
            })
            .map(Some)
    }

    /// Bitmap (LSB-first) of the items of `modality` whose rows are live and pass `filter`, and
    /// how many there are; `None` when every item qualifies.
    pub(crate) fn allowed_items(
        &self,
        modality: Modality,
        filter: Option<&crate::RowFilter<'_>>,
    ) -> Option<(Vec<u8>, usize)> {
        if filter.is_none() && self.meta.deleted == 0 {
            return None;
        }
        let items = self.meta.items(modality) as usize;
        let mut bits = vec![0u8; items.div_ceil(8)];
        let mut count = 0;
        for (local, row) in self.live_rows() {
            if filter.is_some_and(|p| !p(&row)) {
                continue;
            }
            let range = match modality {
                Modality::Image => local..local + 1,
                Modality::Text => {
                    let start = self.text_start(local);
                    start..start + row.text_count()
                }
            };
            for i in range {
                bits[i >> 3] |= 1 << (i & 7);
                count += 1;
            }
        }
        Some((bits, count))
    }
}

/// A memory-mapped embedding column of one segment.
#[derive(Debug, Clone)]
pub struct Vectors {
    column: Arc<Column>,
    dim: usize,
}

impl Vectors {
    /// All vectors, row-major (`len() * dim()` values), read in place from the file.
    pub fn as_slice(&self) -> &[f32] {
        self.column.vectors()
    }

    pub fn get(&self, i: usize) -> &[f32] {
        self.column.vector(i)
    }

    pub fn len(&self) -> usize {
        self.column.len()
    }

    pub fn is_empty(&self) -> bool {
        self.column.len() == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
}
