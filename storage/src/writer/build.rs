//! Two-phase writes: segments built by many processes (or machines) at once and published by
//! one commit.
//!
//! 1. Row ids are reserved in short commits ([`Writer::reserve_ids`]), so builders never hand
//!    out the same id.
//! 2. A [`SegmentBuilder`] works on a snapshot without the writer lock: it writes a segment's
//!    immutable files (rows, blob, embedding columns, FAISS indexes) under names of its own
//!    (`s<token>-<n>.<ext>`) and returns their description, [`BuiltSegments`], which can travel
//!    between processes as bytes.
//! 3. One commit publishes many descriptions ([`Transaction::publish`]) after checking them
//!    against the collection as it is then: same collection, compatible schema, the model
//!    fingerprints and dimensions of its active spaces, the index, ids inside reserved ranges
//!    and overlapping nothing, files present with their committed lengths.
//!
//! A model's vectors for existing segments are built the same way ([`build_columns`], then
//! [`Transaction::publish_columns`]): workers embed the segments they are given, one commit
//! attaches every column.
//!
//! Files of a builder that never publishes are orphans; [`Writer::vacuum`] removes them once
//! they are older than the grace period that protects builds still running.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};

use super::segment::SegmentFiles;
use super::{Transaction, Writer, set_active, stage_space};
use crate::db::Database;
use crate::error::{Error, Result};
use crate::fsio;
use crate::manifest::{
    CollectionMeta, ColumnEntry, FILES_DIR, IdRange, Manifest, SegmentMeta, SpaceMeta,
};
use crate::schema::{ColumnDef, Modality, NewRow, Schema, SpaceId, SpaceSpec};
use crate::snapshot::SegmentView;

/// The most ids one reservation may take: far more than any build, far from overflowing.
const MAX_RESERVATION: u64 = 1 << 40;

/// Version of the [`BuiltSegments`] encoding; publishers refuse other versions.
const BUILT_FORMAT: u32 = 1;

/// What a [`SegmentBuilder`] wrote: segments whose files are durable but which no version
/// references yet. Space ids inside are the builder's; publishing maps them by specification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuiltSegments {
    format: u32,
    collection: String,
    /// The collection's uid at build time: a collection dropped and created again under the
    /// same name is another collection.
    collection_uid: u64,
    /// The schema the rows' metadata values follow, by position.
    schema: Schema,
    /// The spaces the segments' columns belong to, and whether the builder made them active.
    spaces: Vec<(SpaceMeta, bool)>,
    /// The id ranges the builder reserved; every segment's ids lie in one of them.
    reserved: Vec<IdRange>,
    segments: Vec<SegmentMeta>,
}

impl BuiltSegments {
    /// The collection the segments belong to.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// Rows in all segments.
    pub fn rows(&self) -> u64 {
        self.segments.iter().map(|s| s.rows).sum()
    }

    /// Names of the data files the segments consist of.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.segments
            .iter()
            .flat_map(SegmentMeta::files)
            .map(|f| f.name.as_str())
    }

    /// The description as bytes (JSON), to send from a worker to the publisher.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("built segments serialise")
    }

    /// Reads a description made by [`BuiltSegments::to_bytes`]. Everything in it is checked
    /// again when it is published, so bytes from an untrusted worker cannot damage the database.
    pub fn from_bytes(bytes: &[u8]) -> Result<BuiltSegments> {
        decode(bytes, "segments", |b: &BuiltSegments| b.format)
    }
}

/// Columns of one embedding space built for existing segments by [`build_columns`], not yet
/// attached to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuiltColumns {
    format: u32,
    collection: String,
    collection_uid: u64,
    space: SpaceMeta,
    columns: Vec<BuiltColumn>,
}

/// One segment's column; the segment is named by id and rows file, so a segment merged away
/// since (whose id is gone) is recognised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BuiltColumn {
    segment: u64,
    rows_file: String,
    column: ColumnEntry,
}

impl BuiltColumns {
    /// The segments the columns are for.
    pub fn segments(&self) -> Vec<u64> {
        self.columns.iter().map(|c| c.segment).collect()
    }

    /// Names of the data files written.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().flat_map(|c| {
            std::iter::once(c.column.file.name.as_str())
                .chain(c.column.index.as_ref().map(|i| i.file.name.as_str()))
        })
    }

    /// The description as bytes (JSON), to send from a worker to the publisher.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("built columns serialise")
    }

    /// Reads a description made by [`BuiltColumns::to_bytes`] (checked again when published).
    pub fn from_bytes(bytes: &[u8]) -> Result<BuiltColumns> {
        decode(bytes, "columns", |b: &BuiltColumns| b.format)
    }
}

