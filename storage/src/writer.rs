//! The single writer: every public method validates its input, writes new immutable files,
//! fsyncs them, and publishes them with one manifest commit. A failure at any step leaves the
//! previous version as the current one; files of a failed commit are unreferenced and removed by
//! [`Writer::vacuum`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;

use crate::column::{self, normalize};
use crate::db::Database;
use crate::deletes::DeletionVector;
use crate::error::{Error, Result};
use crate::fsio;
use crate::index::{self, IndexSpec};
use crate::manifest::{
    self, CollectionMeta, ColumnEntry, FILES_DIR, FileRef, IndexEntry, Manifest, SegmentMeta,
    SpaceMeta, VERSIONS_DIR,
};
use crate::rows::{self, RowRecord, StoredImage};
use crate::schema::{ColumnDef, Metric, Modality, NewRow, Schema, SpaceId, SpaceSpec};
use crate::search::RowFilter;
use crate::snapshot::{SegmentView, Snapshot};

/// Tuning of the writer's merge policy.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Merge small segments after each append (see [`Writer::compact`]).
    pub auto_compact: bool,
    /// Segments of one size tier that trigger a merge; tiers grow by this factor.
    pub merge_factor: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            auto_compact: true,
            merge_factor: 8,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub segments_before: usize,
    pub segments_after: usize,
    pub rows_dropped: u64,
    /// The version committed, if anything changed.
    pub version: Option<u64>,
}

/// What a vacuum removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumReport {
    pub versions_removed: usize,
    pub files_removed: usize,
    pub bytes_freed: u64,
}

/// Exclusive write access to a database; dropping it releases the lock.
#[derive(Debug)]
pub struct Writer {
    db: Database,
    _lock: File,
    manifest: Manifest,
    options: WriterOptions,
    merge_error: Option<Error>,
}

/// A segment built in memory, not yet written.
#[derive(Debug, Default)]
struct PendingSegment {
    records: Vec<RowRecord>,
    blob: Vec<u8>,
    texts: u64,
    columns: Vec<(SpaceId, Vec<f32>)>,
}

impl PendingSegment {
    fn push(&mut self, row: RowRecordParts) {
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
struct RowRecordParts<'a> {
    id: u64,
    image: Option<(&'a [u8], String)>,
    texts: Vec<String>,
    split: Option<String>,
    meta: Vec<rows::StoredValue>,
}

impl Writer {
    pub(crate) fn new(db: Database, lock: File) -> Result<Writer> {
        let (manifest, _) = manifest::read_latest(db.path())?;
        Ok(Writer {
            db,
            _lock: lock,
            manifest,
            options: WriterOptions::default(),
            merge_error: None,
        })
    }

    pub fn set_options(&mut self, options: WriterOptions) {
        self.options = options;
    }

    /// The error of the last automatic merge after an append, if it failed (the append itself
    /// was committed).
    pub fn take_merge_error(&mut self) -> Option<Error> {
        self.merge_error.take()
    }

    /// Version of the last commit.
    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A snapshot of the writer's current version.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            self.db.inner.shared.clone(),
            std::sync::Arc::new(self.manifest.clone()),
        )
    }

    fn files_dir(&self) -> std::path::PathBuf {
        self.db.path().join(FILES_DIR)
    }

    /// Publishes `next` as the next version: data files are already fsynced; the `files/`
    /// directory is fsynced so their names are durable, then the manifest is written atomically.
    fn commit(&mut self, mut next: Manifest, message: String) -> Result<u64> {
        let newest_on_disk = manifest::list_versions(self.db.path())?
            .last()
            .copied()
            .unwrap_or(0);
        next.version = newest_on_disk.max(self.manifest.version) + 1;
        next.committed_at_ms = manifest::now_ms();
        next.message = message;
        fsio::sync_dir(&self.files_dir())?;
        manifest::write(self.db.path(), &next)?;
        self.manifest = next;
        Ok(self.manifest.version)
    }

