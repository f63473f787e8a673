//! Every file-system call of the engine, so each I/O error names its path (`clippy.toml`
//! disallows `std::fs` elsewhere in this crate). Durable writes (`write_durable`,
//! `sync_dir`) are what registry installs use to survive a crash.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn create(path: &Path) -> Result<File> {
    File::create(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Writes `bytes` and fsyncs the file.
pub(crate) fn write_durable(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    use std::io::Write;
    let mut f = create(path)?;
    f.write_all(bytes.as_ref())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Fsyncs an existing file.
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    open(path)?.sync_all().map_err(|e| Error::io(path, e))
}

/// Fsyncs a directory, so that the names created or renamed in it are durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    open(path)?.sync_all().map_err(|e| Error::io(path, e))
}

pub(crate) fn create_dir_all(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn remove_dir_all(path: &Path) -> Result<()> {
    std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))
}

/// Opens (creating it if needed) and locks `path` exclusively (`flock`); `None` when someone
/// holds it. The lock lasts as long as the returned file.
pub(crate) fn try_lock(path: &Path) -> Result<Option<File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// Removes a file; one that is already gone is not an error.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(to, e))
}

pub(crate) fn metadata(path: &Path) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn canonicalize(path: &Path) -> Result<PathBuf> {
    path.canonicalize().map_err(|e| Error::io(path, e))
}

/// The entries of a directory, sorted by name.
pub(crate) fn list_dir(path: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        out.push(entry.map_err(|e| Error::io(path, e))?.path());
    }
    out.sort();
    Ok(out)
}