/// A description of built `what` from its JSON bytes, in this release's format.
fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    format: impl Fn(&T) -> u32,
) -> Result<T> {
    let built: T = serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidArgument(format!("not a description of built {what}: {e}")))?;
    if format(&built) != BUILT_FORMAT {
        return Err(Error::InvalidArgument(format!(
            "built {what} of format {}, this release reads format {BUILT_FORMAT}",
            format(&built)
        )));
    }
    Ok(built)
}

/// Computes space `space`'s vectors for `segments` of `collection` (those still in the
/// database's latest version and lacking them; the others are left out) and writes them
/// without the writer lock, for [`Transaction::publish_columns`]. `embed` returns a segment's
/// vectors (every row, deleted ones included, in order) and fails with the caller's error type.
pub fn build_columns<E: From<Error>>(
    db: &Database,
    collection: &str,
    space: SpaceId,
    segments: &[u64],
    mut embed: impl FnMut(&SegmentView<'_>) -> std::result::Result<Vec<f32>, E>,
) -> std::result::Result<BuiltColumns, E> {
    let snap = db.snapshot()?;
    let c = snap.collection(collection)?;
    let space = c.space(space)?.clone();
    let mut files = SegmentFiles::token(db.path().join(FILES_DIR), random_token());
    let mut next = snap.manifest().clone();
    let mut columns = Vec::new();
    for meta in c
        .segments
        .iter()
        .filter(|s| segments.contains(&s.id) && s.column(space.id).is_none())
    {
        let view = snap.segment(c, meta)?;
        let items = meta.items(space.spec.modality) as usize;
        let vectors = super::checked_vectors(&space.spec, space.id, items, &embed(&view)?)?;
        let column = files.write_column(&mut next, &c.index, &space.spec, space.id, vectors)?;
        columns.push(BuiltColumn {
            segment: meta.id,
            rows_file: meta.rows_file.name.clone(),
            column,
        });
    }
    fsio::sync_dir(&db.path().join(FILES_DIR))?;
    upload(
        db,
        columns.iter().flat_map(|c| {
            std::iter::once(&c.column.file).chain(c.column.index.as_ref().map(|i| &i.file))
        }),
    )?;
    Ok(BuiltColumns {
        format: BUILT_FORMAT,
        collection: collection.to_string(),
        collection_uid: c.uid,
        space,
        columns,
    })
}

/// Where the load path stages rows: a [`Transaction`] (published by its commit) or a
/// [`SegmentBuilder`] (published later, by another process's commit).
pub trait Stage {
    /// A collection as staged so far.
    fn collection(&self, collection: &str) -> Result<&CollectionMeta>;
    /// See [`Transaction::add_columns`].
    fn add_columns(&mut self, collection: &str, columns: Vec<ColumnDef>) -> Result<()>;
    /// See [`Transaction::add_space`].
    fn add_space(&mut self, collection: &str, spec: SpaceSpec, activate: bool) -> Result<SpaceId>;
    /// Stages rows as a new segment; returns their ids.
    fn append(
        &mut self,
        collection: &str,
        rows: Vec<NewRow>,
        embeddings: &[(SpaceId, &[f32])],
    ) -> Result<Vec<u64>>;
}

impl Stage for Transaction<'_> {
    fn collection(&self, collection: &str) -> Result<&CollectionMeta> {
        self.next.collection(collection)
    }

    fn add_columns(&mut self, collection: &str, columns: Vec<ColumnDef>) -> Result<()> {
        Transaction::add_columns(self, collection, columns)
    }

    fn add_space(&mut self, collection: &str, spec: SpaceSpec, activate: bool) -> Result<SpaceId> {
        Transaction::add_space(self, collection, spec, activate)
    }

    fn append(
        &mut self,
        collection: &str,
        rows: Vec<NewRow>,
        embeddings: &[(SpaceId, &[f32])],
    ) -> Result<Vec<u64>> {
        Transaction::append(self, collection, rows, embeddings)
    }
}

