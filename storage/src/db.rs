//! The database handle: a directory, its writer lock, and a cache of loaded files shared by
//! snapshots.

use std::any::Any;
use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};
use crate::fsio;
use crate::manifest::{self, FILES_DIR, Manifest, VERSIONS_DIR};
use crate::snapshot::Snapshot;
use crate::writer::Writer;

pub(crate) const LOCK_FILE: &str = "LOCK";

/// Loaded files by name, held weakly: a file stays in memory while some snapshot uses it, and
/// every snapshot that needs it shares one mapping.
#[derive(Debug, Default)]
pub(crate) struct FileCache {
    map: Mutex<HashMap<String, Weak<dyn Any + Send + Sync>>>,
}

impl FileCache {
    pub fn get_or_load<T: Any + Send + Sync>(
        &self,
        name: &str,
        load: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
        if let Some(hit) = self.lookup::<T>(name) {
            return Ok(hit);
        }
        // Loading (mapping, checksumming) happens outside the lock; two racing loaders of the same
        // file both succeed and one result wins, which is harmless for immutable files.
        let loaded = Arc::new(load()?);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        let erased: Arc<dyn Any + Send + Sync> = loaded.clone();
        map.insert(name.to_string(), Arc::downgrade(&erased));
        Ok(loaded)
    }

    fn lookup<T: Any + Send + Sync>(&self, name: &str) -> Option<Arc<T>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name)?.upgrade()?.downcast::<T>().ok()
    }
}

/// What snapshots share with their database (and nothing that refers back to snapshots, so no
/// reference cycle keeps mappings alive).
#[derive(Debug)]
pub(crate) struct Shared {
    pub root: PathBuf,
    pub cache: FileCache,
}

#[derive(Debug)]
pub(crate) struct DbInner {
    pub shared: Arc<Shared>,
    /// The newest snapshot handed out, kept alive so that its loaded files stay warm between
    /// statements.
    latest: Mutex<Option<Snapshot>>,
    /// Errors of manifests newer than the one opened that could not be read.
    skipped: Mutex<Vec<String>>,
}

/// A Mirante database: a directory holding versioned manifests and immutable data files.
///
/// Any number of `Database` handles, in any number of processes, may read; one [`Writer`] at a
/// time may commit.
#[derive(Debug, Clone)]
pub struct Database {
    pub(crate) inner: Arc<DbInner>,
}

impl Database {
    /// Creates a new, empty database at `path` (the directory may exist but must not hold one).
    pub fn create(path: impl AsRef<Path>) -> Result<Database> {
        let root = path.as_ref().to_path_buf();
        fsio::create_dir(&root)?;
        let lock = acquire_lock(&root)?;
        if !manifest::list_versions(&root)?.is_empty() {
            return Err(Error::DatabaseExists { path: root });
        }
        fsio::create_dir(&root.join(VERSIONS_DIR))?;
        fsio::create_dir(&root.join(FILES_DIR))?;
        fsio::sync_dir(&root)?;
        let mut first = Manifest::empty();
        first.version = 1;
        manifest::write(&root, &first)?;
        drop(lock);
        Database::open(root)
    }

    /// Opens an existing database for reading. Use [`Database::writer`] to modify it.
    pub fn open(path: impl AsRef<Path>) -> Result<Database> {
        let root = path.as_ref().to_path_buf();
        if !root.join(VERSIONS_DIR).is_dir() {
            return Err(Error::NotADatabase {
                detail: format!("no {VERSIONS_DIR}/ directory"),
                path: root,
            });
        }
        let db = Database {
            inner: Arc::new(DbInner {
                shared: Arc::new(Shared {
                    root,
                    cache: FileCache::default(),
                }),
                latest: Mutex::new(None),
                skipped: Mutex::new(Vec::new()),
            }),
        };
        db.snapshot()?;
        Ok(db)
    }

    /// Opens the database at `path`, creating it if the directory holds none.
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Database> {
        let path = path.as_ref();
        if path.join(VERSIONS_DIR).is_dir() {
            Database::open(path)
        } else {
            Database::create(path)
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.shared.root
    }

    /// A snapshot of the newest committed version.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let versions = manifest::list_versions(self.path())?;
        let newest = versions.last().copied();
        let mut latest = self.inner.latest.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(snap), Some(v)) = (latest.as_ref(), newest)
            && snap.version() == v
        {
            return Ok(snap.clone());
        }
        let (m, skipped) = manifest::read_latest(self.path())?;
        *self.inner.skipped.lock().unwrap_or_else(|p| p.into_inner()) =
            skipped.iter().map(|e| e.to_string()).collect();
        let snap = Snapshot::new(self.inner.shared.clone(), Arc::new(m));
        *latest = Some(snap.clone());
        Ok(snap)
    }

    /// A snapshot of committed version `version` (time travel), while vacuum has kept it.
    pub fn snapshot_at(&self, version: u64) -> Result<Snapshot> {
        let versions = manifest::list_versions(self.path())?;
        if !versions.contains(&version) {
            return Err(Error::NotFound {
                kind: "version",
                name: version.to_string(),
                hint: format!(
                    "; retained versions are {}",
                    match (versions.first(), versions.last()) {
                        (Some(a), Some(b)) => format!("{a}..={b}"),
                        _ => "none".into(),
                    }
                ),
            });
        }
        Ok(Snapshot::new(
            self.inner.shared.clone(),
            Arc::new(manifest::read(self.path(), version)?),
        ))
    }

    /// Committed versions still on disk, ascending.
    pub fn versions(&self) -> Result<Vec<u64>> {
        manifest::list_versions(self.path())
    }

    /// Problems met while opening: manifests newer than the current version that failed
    /// validation and were skipped.
    pub fn warnings(&self) -> Vec<String> {
        self.inner
            .skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the writer lock. Fails with [`Error::Locked`] naming the holder when another writer
    /// (in any process) has it.
    pub fn writer(&self) -> Result<Writer> {
        let lock = acquire_lock(self.path())?;
        Writer::new(self.clone(), lock)
    }
}

/// Takes the exclusive lock on `root/LOCK` and records who holds it.
pub(crate) fn acquire_lock(root: &Path) -> Result<File> {
    let path = root.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::Locked {
                path: root.to_path_buf(),
                holder: if holder.is_empty() {
                    "holder unknown".into()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    let me = format!(
        "pid {} ({}), since unix ms {}",
        std::process::id(),
        std::env::args().next().unwrap_or_default(),
        manifest::now_ms()
    );
    file.set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(me.as_bytes()))
        .map_err(|e| Error::io(&path, e))?;
    Ok(file)
}