    /// Creates an empty collection.
    pub fn create_collection(
        &mut self,
        name: &str,
        schema: Schema,
        index: IndexSpec,
    ) -> Result<u64> {
        validate_name("collection", name)?;
        if self.manifest.collection(name).is_ok() {
            return Err(Error::AlreadyExists {
                kind: "collection",
                name: name.to_string(),
            });
        }
        let schema = Schema::new(schema.metadata)?;
        index.validate(8)?;
        let mut next = self.manifest.clone();
        let uid = next.next_collection_uid;
        next.next_collection_uid += 1;
        next.collections.push(CollectionMeta {
            name: name.to_string(),
            uid,
            schema,
            index,
            next_row_id: 1,
            next_space_id: 1,
            spaces: Vec::new(),
            active_image: None,
            active_text: None,
            segments: Vec::new(),
        });
        self.commit(next, format!("create collection {name}"))
    }

    /// Drops a collection; its files stay until no retained version references them.
    pub fn drop_collection(&mut self, name: &str) -> Result<u64> {
        self.manifest.collection(name)?;
        let mut next = self.manifest.clone();
        next.collections.retain(|c| c.name != name);
        self.commit(next, format!("drop collection {name}"))
    }

    /// Registers an embedding space (or returns the id of an identical one) and optionally makes
    /// it the active space of its modality.
    pub fn add_space(
        &mut self,
        collection: &str,
        spec: SpaceSpec,
        activate: bool,
    ) -> Result<SpaceId> {
        let mut next = self.manifest.clone();
        let (modality, model) = (spec.modality, spec.model_id.clone());
        let id = stage_space(&mut next, collection, spec, activate)?;
        self.commit(
            next,
            format!("add {modality} space {id} ({model}) to {collection}"),
        )?;
        Ok(id)
    }

    /// Appends rows with optional embeddings (per space: one vector per row for image spaces, one
    /// per caption, in row order, for text spaces) as one new segment. Returns the assigned ids.
    /// Everything is validated before anything is written.
    pub fn append(
        &mut self,
        collection: &str,
        rows: Vec<NewRow>,
        embeddings: &[(SpaceId, &[f32])],
    ) -> Result<Vec<u64>> {
        if rows.is_empty() {
            self.manifest.collection(collection)?;
            return Ok(Vec::new());
        }
        let mut tx = self.transaction();
        let ids = tx.append(collection, rows, embeddings)?;
        tx.commit(format!("append {} rows to {collection}", ids.len()))?;
        Ok(ids)
    }