/// Writes segments of one collection without the writer lock, for a later
/// [`Transaction::publish`]. Several builders, in any processes that see the database's files,
/// run at once; each reserves its row ids with a short commit when it needs more.
#[derive(Debug)]
pub struct SegmentBuilder {
    db: Database,
    collection: String,
    /// The collection as the builder sees it: the snapshot it started from, plus its own
    /// staged columns, spaces and segments.
    next: Manifest,
    token: String,
    files_written: u64,
    first_segment: u64,
    /// Ids left in the current reservation.
    ids: IdRange,
    reserved: Vec<IdRange>,
    /// Ids asked for at each reservation beyond what an append needs.
    reserve_ahead: u64,
}

impl SegmentBuilder {
    /// A builder for `collection` at the database's latest version. `expected_rows` sizes the
    /// first reservation (made at the first append); more are made when rows keep coming, and
    /// ids reserved but not used are simply never used.
    pub fn new(db: &Database, collection: &str, expected_rows: u64) -> Result<SegmentBuilder> {
        let snap = db.snapshot()?;
        let next = snap.manifest().clone();
        next.collection(collection)?;
        Ok(SegmentBuilder {
            db: db.clone(),
            collection: collection.to_string(),
            first_segment: next.next_segment_id,
            next,
            token: random_token(),
            files_written: 0,
            ids: IdRange { first: 0, end: 0 },
            reserved: Vec::new(),
            reserve_ahead: expected_rows.clamp(1, MAX_RESERVATION),
        })
    }

    fn check_collection(&self, collection: &str) -> Result<()> {
        if collection == self.collection {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "this segment builder writes collection '{}', not '{collection}'",
                self.collection
            )))
        }
    }

    /// The files' names and the manifest's next ids, as a [`SegmentFiles`] continuing where
    /// the last append stopped.
    fn files(&self) -> SegmentFiles {
        SegmentFiles::token(
            self.db.path().join(FILES_DIR),
            format!("{}-{:04}", self.token, self.files_written),
        )
    }

    /// Reserves ids when the current reservation cannot hold `rows` more.
    fn ensure_ids(&mut self, rows: u64) -> Result<()> {
        if self.ids.len() >= rows {
            return Ok(());
        }
        let count = rows.max(self.reserve_ahead);
        let range = self.db.writer()?.reserve_ids(&self.collection, count)?;
        self.reserved.push(range);
        self.ids = range;
        // Later reservations are as large as what came so far, so their number stays
        // logarithmic in the rows of a build that was larger than expected.
        self.reserve_ahead = self
            .reserve_ahead
            .max(rows)
            .saturating_mul(2)
            .min(MAX_RESERVATION);
        Ok(())
    }

    /// Everything written, to publish. The files are durable (each was fsynced, and so is
    /// their folder).
    pub fn finish(self) -> Result<BuiltSegments> {
        fsio::sync_dir(&self.db.path().join(FILES_DIR))?;
        let c = self.next.collection(&self.collection)?;
        let segments: Vec<SegmentMeta> = c
            .segments
            .iter()
            .filter(|s| s.id >= self.first_segment)
            .cloned()
            .collect();
        upload(&self.db, segments.iter().flat_map(SegmentMeta::files))?;
        let used: std::collections::BTreeSet<SpaceId> = segments
            .iter()
            .flat_map(|s| s.columns.iter().map(|col| col.space))
            .collect();
        let spaces = c
            .spaces
            .iter()
            .filter(|s| used.contains(&s.id))
            .map(|s| (s.clone(), c.active(s.spec.modality) == Some(s.id)))
            .collect();
        Ok(BuiltSegments {
            format: BUILT_FORMAT,
            collection: self.collection.clone(),
            collection_uid: c.uid,
            schema: c.schema.clone(),
            spaces,
            reserved: self.reserved,
            segments,
        })
    }
}

impl Stage for SegmentBuilder {
    fn collection(&self, collection: &str) -> Result<&CollectionMeta> {
        self.check_collection(collection)?;
        self.next.collection(collection)
    }

    fn add_columns(&mut self, collection: &str, columns: Vec<ColumnDef>) -> Result<()> {
        self.check_collection(collection)?;
        super::transaction::add_columns(&mut self.next, collection, columns)
    }

    fn add_space(&mut self, collection: &str, spec: SpaceSpec, activate: bool) -> Result<SpaceId> {
        self.check_collection(collection)?;
        stage_space(&mut self.next, collection, spec, activate)
    }

    fn append(
        &mut self,
        collection: &str,
        rows: Vec<NewRow>,
        embeddings: &[(SpaceId, &[f32])],
    ) -> Result<Vec<u64>> {
        self.check_collection(collection)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_ids(rows.len() as u64)?;
        self.next.collection_mut(collection)?.next_row_id = self.ids.first;
        let mut files = self.files();
        self.files_written += 1;
        let ids = files.stage_append(&mut self.next, collection, rows, embeddings)?;
        self.ids.first += ids.len() as u64;
        Ok(ids)
    }
}

