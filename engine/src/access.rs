//! What statements may reach outside the database: the files they read (imports, image paths,
//! model folders), the files they write (reports, exported models) and the Hub downloads they
//! start. A host that runs statements from its users (a RAG server, the MCP server) confines them
//! to a few folders and turns downloads off; everything else keeps the default, which allows
//! what the process itself may do.
//!
//! Writes never replace an existing file or folder unless the statement says `OVERWRITE`, and
//! never follow a symbolic link in their last component (checked when the file is opened, with
//! `O_NOFOLLOW`, not only before).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsio;

/// The folders statements may use, and whether they may download.
#[derive(Debug, Clone)]
pub struct Access {
    /// Folders (canonical) under which statements may read and write; `None`: anywhere.
    roots: Option<Vec<PathBuf>>,
    /// Folders statements may also read but never write when confined: the database's own
    /// (so that no statement writes over its files) and the Hugging Face cache.
    read_only: Vec<PathBuf>,
    /// Whether a Hub id that is not in the Hugging Face cache is downloaded.
    pub downloads: bool,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            roots: None,
            read_only: Vec::new(),
            downloads: true,
        }
    }
}

impl Access {
    /// Statements may read and write only under `roots` (and the database's own folder, and the
    /// Hugging Face cache for reading), and download nothing.
    pub fn confined<P: AsRef<Path>>(roots: impl IntoIterator<Item = P>) -> Result<Access> {
        let roots = roots
            .into_iter()
            .map(|r| fsio::canonicalize(r.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Access {
            roots: Some(roots),
            read_only: Vec::new(),
            downloads: false,
        })
    }

    /// Adds a folder statements may read but not write (the database's own, the Hub cache).
    pub(crate) fn also_read(&mut self, root: &Path) {
        if let Ok(root) = root.canonicalize() {
            self.read_only.push(root);
        }
    }

    pub fn is_confined(&self) -> bool {
        self.roots.is_some()
    }

    /// Checks that `path` (an existing file or folder; symbolic links resolved) is under a root.
    pub(crate) fn check_read(&self, path: &Path) -> Result<()> {
        let Some(roots) = &self.roots else {
            return Ok(());
        };
        let real = fsio::canonicalize(path)?;
        if self.read_only.iter().any(|r| real.starts_with(r)) {
            return Ok(());
        }
        self.within(roots, path, &real)
    }

    /// Checks where a new file or folder `path` would be written: its parent must be under a
    /// root, and `path` must not exist unless `overwrite` (nor be a symbolic link at all).
    pub(crate) fn check_write(&self, path: &Path, overwrite: bool) -> Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::Invalid(format!(
                    "{} is a symbolic link; statements do not write through links",
                    path.display()
                )));
            }
            Ok(_) if !overwrite => {
                return Err(Error::Invalid(format!(
                    "{} already exists; add OVERWRITE to replace it",
                    path.display()
                )));
            }
            _ => {}
        }
        let Some(roots) = &self.roots else {
            return Ok(());
        };
        // The nearest folder above it that exists (the statement creates the rest).
        let existing = path
            .ancestors()
            .skip(1)
            .map(|a| {
                if a.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    a
                }
            })
            .find(|a| a.exists())
            .unwrap_or(Path::new("."));
        let real = fsio::canonicalize(existing)?;
        if self.read_only.iter().any(|r| real.starts_with(r)) {
            return Err(Error::Invalid(format!(
                "{} is inside the database or the Hugging Face cache, which statements do not \
                 write to",
                path.display()
            )));
        }
        self.within(roots, path, &real)
    }

    fn within(&self, roots: &[PathBuf], path: &Path, real: &Path) -> Result<()> {
        if roots.iter().any(|r| real.starts_with(r)) {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{} is outside the folders statements may use here ({})",
            path.display(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Creates the file a statement writes (`INTO '<path>' [OVERWRITE]`), after checking where.
pub(crate) fn create_checked(access: &Access, into: &mirante_query::OutputPath) -> Result<File> {
    let path = Path::new(&into.path);
    access.check_write(path, into.overwrite)?;
    create_file(path, into.overwrite)
}

/// Creates `path` for writing without following a symbolic link there: a new file, or with
/// `overwrite` a truncated existing one.
pub(crate) fn create_file(path: &Path, overwrite: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).custom_flags(libc::O_NOFOLLOW);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Invalid(format!(
            "{} already exists; add OVERWRITE to replace it",
            path.display()
        )),
        _ => Error::io(path, e),
    })
}