    /// Starts a transaction: several appends (and schema additions) published by one commit, so
    /// an import larger than memory is still all-or-nothing.
    pub fn transaction(&mut self) -> Transaction<'_> {
        Transaction {
            next: self.manifest.clone(),
            appended: BTreeSet::new(),
            writer: self,
        }
    }

    /// Stages rows as a new segment of `next`: files are written and fsynced, nothing is
    /// published.
    fn stage_append(
        &self,
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

    /// Computes space `space`'s vectors for every segment of `collection` that lacks them,
    /// committing each segment as it is done (a new space's columns are invisible to searches
    /// until the space is activated), so a job killed half-way keeps its finished segments and
    /// the next run resumes after them. With `activate`, a last commit makes the space active.
    /// Returns how many segments were embedded.
    /// `embed` fails with the caller's error type, which this returns unchanged.
    pub fn embed<E: From<Error>>(
        &mut self,
        collection: &str,
        space: SpaceId,
        activate: bool,
        mut embed: impl FnMut(&SegmentView<'_>) -> std::result::Result<Vec<f32>, E>,
    ) -> std::result::Result<usize, E> {
        let snap = self.snapshot();
        let c = snap.collection(collection)?;
        let spec = c.space(space)?.spec.clone();
        let mut count = 0;
        for meta in c.segments.iter().filter(|s| s.column(space).is_none()) {
            let view = snap.segment(c, meta)?;
            let items = meta.items(spec.modality) as usize;
            let vectors = checked_vectors(&spec, space, items, &embed(&view)?)?;
            let mut next = self.manifest.clone();
            let entry = self.write_column(&mut next, &c.index, &spec, space, vectors)?;
            // The segment may have been merged away by another handle's commit: then its rows
            // live on in the merged segment, which a later run embeds.
            let Some(seg) = next
                .collection_mut(collection)?
                .segments
                .iter_mut()
                .find(|s| s.id == meta.id)
            else {
                continue;
            };
            seg.columns.push(entry);
            self.commit(
                next,
                format!("embed segment {} of {collection} in space {space}", meta.id),
            )?;
            count += 1;
        }
        if activate {
            self.activate_spaces(collection, &[space])?;
        }
        Ok(count)
    }

    /// Renames models in the specs of every collection's embedding spaces, `(from, to)` by
    /// model id, in one commit (the engine's migration of stored model references). Vectors
    /// and fingerprints are untouched.
    pub fn rename_models(&mut self, renames: &[(String, String)]) -> Result<u64> {
        let mut next = self.manifest.clone();
        for c in &mut next.collections {
            for s in &mut c.spaces {
                if let Some((_, to)) = renames.iter().find(|(from, _)| *from == s.spec.model_id) {
                    s.spec.model_id = to.clone();
                }
            }
        }
        let list: Vec<String> = renames.iter().map(|(f, t)| format!("{f} -> {t}")).collect();
        self.commit(next, format!("rename models: {}", list.join(", ")))
    }

    /// Makes `spaces` the active spaces of their modalities in one commit (readers see all the
    /// old ones or all the new ones). Every live segment must hold their vectors.
    pub fn activate_spaces(&mut self, collection: &str, spaces: &[SpaceId]) -> Result<u64> {
        let mut next = self.manifest.clone();
        let c = next.collection_mut(collection)?;
        for &space in spaces {
            let modality = c.space(space)?.spec.modality;
            if let Some(seg) = c.segments.iter().find(|s| s.column(space).is_none()) {
                return Err(Error::InvalidArgument(format!(
                    "segment {} of {collection} has no vectors in space {space}; embed it before \
                     activating the space",
                    seg.id
                )));
            }
            set_active(c, modality, space);
        }
        let list: Vec<String> = spaces.iter().map(ToString::to_string).collect();
        self.commit(
            next,
            format!("activate spaces {} of {collection}", list.join(", ")),
        )
    }

    /// Deletes rows by id; unknown or already deleted ids are ignored. Returns how many rows
    /// were deleted.
    pub fn delete(&mut self, collection: &str, ids: &[u64]) -> Result<usize> {
        let wanted: BTreeSet<u64> = ids.iter().copied().collect();
        self.delete_matching(collection, |row| wanted.contains(&row.id()))
    }

    /// Deletes the live rows that pass `filter`. Returns how many rows were deleted.
    pub fn delete_where(&mut self, collection: &str, filter: &RowFilter<'_>) -> Result<usize> {
        self.delete_matching(collection, |row| filter(row))
    }

    fn delete_matching(
        &mut self,
        collection: &str,
        matches: impl Fn(&crate::RowRef<'_>) -> bool,
    ) -> Result<usize> {
        let snap = self.snapshot();
        let c = snap.collection(collection)?;
        let mut next = self.manifest.clone();
        let mut changed = Vec::new();
        let mut total = 0;
        for meta in &c.segments {
            let view = snap.segment(c, meta)?;
            let mut dv: Option<DeletionVector> = None;
            for (local, row) in view.live_rows() {
                if matches(&row) {
                    let dv = dv.get_or_insert_with(|| view.deletion_vector());
                    dv.delete(local);
                    total += 1;
                }
            }
            if let Some(dv) = dv {
                let name = next.new_file_name("del");
                let (len, crc32c) = dv.write(&self.files_dir().join(&name))?;
                changed.push((meta.id, FileRef { name, len, crc32c }, dv.deleted() as u64));
            }
        }
        if total == 0 {
            return Ok(0);
        }
        let nc = next.collection_mut(collection)?;
        for (seg_id, file, deleted) in changed {
            if let Some(seg) = nc.segments.iter_mut().find(|s| s.id == seg_id) {
                seg.deletes = Some(file);
                seg.deleted = deleted;
            }
        }
        nc.segments.retain(|s| s.live_rows() > 0);
        self.commit(next, format!("delete {total} rows from {collection}"))?;
        Ok(total)
    }

    /// Sets the collection's FAISS index and rebuilds the index of every column with it.
    pub fn set_index(&mut self, collection: &str, spec: IndexSpec) -> Result<u64> {
        let snap = self.snapshot();
        let c = snap.collection(collection)?;
        for s in &c.spaces {
            spec.validate(s.spec.dim)?;
        }
        let mut next = self.manifest.clone();
        let mut rebuilt = Vec::new();
        for meta in &c.segments {
            let view = snap.segment(c, meta)?;
            for col in &meta.columns {
                let dim = c.space(col.space)?.spec.dim;
                let vectors = view.vectors(c, col.space)?.ok_or_else(|| {
                    Error::corruption(snap.file_path(&col.file.name), "column vanished")
                })?;
                let index = self.build_index(&mut next, &spec, dim, vectors.as_slice())?;
                rebuilt.push((meta.id, col.space, index));
            }
        }
        let nc = next.collection_mut(collection)?;
        nc.index = spec.clone();
        for (seg_id, space, index) in rebuilt {
            if let Some(col) = nc
                .segments
                .iter_mut()
                .find(|s| s.id == seg_id)
                .and_then(|s| s.columns.iter_mut().find(|c| c.space == space))
            {
                col.index = index;
            }
        }
        self.commit(next, format!("index {collection} with {}", spec.factory))
    }

    /// Merges segments. With `full`, every run of adjacent segments sharing the same embedding
    /// spaces becomes one segment and deleted rows are dropped everywhere. Otherwise the merge
    /// policy runs: `merge_factor` adjacent segments of the same size tier (tier = floor of
    /// log base `merge_factor` of live rows) are merged, and a segment more than half deleted is
    /// rewritten. Indexes of merged segments are rebuilt.
    pub fn compact(&mut self, collection: &str, full: bool) -> Result<CompactReport> {
        self.compact_until(collection, full, &|| false)
    }

    /// [`Writer::compact`], checking `stop` before each merge: once it returns true the
    /// compaction ends with [`Error::Cancelled`] and commits nothing (the merged files written
    /// so far are unreferenced, for [`Writer::vacuum`]).
    pub fn compact_until(
        &mut self,
        collection: &str,
        full: bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<CompactReport> {
        let snap = self.snapshot();
        let c = snap.collection(collection)?;
        let groups = if full {
            full_merge_groups(&c.segments)
        } else {
            policy_merge_groups(&c.segments, self.options.merge_factor)
        };
        let mut report = CompactReport {
            segments_before: c.segments.len(),
            segments_after: c.segments.len(),
            ..Default::default()
        };
        if groups.is_empty() {
            return Ok(report);
        }
        let mut next = self.manifest.clone();
        let mut replacements = Vec::new();
        for group in &groups {
            if stop() {
                return Err(Error::Cancelled);
            }
            let sources: Vec<&SegmentMeta> = group.iter().map(|&i| &c.segments[i]).collect();
            report.rows_dropped += sources.iter().map(|s| s.deleted).sum::<u64>();
            let merged = self.merge(&snap, c, &sources, &mut next)?;
            replacements.push((group.clone(), merged));
        }
        let nc = next.collection_mut(collection)?;
        let mut segments = Vec::new();
        let mut i = 0;
        while i < c.segments.len() {
            if let Some((group, merged)) = replacements.iter().find(|(g, _)| g[0] == i) {
                segments.extend(merged.clone());
                i += group.len();
            } else {
                segments.push(c.segments[i].clone());
                i += 1;
            }
        }
        nc.segments = segments;
        report.segments_after = nc.segments.len();
        report.version = Some(self.commit(
            next,
            format!(
                "compact {collection}: {} -> {} segments",
                report.segments_before, report.segments_after
            ),
        )?);
        Ok(report)
    }

    /// Rewrites the live rows of `sources` (adjacent, same spaces) as one segment.
    fn merge(
        &self,
        snap: &Snapshot,
        c: &CollectionMeta,
        sources: &[&SegmentMeta],
        next: &mut Manifest,
    ) -> Result<Option<SegmentMeta>> {
        let mut pending = PendingSegment::default();
        let spaces: Vec<SpaceId> = sources[0].columns.iter().map(|col| col.space).collect();
        let mut columns: BTreeMap<SpaceId, Vec<f32>> = BTreeMap::new();
        for meta in sources {
            let view = snap.segment(c, meta)?;
            let mut vectors = Vec::new();
            for &space in &spaces {
                let v = view.vectors(c, space)?.ok_or_else(|| {
                    Error::InvalidArgument(format!("segment {} lacks space {space}", meta.id))
                })?;
                vectors.push((space, c.space(space)?.spec.modality, v));
            }
            for (local, row) in view.live_rows() {
                for (space, modality, v) in &vectors {
                    let out = columns.entry(*space).or_default();
                    match modality {
                        Modality::Image => out.extend_from_slice(v.get(local)),
                        Modality::Text => {
                            let start = view.text_start(local);
                            for t in start..start + row.text_count() {
                                out.extend_from_slice(v.get(t));
                            }
                        }
                    }
                }
                pending.push(RowRecordParts {
                    id: row.id(),
                    image: row
                        .image_bytes()
                        .zip(row.image_source())
                        .map(|(b, s)| (b, s.to_string())),
                    texts: row.texts().map(str::to_string).collect(),
                    split: row.split().map(str::to_string),
                    meta: (0..c.schema.metadata.len())
                        .map(|i| stored_value(row.value_at(i)))
                        .collect(),
                });
            }
        }
        if pending.records.is_empty() {
            return Ok(None);
        }
        pending.columns = columns.into_iter().collect();
        self.write_segment(next, &c.name, pending).map(Some)
    }

    /// Removes manifests older than the newest `keep_versions` and every file in `files/` that no
    /// remaining manifest references (including leftovers of failed commits).
    pub fn vacuum(&mut self, keep_versions: usize) -> Result<VacuumReport> {
        let root = self.db.path().to_path_buf();
        let versions = manifest::list_versions(&root)?;
        let keep_from = versions.len().saturating_sub(keep_versions.max(1));
        let (old, kept) = versions.split_at(keep_from);
        let mut referenced: HashSet<String> =
            self.manifest.files().map(|f| f.name.clone()).collect();
        for &v in kept {
            if let Ok(m) = manifest::read(&root, v) {
                referenced.extend(m.files().map(|f| f.name.clone()));
            }
        }
        let mut report = VacuumReport::default();
        for &v in old {
            fsio::remove_file(&manifest::manifest_path(&root, v))?;
            report.versions_removed += 1;
        }
        for name in fsio::list_dir(&root.join(VERSIONS_DIR))? {
            if name.starts_with(".tmp-") {
                fsio::remove_file(&root.join(VERSIONS_DIR).join(name))?;
            }
        }
        fsio::sync_dir(&root.join(VERSIONS_DIR))?;
        let files = self.files_dir();
        for name in fsio::list_dir(&files)? {
            if !referenced.contains(&name) {
                let path = files.join(&name);
                report.bytes_freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fsio::remove_file(&path)?;
                report.files_removed += 1;
            }
        }
        fsio::sync_dir(&files)?;
        Ok(report)
    }

    /// Writes rows, blob, columns and indexes of a new segment; returns its manifest entry.
    fn write_segment(
        &self,
        next: &mut Manifest,
        collection: &str,
        pending: PendingSegment,
    ) -> Result<SegmentMeta> {
        let c = next.collection(collection)?.clone();
        let id = next.next_segment_id;
        next.next_segment_id += 1;
        let dir = self.files_dir();
        let rows_name = next.new_file_name("rows");
        let (len, crc32c) = rows::write_rows(&dir.join(&rows_name), &pending.records)?;
        let rows_file = FileRef {
            name: rows_name,
            len,
            crc32c,
        };
        let blob_name = next.new_file_name("blob");
        let (len, crc32c) = crate::format::write_file(
            &dir.join(&blob_name),
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

    fn write_column(
        &self,
        next: &mut Manifest,
        index: &IndexSpec,
        spec: &SpaceSpec,
        space: SpaceId,
        vectors: Vec<f32>,
    ) -> Result<ColumnEntry> {
        let name = next.new_file_name("emb");
        let (len, crc32c) =
            column::write_column(&self.files_dir().join(&name), space, spec.dim, &vectors)?;
        let index = self.build_index(next, index, spec.dim, &vectors)?;
        Ok(ColumnEntry {
            space,
            file: FileRef { name, len, crc32c },
            index,
        })
    }

    /// Builds and writes a FAISS index when the column is large enough for `spec`.
    fn build_index(
        &self,
        next: &mut Manifest,
        spec: &IndexSpec,
        dim: usize,
        vectors: &[f32],
    ) -> Result<Option<IndexEntry>> {
        if vectors.len() / dim < spec.min_items() {
            return Ok(None);
        }
        let name = next.new_file_name("faiss");
        let path = self.files_dir().join(&name);
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
}

/// Changes staged against one version and published by [`Transaction::commit`] as one new
/// version. Dropping it without committing publishes nothing; its files are unreferenced and
/// [`Writer::vacuum`] removes them.
#[derive(Debug)]
pub struct Transaction<'w> {
    writer: &'w mut Writer,
    next: Manifest,
    /// Collections appended to, for the merge policy after the commit.
    appended: BTreeSet<String>,
}

impl Transaction<'_> {
    /// Adds nullable metadata columns to a collection's schema; rows written before read them as
    /// null. Columns that already exist with the same type are left alone.
    pub fn add_columns(&mut self, collection: &str, columns: Vec<ColumnDef>) -> Result<()> {
        let c = self.next.collection_mut(collection)?;
        let mut metadata = c.schema.metadata.clone();
        for col in columns {
            match metadata.iter().find(|m| m.name == col.name) {
                Some(m) if m.ty == col.ty => {}
                Some(m) => {
                    return Err(Error::TypeMismatch {
                        column: col.name.clone(),
                        expected: m.ty.to_string(),
                        got: col.ty.to_string(),
                    });
                }
                None if !col.nullable => {
                    return Err(Error::InvalidArgument(format!(
                        "column '{}' is added to a collection that may already hold rows, so it \
                         must be nullable",
                        col.name
                    )));
                }
                None => metadata.push(col),
            }
        }
        c.schema = Schema::new(metadata)?;
        Ok(())
    }

    /// Stages rows as a new segment (see [`Writer::append`]); returns their ids.
    pub fn append(
        &mut self,
        collection: &str,
        rows: Vec<NewRow>,
        embeddings: &[(SpaceId, &[f32])],
    ) -> Result<Vec<u64>> {
        let ids = self
            .writer
            .stage_append(&mut self.next, collection, rows, embeddings)?;
        if !ids.is_empty() {
            self.appended.insert(collection.to_string());
        }
        Ok(ids)
    }

    /// Stages an embedding space (see [`Writer::add_space`]), so that rows appended in this
    /// transaction can carry vectors of a space that appears with them.
    pub fn add_space(
        &mut self,
        collection: &str,
        spec: SpaceSpec,
        activate: bool,
    ) -> Result<SpaceId> {
        stage_space(&mut self.next, collection, spec, activate)
    }

    /// A collection as staged so far.
    pub fn collection(&self, collection: &str) -> Result<&CollectionMeta> {
        self.next.collection(collection)
    }

    /// The schema of a collection as staged so far.
    pub fn schema(&self, collection: &str) -> Result<&Schema> {
        Ok(&self.next.collection(collection)?.schema)
    }

    /// Publishes everything staged as one version, then runs the merge policy on the collections
    /// appended to (a failed merge does not undo the commit; see [`Writer::take_merge_error`]).
    pub fn commit(self, message: String) -> Result<u64> {
        let Transaction {
            writer,
            next,
            appended,
        } = self;
        let version = writer.commit(next, message)?;
        if writer.options.auto_compact {
            for collection in &appended {
                if let Err(e) = writer.compact(collection, false) {
                    writer.merge_error = Some(e);
                }
            }
        }
        Ok(version)
    }
}

/// Registers `spec` in `manifest` (or finds an identical space) and optionally activates it.
fn stage_space(
    manifest: &mut Manifest,
    collection: &str,
    spec: SpaceSpec,
    activate: bool,
) -> Result<SpaceId> {
    if spec.dim == 0 {
        return Err(Error::InvalidArgument(
            "an embedding space needs dim > 0".into(),
        ));
    }
    let c = manifest.collection_mut(collection)?;
    let id = match c.spaces.iter().find(|s| s.spec == spec) {
        Some(s) => s.id,
        None => {
            let id = c.next_space_id;
            c.next_space_id += 1;
            c.spaces.push(SpaceMeta {
                id,
                spec: spec.clone(),
            });
            id
        }
    };
    if activate {
        set_active(c, spec.modality, id);
    }
    Ok(id)
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

fn set_active(c: &mut CollectionMeta, modality: Modality, space: SpaceId) {
    match modality {
        Modality::Image => c.active_image = Some(space),
        Modality::Text => c.active_text = Some(space),
    }
}

fn stored_value(v: crate::ValueRef<'_>) -> rows::StoredValue {
    match v {
        crate::ValueRef::Null => rows::StoredValue::Null,
        crate::ValueRef::String(s) => rows::StoredValue::Str(s.to_string()),
        crate::ValueRef::I64(x) => rows::StoredValue::I64(x),
        crate::ValueRef::F64(x) => rows::StoredValue::F64(x),
        crate::ValueRef::Bool(x) => rows::StoredValue::Bool(x),
    }
}

/// Checks count, dimension and finiteness of vectors for `space`, normalising for cosine spaces.
fn checked_vectors(
    spec: &SpaceSpec,
    space: SpaceId,
    items: usize,
    vectors: &[f32],
) -> Result<Vec<f32>> {
    if vectors.len() != items * spec.dim {
        let unit = match spec.modality {
            Modality::Image => "rows",
            Modality::Text => "captions",
        };
        return Err(Error::DimensionMismatch {
            context: format!(
                "embeddings of space {space} ('{}', {} {unit} x dim {})",
                spec.model_id, items, spec.dim
            ),
            expected: items * spec.dim,
            got: vectors.len(),
        });
    }
    if let Some(bad) = vectors.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "embedding value {bad} of space {space} is not finite ({})",
            vectors[bad]
        )));
    }
    let mut owned = vectors.to_vec();
    if spec.metric == Metric::Cosine {
        normalize(&mut owned, spec.dim);
    }
    Ok(owned)
}

fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{kind} name '{name}' must be 1-128 ASCII letters, digits, '_' or '-', not starting with a digit"
        )))
    }
}