/// On object storage, uploads a builder's files, so that a publisher on another machine finds
/// them.
fn upload<'a>(
    db: &Database,
    files: impl Iterator<Item = &'a crate::manifest::FileRef>,
) -> Result<()> {
    if let Some(remote) = &db.inner.shared.remote {
        for file in files {
            remote.upload(&file.name, &db.path().join(FILES_DIR).join(&file.name))?;
        }
    }
    Ok(())
}

/// 128 random bits as hex: file names no other builder, in any process, picks.
pub(super) fn random_token() -> String {
    let state = std::collections::hash_map::RandomState::new();
    let part = |salt: u64| {
        let mut h = state.build_hasher();
        h.write_u64(salt);
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", part(1), part(2))
}

impl Writer {
    /// Reserves `count` row ids of `collection` in one commit, for a [`SegmentBuilder`].
    /// On object storage a reservation that another writer's commit beat is made again on
    /// top of it.
    pub fn reserve_ids(&mut self, collection: &str, count: u64) -> Result<IdRange> {
        if !(1..=MAX_RESERVATION).contains(&count) {
            return Err(Error::InvalidArgument(format!(
                "a reservation takes 1 to {MAX_RESERVATION} row ids, not {count}"
            )));
        }
        self.retry_on_conflict(|w| w.reserve_once(collection, count))
    }

    fn reserve_once(&mut self, collection: &str, count: u64) -> Result<IdRange> {
        let mut next = self.manifest.clone();
        let c = next.collection_mut(collection)?;
        let range = IdRange {
            first: c.next_row_id,
            end: c.next_row_id + count,
        };
        c.next_row_id = range.end;
        c.reservations.push(range);
        self.commit(
            next,
            format!(
                "reserve row ids {} to {} of {collection}",
                range.first,
                range.end - 1
            ),
        )?;
        Ok(range)
    }

    /// Attaches built columns in one commit (see [`Transaction::publish_columns`]); returns
    /// the version and how many columns were attached.
    pub fn publish_columns(&mut self, built: &[BuiltColumns]) -> Result<(u64, usize)> {
        self.retry_on_conflict(|w| w.publish_columns_once(built))
    }

    fn publish_columns_once(&mut self, built: &[BuiltColumns]) -> Result<(u64, usize)> {
        let mut tx = self.transaction();
        let mut attached = 0;
        for b in built {
            attached += tx.publish_columns(b)?;
        }
        let names: std::collections::BTreeSet<&str> =
            built.iter().map(|b| b.collection.as_str()).collect();
        let names: Vec<&str> = names.into_iter().collect();
        let version = tx.commit(format!(
            "publish {attached} built columns into {}",
            names.join(", ")
        ))?;
        Ok((version, attached))
    }

    /// Publishes built segments in one commit (see [`Transaction::publish`]); returns the
    /// version. On object storage, when another writer's commit comes first, the segments are
    /// checked and published again on top of it.
    pub fn publish(&mut self, built: &[BuiltSegments]) -> Result<u64> {
        self.retry_on_conflict(|w| w.publish_once(built))
    }

    fn publish_once(&mut self, built: &[BuiltSegments]) -> Result<u64> {
        let mut tx = self.transaction();
        let mut rows = 0;
        let mut names = std::collections::BTreeSet::new();
        for b in built {
            rows += tx.publish(b)?;
            names.insert(b.collection.as_str());
        }
        let names: Vec<&str> = names.into_iter().collect();
        tx.commit(format!(
            "publish {rows} rows in {} built segments into {}",
            built.iter().map(|b| b.segments.len()).sum::<usize>(),
            names.join(", ")
        ))
    }
}

impl Transaction<'_> {
    /// Stages built segments into this transaction after checking them against the collection
    /// as staged so far; returns their row count. Their spaces are found by specification
    /// (registered when missing, and activated where the builder activated them and the
    /// collection has no active space of that modality); segments are placed in id order.
    pub fn publish(&mut self, built: &BuiltSegments) -> Result<u64> {
        let mut next = self.next.clone();
        let name = &built.collection;
        let c = next.collection(name)?;
        if c.uid != built.collection_uid {
            return Err(stale(name, "the collection was dropped and created again"));
        }
        next.collection_mut(name)?.schema = merged_schema(name, &c.schema, &built.schema)?;
        let mut space_ids = HashMap::new();
        for (space, active) in &built.spaces {
            let id = stage_space(&mut next, name, space.spec.clone(), false)?;
            // Column files carry their space's id.
            if id != space.id {
                return Err(stale(
                    name,
                    &format!(
                        "their embedding space {} ({}) was registered meanwhile as space {id}",
                        space.id, space.spec.model_id
                    ),
                ));
            }
            let c = next.collection_mut(name)?;
            if *active && c.active(space.spec.modality).is_none() {
                set_active(c, space.spec.modality, id);
            }
            space_ids.insert(space.id, id);
        }
        let c = next.collection(name)?;
        let referenced: std::collections::HashSet<&str> =
            next.files().map(|f| f.name.as_str()).collect();
        let mut segments = Vec::with_capacity(built.segments.len());
        for seg in &built.segments {
            let mut seg = seg.clone();
            check_built_segment(c, built, &seg)?;
            for col in &mut seg.columns {
                col.space = *space_ids.get(&col.space).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "built segment of {name}: a column of space {}, which the description \
                         does not list",
                        col.space
                    ))
                })?;
            }
            for modality in [Modality::Image, Modality::Text] {
                if let Some(active) = c.active(modality)
                    && seg.column(active).is_none()
                {
                    let spec = &c.space(active)?.spec;
                    return Err(stale(
                        name,
                        &format!(
                            "the segments have no vectors of the active {modality} space \
                             ({} {}, fingerprint {}); the model changed after they were built",
                            spec.model_id, spec.dim, spec.fingerprint
                        ),
                    ));
                }
            }
            for file in seg.files() {
                check_built_file(name, file, &referenced, &self.writer.db)?;
            }
            segments.push(seg);
        }
        for mut seg in segments {
            seg.id = next.next_segment_id;
            next.next_segment_id += 1;
            let c = next.collection_mut(name)?;
            let at = c
                .segments
                .partition_point(|s| s.min_row_id < seg.min_row_id);
            c.segments.insert(at, seg);
        }
        // The builder's reserved ids are used up: its segments cannot be published again.
        next.collection_mut(name)?
            .reservations
            .retain(|r| !built.reserved.contains(r));
        self.next = next;
        if built.rows() > 0 {
            self.appended.insert(name.clone());
        }
        Ok(built.rows())
    }
}

