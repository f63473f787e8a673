//! The database handle: a directory, its writer lock, and a cache of loaded files shared by
//! snapshots.

use std::any::Any;
use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::fsio;
use crate::manifest::{self, FILES_DIR, Manifest, VERSIONS_DIR};
use crate::pins::Pins;
use crate::remote::{self, Remote};
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
    /// The local folder: the database itself, or the cache of one on object storage.
    pub root: PathBuf,
    pub cache: FileCache,
    pub pins: Pins,
    /// The object store a database on object storage lives in.
    pub remote: Option<Arc<Remote>>,
    /// When the store's manifests were last listed (snapshots list at most every
    /// [`REMOTE_REFRESH`]).
    pub synced: Mutex<Option<Instant>>,
}

impl Shared {
    /// The local path of data file `file`, copied in from the object store first when the
    /// database lives there.
    pub(crate) fn local_file(&self, file: &crate::manifest::FileRef) -> Result<PathBuf> {
        let path = self.root.join(FILES_DIR).join(&file.name);
        if let Some(remote) = &self.remote {
            remote.fetch(&file.name, file.len, &path)?;
        }
        Ok(path)
    }

    /// Copies the object store's new manifests into the cache: always with `force`, otherwise
    /// at most every [`REMOTE_REFRESH`].
    pub(crate) fn sync(&self, force: bool) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if force || synced.is_none_or(|t| t.elapsed() >= REMOTE_REFRESH) {
            remote.sync_manifests(&self.root)?;
            *synced = Some(Instant::now());
        }
        Ok(())
    }
}

/// How stale a snapshot of a database on object storage may be: listing the store's versions
/// is a request, so snapshots taken in quick succession reuse the last listing. Writers always
/// list before they commit.
pub const REMOTE_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct DbInner {
    pub shared: Arc<Shared>,
    /// The newest snapshot handed out, kept alive so that its loaded files stay warm between
    /// statements.
    latest: Mutex<Option<Snapshot>>,
    /// Manifests newer than the version shown that could not be read.
    skipped: Mutex<Vec<DamagedVersion>>,
    busy_timeout: Mutex<Duration>,
}

/// How long a writer waits for another one by default: long enough for the other's statement
/// to commit, short enough that a stuck holder is reported.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A committed version whose manifest could not be read, so that an older one is shown instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedVersion {
    pub version: u64,
    /// Why it could not be read (the path and what is wrong).
    pub error: String,
}

