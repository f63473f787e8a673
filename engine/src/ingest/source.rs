//! What import sources yield: [`Item`]s (rows, or why a row cannot be imported), read lazily
//! (image bytes are read when the loader gets to them), and the metadata columns a [`Source`]
//! declares up front; with the helpers every source kind shares (files of a folder, splits,
//! the hub cache).

use std::path::{Path, PathBuf};

use mirante_storage::{ColumnDef, Value};

use crate::error::{Error, Result, RowFailure};
use crate::fsio;

/// Image file extensions an imagefolder import picks up.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];
/// Folder names that are splits.
pub(super) const SPLIT_NAMES: [&str; 6] = ["train", "test", "validation", "valid", "val", "dev"];

/// A row's precomputed vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Precomputed {
    pub image: Vec<f32>,
    /// One per caption, in caption order.
    pub texts: Vec<Vec<f32>>,
}

/// Where a row's image comes from.
#[derive(Debug, Clone)]
pub enum ImageRef {
    Path(PathBuf),
    Bytes { name: String, bytes: Vec<u8> },
}

impl ImageRef {
    /// The path or URI shown for the image.
    pub fn name(&self) -> String {
        match self {
            // Absolute, so the stored source stays meaningful from any working directory.
            ImageRef::Path(p) => std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            ImageRef::Bytes { name, .. } => name.clone(),
        }
    }
}

/// A row read from a source.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it is in the source, for error messages.
    pub location: String,
    /// None only for a row that carries precomputed vectors (a text-only document).
    pub image: Option<ImageRef>,
    pub texts: Vec<String>,
    pub split: Option<String>,
    pub metadata: Vec<(String, Value)>,
    /// Present when the import names embedding columns.
    pub vectors: Option<Precomputed>,
}

/// A row, or why it cannot be imported.
#[derive(Debug)]
pub enum Item {
    Row(Record),
    Bad(RowFailure),
}

/// An opened source.
pub struct Source {
    /// Metadata columns (all nullable) the rows carry.
    pub columns: Vec<ColumnDef>,
    pub items: Box<dyn Iterator<Item = Result<Item>> + Send>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

pub(super) fn extension(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The snapshot folder of a dataset in the Hugging Face hub cache: `<id>[@<revision>]`.
pub(super) fn hub_dataset(id: &str) -> Result<PathBuf> {
    let (id, revision) = mirante_training::hub_id(id)?;
    let repo =
        mirante_training::hub_cache_dir().join(format!("datasets--{}", id.replace('/', "--")));
    let by_commit = repo.join("snapshots").join(revision);
    if by_commit.is_dir() {
        return Ok(by_commit);
    }
    let refs = repo.join("refs").join(revision);
    let commit = fsio::read_to_string(&refs).map_err(|e| {
        Error::source(
            &repo,
            format!(
                "dataset {id} (revision {revision}) is not in the hub cache ({e}); download it \
                 with `huggingface-cli download --repo-type dataset {id}` where the network allows"
            ),
        )
    })?;
    let commit = commit.trim();
    if commit.is_empty() || !commit.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::source(
            &refs,
            format!("holds '{commit}', which is not a commit hash"),
        ));
    }
    Ok(repo.join("snapshots").join(commit))
}

/// Files under `root` (recursively, sorted) with one of `extensions`.
///
/// Symbolic links are followed, but each directory is walked once: a link back to an ancestor
/// (a loop) or a second link to a walked directory adds nothing.
pub(super) fn files_with(root: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut walked = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if !walked.insert(fsio::canonicalize(&dir)?) {
            continue;
        }
        for path in fsio::list_dir(&dir)? {
            let name = path.file_name().unwrap_or_default();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if extensions.contains(&extension(&path).as_str()) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The split named by the first directory of `path` below `root`, if it is a split name.
pub(super) fn split_of(root: &Path, path: &Path) -> Option<String> {
    let first = path.strip_prefix(root).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.to_ascii_lowercase();
    SPLIT_NAMES.contains(&name.as_str()).then_some(name)
}

pub(super) fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