impl Transaction<'_> {
    /// Attaches built columns to their segments, after checking them against the collection
    /// as staged so far (same collection, the space registered with the same id and
    /// specification, the collection's index, files present with their committed lengths).
    /// Segments merged away or deleted since are left out (their rows live on in merged
    /// segments, which [`Writer::embed`] embeds), as are segments that already hold the space.
    /// Returns how many columns were attached.
    pub fn publish_columns(&mut self, built: &BuiltColumns) -> Result<usize> {
        let name = &built.collection;
        let c = self.next.collection(name)?;
        if c.uid != built.collection_uid {
            return Err(stale(name, "the collection was dropped and created again"));
        }
        match c.space(built.space.id) {
            Ok(s) if s.spec == built.space.spec => {}
            _ => {
                return Err(stale(
                    name,
                    &format!(
                        "its embedding space {} is no longer {} ({})",
                        built.space.id, built.space.spec.model_id, built.space.spec.fingerprint
                    ),
                ));
            }
        }
        let referenced: std::collections::HashSet<&str> =
            self.next.files().map(|f| f.name.as_str()).collect();
        let mut attach = Vec::new();
        for b in &built.columns {
            let Some(seg) = c
                .segments
                .iter()
                .find(|s| s.id == b.segment && s.rows_file.name == b.rows_file)
            else {
                continue;
            };
            if seg.column(built.space.id).is_some() {
                continue;
            }
            let col = &b.column;
            let items = seg.items(built.space.spec.modality);
            let expected_len = crate::format::HEADER_LEN as u64
                + items * built.space.spec.dim as u64 * std::mem::size_of::<f32>() as u64;
            if col.space != built.space.id || col.file.len != expected_len {
                return Err(Error::InvalidArgument(format!(
                    "built column of {name}, segment {}: space {} and {} bytes, expected space {} \
                     and {expected_len} bytes",
                    seg.id, col.space, col.file.len, built.space.id
                )));
            }
            check_index(c, col)?;
            for file in std::iter::once(&col.file).chain(col.index.as_ref().map(|i| &i.file)) {
                check_built_file(name, file, &referenced, &self.writer.db)?;
            }
            attach.push((seg.id, col.clone()));
        }
        let count = attach.len();
        let c = self.next.collection_mut(name)?;
        for (segment, column) in attach {
            if let Some(seg) = c.segments.iter_mut().find(|s| s.id == segment) {
                seg.columns.push(column);
            }
        }
        Ok(count)
    }
}

