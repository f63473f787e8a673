//! The single writer: every public method validates its input, writes new immutable files,
//! fsyncs them, and publishes them with one manifest commit. A failure at any step leaves the
//! previous version as the current one; files of a failed commit are unreferenced and removed by
//! [`Writer::vacuum`].

use std::collections::BTreeSet;
use std::fs::File;

use crate::column::normalize;
use crate::crashpoint::crash_point;
use crate::db::{DamagedVersion, Database};
use crate::deletes::DeletionVector;
use crate::error::{Error, Result};
use crate::fsio;
use crate::index::IndexSpec;
use crate::manifest::{self, CollectionMeta, FILES_DIR, Manifest, SpaceMeta};
use crate::schema::{Metric, Modality, NewRow, Schema, SpaceId, SpaceSpec};
use crate::search::RowFilter;
use crate::snapshot::{SegmentView, Snapshot};
use segment::SegmentFiles;

mod build;
mod merge;
mod segment;
mod transaction;
mod vacuum;

pub use build::{BuiltColumns, BuiltSegments, SegmentBuilder, Stage, build_columns};
pub use merge::CompactReport;
pub use transaction::Transaction;
pub use vacuum::VacuumReport;

/// Unpublished segment builds younger than this are not vacuumed (as Delta Lake keeps
/// unreferenced files for a week by default).
pub const DEFAULT_BUILD_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Tuning of the writer's merge policy and vacuum.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Merge small segments after each append (see [`Writer::compact`]).
    pub auto_compact: bool,
    /// Segments of one size tier that trigger a merge; tiers grow by this factor.
    pub merge_factor: usize,
    /// How long [`Writer::vacuum`] leaves unpublished files of a [`SegmentBuilder`] alone: a
    /// build may still be running in another process, so only older ones are orphans.
    pub build_grace: std::time::Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            auto_compact: true,
            merge_factor: 8,
            build_grace: DEFAULT_BUILD_GRACE,
        }
    }
}

/// Exclusive write access to a database; dropping it releases the lock.
#[derive(Debug)]
pub struct Writer {
    db: Database,
    _lock: File,
    manifest: Manifest,
    options: WriterOptions,
    merge_error: Option<Error>,
    /// Newer versions that could not be read: while there are any, every write except
    /// [`Writer::restore`] is refused, so that the fallback is never made permanent silently.
    damaged: Vec<DamagedVersion>,
}

