//! Manifests: one file per committed version, `_versions/{version:020}.manifest`, holding the whole
//! state of the database (collections, schemas, embedding spaces, segments and the files behind
//! them with their checksums). A commit is the atomic creation of the next manifest.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{self, FileKind, HEADER_LEN, HeaderFields};
use crate::fsio;
use crate::index::IndexSpec;
use crate::schema::{Modality, Schema, SpaceId, SpaceSpec};

pub(crate) const VERSIONS_DIR: &str = "_versions";
pub(crate) const FILES_DIR: &str = "files";
const SUFFIX: &str = ".manifest";

/// A data file referenced by a manifest, with the length and CRC-32C it was committed with: the
/// CRC of the body for Mirante's own envelope files (the same value their header holds), of the
/// whole file for FAISS index files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    pub len: u64,
    pub crc32c: u32,
}

/// A FAISS index over one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub spec: IndexSpec,
    pub file: FileRef,
}

/// One embedding column of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnEntry {
    pub space: SpaceId,
    pub file: FileRef,
    /// None while the segment is below the index's minimum size (searched by exact scan).
    pub index: Option<IndexEntry>,
}

/// An immutable segment of rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: u64,
    pub rows: u64,
    /// Total captions of the segment (items of text spaces).
    pub texts: u64,
    pub min_row_id: u64,
    pub max_row_id: u64,
    pub rows_file: FileRef,
    pub blob_file: FileRef,
    pub deletes: Option<FileRef>,
    pub deleted: u64,
    pub columns: Vec<ColumnEntry>,
}

impl SegmentMeta {
    pub fn column(&self, space: SpaceId) -> Option<&ColumnEntry> {
        self.columns.iter().find(|c| c.space == space)
    }

    pub fn live_rows(&self) -> u64 {
        self.rows - self.deleted
    }

    /// Every data file of the segment: rows, blob, deletion vector, columns and their indexes.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        [
            Some(&self.rows_file),
            Some(&self.blob_file),
            self.deletes.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(
            self.columns
                .iter()
                .flat_map(|c| std::iter::once(&c.file).chain(c.index.as_ref().map(|i| &i.file))),
        )
    }

    /// Number of vectors a column of `modality` holds for this segment.
    pub fn items(&self, modality: Modality) -> u64 {
        match modality {
            Modality::Image => self.rows,
            Modality::Text => self.texts,
        }
    }
}

/// An embedding space registered in a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceMeta {
    pub id: SpaceId,
    pub spec: SpaceSpec,
}

/// A collection at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionMeta {
    pub name: String,
    /// Unique across the life of the database, so a re-created collection is a new one.
    pub uid: u64,
    pub schema: Schema,
    pub index: IndexSpec,
    pub next_row_id: u64,
    pub next_space_id: SpaceId,
    pub spaces: Vec<SpaceMeta>,
    pub active_image: Option<SpaceId>,
    pub active_text: Option<SpaceId>,
    pub segments: Vec<SegmentMeta>,
    /// Row ids reserved for segment builders and not yet published: publishing closes a
    /// builder's reservations, so its segments cannot be published twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reservations: Vec<IdRange>,
}

/// Row ids `first..end` of one collection, reserved by one commit for one segment builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub first: u64,
    pub end: u64,
}

impl IdRange {
    pub fn len(&self) -> u64 {
        self.end - self.first
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.first
    }

    /// Whether ids `min..=max` lie inside the range.
    pub fn holds(&self, min: u64, max: u64) -> bool {
        self.first <= min && max < self.end
    }
}