/// A file a builder says it wrote: its own (by name), not part of the database yet, and on
/// disk with the committed length.
fn check_built_file(
    collection: &str,
    file: &crate::manifest::FileRef,
    referenced: &std::collections::HashSet<&str>,
    db: &Database,
) -> Result<()> {
    if referenced.contains(file.name.as_str()) {
        return Err(Error::InvalidArgument(format!(
            "built data of {collection}: file {} is already part of the database; was it \
             published before?",
            file.name
        )));
    }
    if !file.name.starts_with(super::segment::BUILT_FILE_PREFIX) {
        return Err(Error::InvalidArgument(format!(
            "built data of {collection}: file {} is not a builder's",
            file.name
        )));
    }
    let path = db.path().join(FILES_DIR).join(&file.name);
    let len = match &db.inner.shared.remote {
        // Built on any machine, uploaded before its description was handed over.
        Some(remote) => remote.file_len(&file.name)?.unwrap_or(0),
        None => fsio::metadata(&path)?.len(),
    };
    if len != file.len {
        return Err(Error::corruption(
            &path,
            format!("built as {} bytes, {len} on disk", file.len),
        ));
    }
    Ok(())
}

fn stale(collection: &str, why: &str) -> Error {
    Error::InvalidArgument(format!(
        "built segments of {collection} no longer fit it: {why}; build them again"
    ))
}

/// The collection's schema extended with the columns a builder added. Metadata values are
/// stored by position, so one schema must be a prefix of the other.
fn merged_schema(collection: &str, current: &Schema, built: &Schema) -> Result<Schema> {
    let (short, long) = if current.metadata.len() <= built.metadata.len() {
        (current, built)
    } else {
        (built, current)
    };
    if long.metadata[..short.metadata.len()] != short.metadata[..] {
        let names = |s: &Schema| {
            s.metadata
                .iter()
                .map(|c| format!("{} {}", c.name, c.ty))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(stale(
            collection,
            &format!(
                "they were built with metadata columns ({}) that do not extend the collection's \
                 ({}); add the columns before building segments in parallel",
                names(built),
                names(current)
            ),
        ));
    }
    Ok(long.clone())
}

/// Checks what a built segment claims against its description and the collection: ids inside
/// the reserved ranges (which this version allocated), the collection's index.
fn check_built_segment(c: &CollectionMeta, built: &BuiltSegments, seg: &SegmentMeta) -> Result<()> {
    let name = &c.name;
    let Some(reserved) = built
        .reserved
        .iter()
        .find(|r| r.holds(seg.min_row_id, seg.max_row_id))
    else {
        return Err(Error::InvalidArgument(format!(
            "built segment of {name} with ids {} to {} is not inside a range reserved for it",
            seg.min_row_id, seg.max_row_id
        )));
    };
    // Reserved ids belong to one builder until its publication closes the reservation, so
    // segments inside an open one collide with no other segment.
    if !c.reservations.contains(reserved) {
        return Err(Error::InvalidArgument(format!(
            "built segments of {name}: their reservation of ids {} to {} is closed; they were \
             published before",
            reserved.first,
            reserved.end - 1
        )));
    }
    if seg.rows == 0
        || seg.min_row_id > seg.max_row_id
        || seg.rows - 1 > seg.max_row_id - seg.min_row_id
        || seg.deleted != 0
        || seg.deletes.is_some()
    {
        return Err(Error::InvalidArgument(format!(
            "built segment of {name} with {} rows, ids {} to {}, is not inside a range reserved \
             in it",
            seg.rows, seg.min_row_id, seg.max_row_id
        )));
    }
    seg.columns.iter().try_for_each(|col| check_index(c, col))
}

/// A built column's FAISS index must have been built with the collection's index as it is now.
fn check_index(c: &CollectionMeta, col: &ColumnEntry) -> Result<()> {
    match &col.index {
        Some(index) if index.spec != c.index => Err(stale(
            &c.name,
            &format!(
                "their indexes are {}, the collection's is now {}",
                index.spec.factory, c.index.factory
            ),
        )),
        _ => Ok(()),
    }
}