impl Writer {
    pub(crate) fn new(db: Database, lock: File) -> Result<Writer> {
        // On object storage, start from the store's newest version, not a recent listing.
        db.refresh()?;
        let manifest = db.snapshot()?.manifest().clone();
        let damaged = db.damaged_versions();
        Ok(Writer {
            db,
            _lock: lock,
            manifest,
            options: WriterOptions::default(),
            merge_error: None,
            damaged,
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
        let shared = &self.db.inner.shared;
        Snapshot::new(
            shared.clone(),
            std::sync::Arc::new(self.manifest.clone()),
            shared.pins.pin(self.manifest.version),
        )
    }

    /// Refuses a write while a newer version is damaged (see [`Database::damaged_versions`]).
    /// Every commit checks it; hosts call it first to fail before any work.
    pub fn check_writable(&self) -> Result<()> {
        match self.damaged.first() {
            None => Ok(()),
            Some(d) => Err(Error::DamagedNewerVersion {
                message: crate::db::fallback_message(d, self.manifest.version),
            }),
        }
    }

    fn files_dir(&self) -> std::path::PathBuf {
        self.db.path().join(FILES_DIR)
    }

    /// The writer's own file naming: the manifest's counter, or on object storage (where
    /// writers on other machines count from the same manifest) names of a random token.
    fn files(&self) -> SegmentFiles {
        if self.db.inner.shared.remote.is_some() {
            SegmentFiles::token(self.files_dir(), build::random_token())
        } else {
            SegmentFiles::counter(self.files_dir())
        }
    }

    /// Makes the newest committed version the writer's base (after another writer's commit
    /// on object storage won the version this one tried).
    fn reload(&mut self) -> Result<()> {
        self.db.refresh()?;
        self.manifest = self.db.snapshot()?.manifest().clone();
        self.damaged = self.db.damaged_versions();
        Ok(())
    }

    /// Runs `attempt` (which stages on the writer's current version and commits) again on top
    /// of the newest version while another writer on object storage keeps committing first:
    /// for commits whose changes are checked against the version they land on (reservations,
    /// publishing built segments), so retrying cannot lose either writer's work.
    fn retry_on_conflict<T>(
        &mut self,
        mut attempt: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<T> {
        const ATTEMPTS: u32 = 32;
        let mut pause = std::time::Duration::from_millis(5);
        for _ in 1..ATTEMPTS {
            match attempt(self) {
                Err(Error::Conflict { .. }) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(500));
                }
                other => return other,
            }
        }
        attempt(self)
    }

    /// Publishes `next` as the next version: data files are already fsynced; the `files/`
    /// directory is fsynced so their names are durable, then the manifest is written atomically.
    fn commit(&mut self, mut next: Manifest, message: String) -> Result<u64> {
        self.check_writable()?;
        if let Some(remote) = self.db.inner.shared.remote.clone() {
            return self.commit_remote(&remote, next, message);
        }
        let newest_on_disk = manifest::list_versions(self.db.path())?
            .last()
            .copied()
            .unwrap_or(0);
        next.version = newest_on_disk.max(self.manifest.version) + 1;
        next.committed_at_ms = manifest::now_ms();
        next.message = message;
        fsio::sync_dir(&self.files_dir())?;
        crash_point("storage::before-manifest");
        manifest::write(self.db.path(), &next)?;
        crash_point("storage::committed");
        self.manifest = next;
        // The handle's next snapshot is this version, without reading it back; the old one's
        // pin goes, so that a vacuum in this process does not keep it.
        self.db.set_latest(self.snapshot());
        Ok(self.manifest.version)
    }

    /// [`Writer::commit`] on object storage: the new files are uploaded, then the manifest of
    /// the version after the writer's is created only if no other writer created it first
    /// ([`Error::Conflict`] otherwise, with the writer moved onto the newest version so that
    /// a new attempt lands on top). A local copy of the manifest follows.
    fn commit_remote(
        &mut self,
        remote: &crate::remote::Remote,
        mut next: Manifest,
        message: String,
    ) -> Result<u64> {
        let newest = remote
            .sync_manifests(self.db.path())?
            .last()
            .copied()
            .unwrap_or(0);
        if newest > self.manifest.version {
            self.reload()?;
            return Err(Error::Conflict {
                uri: remote.uri().to_string(),
                version: newest,
            });
        }
        next.version = self.manifest.version + 1;
        next.committed_at_ms = manifest::now_ms();
        next.message = message;
        let before: BTreeSet<&str> = self.manifest.files().map(|f| f.name.as_str()).collect();
        for file in next.files().filter(|f| !before.contains(f.name.as_str())) {
            let local = self.files_dir().join(&file.name);
            if local.exists() {
                remote.upload(&file.name, &local)?;
            } else if remote.file_len(&file.name)? != Some(file.len) {
                // Built on another machine, which uploads before it hands over the description.
                return Err(Error::InvalidArgument(format!(
                    "data file {} is neither in the local cache nor in {} with its {} bytes",
                    file.name,
                    remote.uri(),
                    file.len
                )));
            }
        }
        crash_point("storage::before-manifest");
        if !remote.create_manifest(next.version, manifest::encode(&next)?)? {
            self.reload()?;
            return Err(Error::Conflict {
                uri: remote.uri().to_string(),
                version: next.version,
            });
        }
        manifest::write(self.db.path(), &next)?;
        crash_point("storage::committed");
        self.manifest = next;
        self.db.set_latest(self.snapshot());
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
        index.validate_syntax()?;
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
            reservations: Vec::new(),
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
            let entry = self
                .files()
                .write_column(&mut next, &c.index, &spec, space, vectors)?;
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
        let mut next = self.manifest.clone();
        let total = self.stage_delete(&mut next, collection, matches)?;
        if total > 0 {
            self.commit(next, format!("delete {total} rows from {collection}"))?;
        }
        Ok(total)
    }

    /// Writes the deletion vectors that delete the committed live rows passing `matches` and
    /// records them in `next`; returns how many rows that deletes.
    fn stage_delete(
        &mut self,
        next: &mut Manifest,
        collection: &str,
        matches: impl Fn(&crate::RowRef<'_>) -> bool,
    ) -> Result<usize> {
        let snap = self.snapshot();
        let c = snap.collection(collection)?;
        let mut changed = Vec::new();
        let mut total = 0;
        let mut files = self.files();
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
                let file = files.write_deletes(next, &dv)?;
                changed.push((meta.id, file, dv.deleted() as u64));
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
        Ok(total)
    }

    /// Sets the collection's FAISS index and rebuilds the index of every column with it.
    pub fn set_index(&mut self, collection: &str, spec: IndexSpec) -> Result<u64> {
        let snap = self.snapshot();
        let c = snap.collection(collection)?;
        spec.validate_syntax()?;
        for s in &c.spaces {
            spec.validate(s.spec.dim)?;
        }
        let mut next = self.manifest.clone();
        let mut rebuilt = Vec::new();
        let mut files = self.files();
        for meta in &c.segments {
            let view = snap.segment(c, meta)?;
            for col in &meta.columns {
                let dim = c.space(col.space)?.spec.dim;
                let vectors = view.vectors(c, col.space)?.ok_or_else(|| {
                    Error::corruption(snap.file_path(&col.file.name), "column vanished")
                })?;
                let index = files.build_index(&mut next, &spec, dim, vectors.as_slice())?;
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
}

/// Registers `spec` in `manifest` (or finds an identical space) and optionally activates it.
fn stage_space(
    manifest: &mut Manifest,
    collection: &str,
    spec: SpaceSpec,
    activate: bool,
) -> Result<SpaceId> {
    if !(1..=manifest::MAX_DIM).contains(&spec.dim) {
        return Err(Error::InvalidArgument(format!(
            "an embedding space's dimension must be 1 to {}, got {}",
            manifest::MAX_DIM,
            spec.dim
        )));
    }
    let c = manifest.collection_mut(collection)?;
    let id = match c.spaces.iter().find(|s| s.spec == spec) {
        Some(s) => s.id,
        None => {
            // Every segment of the new space gets the collection's index: it must fit its
            // vectors now, not fail at the first segment large enough to be indexed.
            c.index.validate(spec.dim)?;
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

fn set_active(c: &mut CollectionMeta, modality: Modality, space: SpaceId) {
    match modality {
        Modality::Image => c.active_image = Some(space),
        Modality::Text => c.active_text = Some(space),
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