/// Attempts at reading the newest manifest while vacuums keep removing the one just listed.
const SNAPSHOT_ATTEMPTS: usize = 64;

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
        let lock = acquire_lock(&root, DEFAULT_BUSY_TIMEOUT)?;
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
        Database::open_in(root, None)
    }

    fn open_in(root: PathBuf, remote: Option<Remote>) -> Result<Database> {
        let db = Database {
            inner: Arc::new(DbInner {
                shared: Arc::new(Shared {
                    pins: Pins::new(&root),
                    root,
                    cache: FileCache::default(),
                    remote: remote.map(Arc::new),
                    synced: Mutex::new(None),
                }),
                latest: Mutex::new(None),
                skipped: Mutex::new(Vec::new()),
                busy_timeout: Mutex::new(DEFAULT_BUSY_TIMEOUT),
            }),
        };
        db.snapshot()?;
        Ok(db)
    }

    /// Opens the database `location` names, creating it when there is none: a local folder
    /// (a path, or `file://`), or a database on object storage (`s3://bucket/prefix`, `gs://`,
    /// `az://`, `memory://name`) worked on through the local cache folder `cache` (by default
    /// one per URI under `$MIRANTE_CACHE_DIR`, `$XDG_CACHE_HOME/mirante` or
    /// `~/.cache/mirante`).
    pub fn open_location(location: &str, cache: Option<&Path>) -> Result<Database> {
        if !remote::is_remote(location) {
            return Database::open_or_create(location.strip_prefix("file://").unwrap_or(location));
        }
        let remote = Remote::open(location)?;
        let root = cache.map_or_else(|| remote::default_cache(location), Path::to_path_buf);
        fsio::create_dir(&root.join(VERSIONS_DIR))?;
        fsio::create_dir(&root.join(FILES_DIR))?;
        if remote.sync_manifests(&root)?.is_empty() {
            let mut first = Manifest::empty();
            first.version = 1;
            // Another process creating it at the same moment is as good.
            remote.create_manifest(1, manifest::encode(&first)?)?;
            remote.sync_manifests(&root)?;
        }
        Database::open_in(root, Some(remote))
    }

    /// The object store's URI for a database on object storage.
    pub fn remote_uri(&self) -> Option<&str> {
        self.inner.shared.remote.as_deref().map(Remote::uri)
    }

    /// Reads the object store's newest manifests now (snapshots otherwise list them at most
    /// every [`REMOTE_REFRESH`]); nothing for a local database.
    pub fn refresh(&self) -> Result<()> {
        self.inner.shared.sync(true)
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

    /// A snapshot of the newest committed version whose manifest reads back valid. Newer ones
    /// that do not are listed by [`Database::damaged_versions`], and writes are refused until
    /// [`Writer::restore`] accepts the fallback.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.inner.shared.sync(false)?;
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let versions = manifest::list_versions(self.path())?;
            let newest = versions.last().copied();
            let mut latest = self.inner.latest.lock().unwrap_or_else(|p| p.into_inner());
            if let (Some(snap), Some(v)) = (latest.as_ref(), newest)
                && snap.version() == v
            {
                return Ok(snap.clone());
            }
            match newest_readable(&self.inner.shared, &versions)? {
                Some((snap, damaged)) => {
                    *self.inner.skipped.lock().unwrap_or_else(|p| p.into_inner()) = damaged;
                    *latest = Some(snap.clone());
                    return Ok(snap);
                }
                // A vacuum removed what was listed: list again.
                None => continue,
            }
        }
        Err(Error::Io {
            path: self.path().join(VERSIONS_DIR),
            source: std::io::Error::other(format!(
                "the newest manifest was removed {SNAPSHOT_ATTEMPTS} times in a row while \
                 being read"
            )),
        })
    }

    /// A snapshot of committed version `version` (time travel), while vacuum has kept it.
    pub fn snapshot_at(&self, version: u64) -> Result<Snapshot> {
        // Pinned before it is read, so that a vacuum from now on keeps it.
        let pin = self.inner.shared.pins.pin(version);
        let versions = manifest::list_versions(self.path())?;
        let gone = || Error::NotFound {
            kind: "version",
            name: version.to_string(),
            hint: format!(
                "; retained versions are {}",
                match (versions.first(), versions.last()) {
                    (Some(a), Some(b)) => format!("{a}..={b}"),
                    _ => "none".into(),
                }
            ),
        };
        if !versions.contains(&version) {
            return Err(gone());
        }
        let manifest = match manifest::read(self.path(), version) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(gone());
            }
            other => other?,
        };
        Ok(Snapshot::new(
            self.inner.shared.clone(),
            Arc::new(manifest),
            pin,
        ))
    }

    /// Makes `snap` (of a version this handle's writer just committed) the handle's newest.
    pub(crate) fn set_latest(&self, snap: Snapshot) {
        *self.inner.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
    }

    /// Forgets the damaged versions once `RESTORE VERSION` has moved them aside.
    pub(crate) fn clear_damaged(&self) {
        self.inner
            .skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Committed versions still on disk, ascending.
    pub fn versions(&self) -> Result<Vec<u64>> {
        manifest::list_versions(self.path())
    }

    /// Versions newer than the one [`Database::snapshot`] shows whose manifests could not be
    /// read (damaged or unreadable files), newest first. Empty on a healthy database.
    pub fn damaged_versions(&self) -> Vec<DamagedVersion> {
        self.inner
            .skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One message per damaged version, for hosts that print warnings: what was skipped, what
    /// is shown instead, and how to accept it.
    pub fn warnings(&self) -> Vec<String> {
        let damaged = self.damaged_versions();
        let shown = self
            .inner
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Snapshot::version);
        damaged
            .iter()
            .map(|d| fallback_message(d, shown.unwrap_or(0)))
            .collect()
    }

    /// Takes the writer lock, waiting up to the busy timeout (see
    /// [`Database::set_busy_timeout`]) while another writer (in any process) has it; then fails
    /// with [`Error::Locked`] naming the holder.
    pub fn writer(&self) -> Result<Writer> {
        let lock = acquire_lock(self.path(), self.busy_timeout())?;
        Writer::new(self.clone(), lock)
    }

    /// How long [`Database::writer`] waits for another writer to finish, as SQLite's
    /// `busy_timeout` ([`DEFAULT_BUSY_TIMEOUT`] unless set); zero fails at once.
    pub fn set_busy_timeout(&self, timeout: Duration) {
        *self
            .inner
            .busy_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    pub fn busy_timeout(&self) -> Duration {
        *self
            .inner
            .busy_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// A snapshot of the newest of `versions` whose manifest reads back valid, plus the newer ones
/// that did not; `None` when a listed manifest was removed (by a vacuum) before it was read.
/// Each version is pinned before its manifest is read (see [`crate::pins`]).
fn newest_readable(
    shared: &Arc<Shared>,
    versions: &[u64],
) -> Result<Option<(Snapshot, Vec<DamagedVersion>)>> {
    let mut damaged = Vec::new();
    let mut newest_error = None;
    for &version in versions.iter().rev() {
        let pin = shared.pins.pin(version);
        match manifest::read(&shared.root, version) {
            Ok(m) => {
                return Ok(Some((
                    Snapshot::new(shared.clone(), Arc::new(m), pin),
                    damaged,
                )));
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e @ Error::UnsupportedFormat { .. }) => return Err(e),
            Err(e) => {
                damaged.push(DamagedVersion {
                    version,
                    error: e.to_string(),
                });
                newest_error.get_or_insert(e);
            }
        }
    }
    Err(newest_error.unwrap_or_else(|| Error::NotADatabase {
        path: shared.root.clone(),
        detail: format!(
            "no manifest in {}",
            shared.root.join(VERSIONS_DIR).display()
        ),
    }))
}

/// What a damaged newer version means for the user, and the way out.
pub(crate) fn fallback_message(damaged: &DamagedVersion, shown: u64) -> String {
    format!(
        "version {} cannot be read ({}); showing version {shown} instead, so the commits after \
         version {shown} are missing. Writes are refused until this is resolved: put back an intact \
         copy of the file, or accept version {shown} with `RESTORE VERSION {shown}`",
        damaged.version, damaged.error
    )
}

/// Takes the exclusive lock on `root/LOCK`, polling for up to `busy` while another holds it, and
/// records who holds it.
pub(crate) fn acquire_lock(root: &Path, busy: Duration) -> Result<File> {
    let path = root.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if start.elapsed() < busy => {
                std::thread::sleep(pause.min(busy.saturating_sub(start.elapsed())));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
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
                    waited: start.elapsed(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
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
