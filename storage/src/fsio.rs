//! File-system primitives. Every I/O error leaves this module with the path it concerns, and the
//! crate's only `Mmap::map` call lives here.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use memmap2::Mmap;

use crate::crashpoint::crash_point;
use crate::error::{Error, Result};

/// A read-only view of a sealed file: memory-mapped when non-empty (an empty file cannot be mapped).
#[derive(Debug)]
pub(crate) enum Mapped {
    Empty,
    Map(Mmap),
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Empty => &[],
            Mapped::Map(m) => m,
        }
    }
}

/// Maps a sealed (immutable, fully written and fsynced) file read-only.
pub(crate) fn map_sealed(path: &Path) -> Result<Mapped> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Ok(Mapped::Empty);
    }
    // SAFETY: Mirante maps only sealed files: data files are written once under a fresh name and
    // fsynced before a manifest references them, and are never modified afterwards (vacuum only
    // unlinks them, which keeps existing mappings valid on POSIX systems). Another program
    // truncating the file behind our back is outside the contract, as for every mmap-based store.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Mapped::Map(map))
}

/// Reads a whole file into memory.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Creates (or truncates) `path`, writes `parts` in order and fsyncs the file.
pub(crate) fn write_synced(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    for part in parts {
        file.write_all(part).map_err(|e| Error::io(path, e))?;
    }
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Fsyncs a file that someone else (FAISS) wrote.
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Makes directory entries (creations, renames, unlinks) in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Atomically replaces `path` with `contents`: temporary file, fsync, rename, fsync of the directory.
/// A crash at any point leaves either no `path` or the complete new one.
pub(crate) fn atomic_write(path: &Path, contents: &[&[u8]]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::InvalidArgument(format!("{} has no parent", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}"));
    write_synced(&tmp, contents)?;
    crash_point("storage::manifest-written");
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    crash_point("storage::manifest-renamed");
    sync_dir(dir)
}

pub(crate) fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

/// File names in `dir` (not recursive); missing directory gives an empty list.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(crate) fn metadata(path: &Path) -> Result<fs::Metadata> {
    fs::metadata(path).map_err(|e| Error::io(path, e))
}