fn space_set(s: &SegmentMeta) -> Vec<SpaceId> {
    let mut v: Vec<SpaceId> = s.columns.iter().map(|c| c.space).collect();
    v.sort_unstable();
    v
}

/// Runs of adjacent segments with the same spaces, where merging changes something.
fn full_merge_groups(segments: &[SegmentMeta]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if space_set(&segments[g[0]]) == space_set(s) => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups.retain(|g| g.len() > 1 || segments[g[0]].deleted > 0);
    groups
}

/// Tiered merge policy over adjacent segments (see [`Writer::compact`]).
fn policy_merge_groups(segments: &[SegmentMeta], factor: usize) -> Vec<Vec<usize>> {
    let factor = factor.max(2);
    let tier = |s: &SegmentMeta| (s.live_rows().max(1) as f64).log(factor as f64).floor() as u32;
    let mut groups = Vec::new();
    let mut i = 0;
    while i < segments.len() {
        let s = &segments[i];
        let mut j = i + 1;
        while j < segments.len()
            && j - i < factor
            && tier(&segments[j]) == tier(s)
            && space_set(&segments[j]) == space_set(s)
        {
            j += 1;
        }
        if j - i == factor {
            groups.push((i..j).collect());
            i = j;
        } else if s.deleted * 2 > s.rows {
            groups.push(vec![i]);
            i += 1;
        } else {
            i += 1;
        }
    }
    groups
}