impl CollectionMeta {
    pub fn space(&self, id: SpaceId) -> Result<&SpaceMeta> {
        self.spaces
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::NotFound {
                kind: "embedding space",
                name: id.to_string(),
                hint: format!(
                    " in collection '{}'; its spaces are: {}",
                    self.name,
                    self.spaces
                        .iter()
                        .map(|s| format!("{} ({} {})", s.id, s.spec.model_id, s.spec.modality))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    pub fn active(&self, modality: Modality) -> Option<SpaceId> {
        match modality {
            Modality::Image => self.active_image,
            Modality::Text => self.active_text,
        }
    }

    pub fn live_rows(&self) -> u64 {
        self.segments.iter().map(SegmentMeta::live_rows).sum()
    }
}

/// The state of the database at one committed version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u64,
    pub committed_at_ms: u64,
    /// What the commit did, for `versions()` listings.
    pub message: String,
    pub next_file_id: u64,
    pub next_segment_id: u64,
    pub next_collection_uid: u64,
    pub collections: Vec<CollectionMeta>,
}

impl Manifest {
    pub(crate) fn empty() -> Self {
        Manifest {
            version: 0,
            committed_at_ms: now_ms(),
            message: "create database".into(),
            next_file_id: 1,
            next_segment_id: 1,
            next_collection_uid: 1,
            collections: Vec::new(),
        }
    }

    pub fn collection(&self, name: &str) -> Result<&CollectionMeta> {
        Ok(&self.collections[self.collection_index(name)?])
    }

    /// Position of a collection in `collections`.
    pub fn collection_index(&self, name: &str) -> Result<usize> {
        self.collections
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| self.unknown_collection(name))
    }

    pub(crate) fn collection_mut(&mut self, name: &str) -> Result<&mut CollectionMeta> {
        let err = self.unknown_collection(name);
        self.collections
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or(err)
    }

    fn unknown_collection(&self, name: &str) -> Error {
        Error::NotFound {
            kind: "collection",
            name: name.to_string(),
            hint: if self.collections.is_empty() {
                "; the database has no collections yet".into()
            } else {
                format!(
                    "; collections are: {}",
                    self.collections
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        }
    }

    /// Every data file this version references.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.collections
            .iter()
            .flat_map(|c| &c.segments)
            .flat_map(SegmentMeta::files)
    }

    /// Allocates a fresh data-file name with `ext`.
    pub(crate) fn new_file_name(&mut self, ext: &str) -> String {
        let id = self.next_file_id;
        self.next_file_id += 1;
        format!("f{id:010}.{ext}")
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn manifest_path(root: &Path, version: u64) -> PathBuf {
    root.join(VERSIONS_DIR).join(file_name(version))
}

/// The file name of version `version`'s manifest.
pub(crate) fn file_name(version: u64) -> String {
    format!("{version:020}{SUFFIX}")
}

/// Versions that have a manifest file, ascending.
pub(crate) fn list_versions(root: &Path) -> Result<Vec<u64>> {
    let mut versions: Vec<u64> = fsio::list_dir(&root.join(VERSIONS_DIR))?
        .iter()
        .filter_map(|n| n.strip_suffix(SUFFIX)?.parse().ok())
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Writes `manifest` as version `manifest.version` atomically (temporary file, fsync, rename,
/// fsync of `_versions/`).
pub(crate) fn write(root: &Path, manifest: &Manifest) -> Result<()> {
    fsio::atomic_write(
        &manifest_path(root, manifest.version),
        &[&encode(manifest)?],
    )
}

/// A manifest file's bytes: envelope and JSON body.
pub(crate) fn encode(manifest: &Manifest) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(manifest)
        .map_err(|e| Error::InvalidArgument(format!("cannot encode manifest: {e}")))?;
    let fields = HeaderFields {
        count: manifest.version,
        ..Default::default()
    };
    let mut bytes = format::encode_header(FileKind::Manifest, fields, &body).to_vec();
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Reads and validates the manifest of `version`.
pub(crate) fn read(root: &Path, version: u64) -> Result<Manifest> {
    let path = manifest_path(root, version);
    let manifest = decode(&path, &fsio::read(&path)?)?;
    if manifest.version != version {
        return Err(Error::corruption(
            &path,
            format!(
                "file name says version {version}, contents say {}",
                manifest.version
            ),
        ));
    }
    Ok(manifest)
}

/// Decodes a manifest file's bytes (`path` only names it in errors): its envelope, its body,
/// and the invariants readers rely on (see [`Manifest::check`]). Checksums catch accidents;
/// these checks keep a deliberately crafted manifest from steering a reader outside the
/// database folder or past the end of a file.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let fields = format::check_envelope(path, FileKind::Manifest, bytes)?;
    let manifest: Manifest = serde_json::from_slice(&bytes[HEADER_LEN..])
        .map_err(|e| Error::corruption(path, format!("invalid manifest body: {e}")))?;
    if fields.count != manifest.version {
        return Err(Error::corruption(
            path,
            format!(
                "header says version {}, body says {}",
                fields.count, manifest.version
            ),
        ));
    }
    manifest
        .check()
        .map_err(|e| Error::corruption(path, format!("inconsistent manifest: {e}")))?;
    Ok(manifest)
}

/// The largest embedding dimension a space may have (the largest models' are a few thousand).
pub const MAX_DIM: usize = 65_536;

impl Manifest {
    /// Checks what readers index by: data file names are plain names inside `files/`, envelope
    /// files are at least a header long, row ids, segment ids, space ids and collection uids
    /// lie below the counters that allocate them, every column's space exists, dimensions are
    /// within [`MAX_DIM`], index specs parse.
    pub fn check(&self) -> std::result::Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for c in &self.collections {
            if !names.insert(&c.name) {
                return Err(format!("collection '{}' appears twice", c.name));
            }
            if c.uid >= self.next_collection_uid {
                return Err(format!(
                    "collection '{}' has uid {} not below the next uid {}",
                    c.name, c.uid, self.next_collection_uid
                ));
            }
            c.index
                .validate_syntax()
                .map_err(|e| format!("collection '{}': {e}", c.name))?;
            let mut space_ids = std::collections::HashSet::new();
            for s in &c.spaces {
                if s.id >= c.next_space_id || !space_ids.insert(s.id) {
                    return Err(format!(
                        "collection '{}': space id {} is repeated or not below {}",
                        c.name, s.id, c.next_space_id
                    ));
                }
                if !(1..=MAX_DIM).contains(&s.spec.dim) {
                    return Err(format!(
                        "collection '{}': space {} has dimension {}, expected 1 to {MAX_DIM}",
                        c.name, s.id, s.spec.dim
                    ));
                }
            }
            for active in [c.active_image, c.active_text].into_iter().flatten() {
                if !space_ids.contains(&active) {
                    return Err(format!(
                        "collection '{}': active space {active} does not exist",
                        c.name
                    ));
                }
            }
            if let Some(r) = c
                .reservations
                .iter()
                .find(|r| r.first >= r.end || r.end > c.next_row_id)
            {
                return Err(format!(
                    "collection '{}': reservation of ids {} to {} is empty or not below the next \
                     row id {}",
                    c.name, r.first, r.end, c.next_row_id
                ));
            }
            for seg in &c.segments {
                let what = || format!("collection '{}', segment {}", c.name, seg.id);
                if seg.id >= self.next_segment_id {
                    return Err(format!(
                        "{}: id not below the next segment id {}",
                        what(),
                        self.next_segment_id
                    ));
                }
                let ids_fit = seg.rows == 0
                    || (seg.min_row_id <= seg.max_row_id
                        && seg.max_row_id < c.next_row_id
                        && seg.rows - 1 <= seg.max_row_id - seg.min_row_id);
                if seg.deleted > seg.rows || !ids_fit {
                    return Err(format!(
                        "{}: {} rows ({} deleted) with ids {} to {}, next row id {}",
                        what(),
                        seg.rows,
                        seg.deleted,
                        seg.min_row_id,
                        seg.max_row_id,
                        c.next_row_id
                    ));
                }
                for col in &seg.columns {
                    if !space_ids.contains(&col.space) {
                        return Err(format!(
                            "{}: a column of space {} that does not exist",
                            what(),
                            col.space
                        ));
                    }
                }
                let mut envelope = vec![&seg.rows_file, &seg.blob_file];
                envelope.extend(&seg.deletes);
                envelope.extend(seg.columns.iter().map(|col| &col.file));
                for file in envelope {
                    if file.len < HEADER_LEN as u64 {
                        return Err(format!(
                            "{}: file {} is {} bytes, shorter than a header",
                            what(),
                            file.name,
                            file.len
                        ));
                    }
                }
            }
        }
        for file in self.files() {
            let plain = !file.name.is_empty()
                && !file.name.starts_with('.')
                && file.name.len() <= 64
                && file
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
            if !plain {
                return Err(format!(
                    "data file name {:?} is not a plain file name",
                    file.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_segment() -> Manifest {
        let file = |name: &str| FileRef {
            name: name.into(),
            len: 100,
            crc32c: 0,
        };
        let mut m = Manifest::empty();
        m.next_segment_id = 2;
        m.next_collection_uid = 2;
        m.collections.push(CollectionMeta {
            name: "c".into(),
            uid: 1,
            schema: Schema::default(),
            index: IndexSpec::default(),
            next_row_id: 11,
            next_space_id: 1,
            spaces: Vec::new(),
            active_image: None,
            active_text: None,
            reservations: Vec::new(),
            segments: vec![SegmentMeta {
                id: 1,
                rows: 10,
                texts: 10,
                min_row_id: 1,
                max_row_id: 10,
                rows_file: file("f0000000001.rows"),
                blob_file: file("f0000000002.blob"),
                deletes: None,
                deleted: 0,
                columns: Vec::new(),
            }],
        });
        m
    }

    #[test]
    fn manifests_that_would_steer_readers_astray_are_refused() {
        one_segment().check().unwrap();
        type Damage = fn(&mut Manifest);
        let cases: [(&str, Damage); 7] = [
            ("not a plain file name", |m| {
                m.collections[0].segments[0].rows_file.name = "../../etc/passwd".into()
            }),
            ("shorter than a header", |m| {
                m.collections[0].segments[0].blob_file.len = 3
            }),
            ("with ids 1 to 10, next row id 5", |m| {
                m.collections[0].next_row_id = 5
            }),
            ("11 rows", |m| m.collections[0].segments[0].rows = 11),
            ("appears twice", |m| {
                let c = m.collections[0].clone();
                m.collections.push(c)
            }),
            ("active space 3 does not exist", |m| {
                m.collections[0].active_text = Some(3)
            }),
            ("HNSW", |m| m.collections[0].index.factory = "HNSW0".into()),
        ];
        for (why, damage) in cases {
            let mut m = one_segment();
            damage(&mut m);
            let e = m.check().unwrap_err();
            assert!(e.contains(why), "{e} (expected {why})");
        }
    }
}
