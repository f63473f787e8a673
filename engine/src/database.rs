//! The database handle users open: storage, the writer (taken for one statement at a time), the
//! registry and loaded models, and the caches statements share. Running statements is the
//! executor's (`exec`): [`Database::sql`], [`Database::execute`].

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use mirante_storage::{self as storage, Snapshot};
use mirante_training::{Device, ImageLimits, PipelineOptions, Progress};

use crate::access::Access;
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::models::Models;
use crate::pixel_cache::PixelCache;
use crate::registry::{self, Registry};

/// How the engine runs long jobs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Progress bars on stderr for imports, embedding and training (unless a statement's
    /// [`ExecOptions::progress`] shows them elsewhere).
    pub progress: bool,
    /// Images or texts per model batch.
    pub batch_size: usize,
    /// Image decode/resize threads.
    pub workers: usize,
    pub device: Device,
    /// Bytes of preprocessed pixels kept in memory across statements for ELIP re-ranking
    /// (0 turns the cache off).
    pub pixel_cache_bytes: u64,
    /// What a user's image may cost (pixels, file size); larger ones are refused.
    pub image_limits: ImageLimits,
    /// How long a writing statement waits for another process's writer before failing.
    pub busy_timeout: Duration,
    /// The folders statements may read and write outside the database, and whether they may
    /// download models ([`Access::confined`] for hosts that run their users' statements).
    pub access: Access,
    /// Refuse every statement that would change the database or write a file (the MCP
    /// server's default); the database must exist. EVALUATE still runs, unrecorded.
    pub read_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        let pipeline = PipelineOptions::default();
        Options {
            progress: false,
            batch_size: pipeline.batch_size,
            workers: pipeline.workers,
            device: mirante_training::default_device(),
            pixel_cache_bytes: crate::pixel_cache::DEFAULT_BYTES,
            image_limits: ImageLimits::default(),
            busy_timeout: storage::DEFAULT_BUSY_TIMEOUT,
            access: Access::default(),
            read_only: false,
        }
    }
}

/// How one statement runs.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Stops the statement at its next check ([`CancelToken::cancel`]).
    pub cancel: CancelToken,
    /// Search hits carry their stored image bytes (for reports and RAG callers).
    pub image_bytes: bool,
    /// Where this statement's progress shows; [`Progress::Hidden`] leaves it to
    /// [`Options::progress`].
    pub progress: Progress,
}

/// An open Mirante database.
#[derive(Debug)]
pub struct Database {
    pub(crate) store: storage::Database,
    writer: Mutex<Option<storage::Writer>>,
    pub(crate) models: Models,
    pub(crate) options: Options,
    /// Preprocessed candidate images of re-ranking, kept across statements.
    pub(crate) pixels: PixelCache,
}

impl Database {
    /// Opens the database at `path`, creating it if the directory does not hold one.
    pub fn open(path: impl AsRef<Path>) -> Result<Database> {
        Self::open_with(path, Options::default())
    }

    /// Opens (or creates) the database at `path`: a folder, or an object-storage URI
    /// (`s3://bucket/prefix`, `gs://`, `az://`) worked on through a local cache folder,
    /// which [`Database::path`] then names. References to registry models that an
    /// older release stored as absolute paths are rewritten as `registry:<name>` keys in one
    /// commit (see [`crate::registry`]), so moved and copied databases use their own models.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Database> {
        let location = path.as_ref().to_str().filter(|s| storage::is_remote(s));
        let store = match location {
            // On object storage, through a local cache folder (docs/scale-out.md).
            Some(uri) => storage::Database::open_location(uri, None)?,
            None if options.read_only => storage::Database::open(path)?,
            None => storage::Database::open_or_create(path)?,
        };
        store.set_busy_timeout(options.busy_timeout);
        let registry = Registry::new(store.path());
        if !options.read_only {
            registry::migrate(&store, &registry)?;
        }
        let mut options = options;
        options.access.also_read(store.path());
        options.access.also_read(&mirante_training::hub_cache_dir());
        Ok(Database {
            writer: Mutex::new(None),
            models: Models::with_registry(options.device.clone(), registry)
                .with_image_limits(options.image_limits)
                .with_access(options.access.clone()),
            pixels: PixelCache::new(options.pixel_cache_bytes),
            options,
            store,
        })
    }

    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// The storage engine underneath (snapshots, versions, low-level writes).
    pub fn storage(&self) -> &storage::Database {
        &self.store
    }

    /// The database's model registry.
    pub fn registry(&self) -> &Registry {
        // A database's models always have its registry.
        match self.models.registry() {
            Ok(r) => r,
            Err(_) => unreachable!("Database::open_with gives its models a registry"),
        }
    }

    /// What is wrong with the database, one message each: a newer version whose manifest cannot
    /// be read, so that an older one is shown and writes are refused until `RESTORE VERSION`
    /// accepts it. Empty on a healthy database; hosts should show these to their users.
    pub fn warnings(&self) -> Vec<String> {
        self.store.warnings()
    }

    /// A snapshot of the newest committed version.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.store.snapshot()?)
    }

    /// Where a statement's progress shows.
    pub(crate) fn progress(&self, exec: &ExecOptions) -> Progress {
        match &exec.progress {
            Progress::Hidden => self.options.progress.into(),
            chosen => chosen.clone(),
        }
    }

    /// The embedding pipeline's settings for one statement.
    pub(crate) fn pipeline(&self, exec: &ExecOptions) -> PipelineOptions {
        PipelineOptions {
            batch_size: self.options.batch_size,
            workers: self.options.workers,
            progress: self.progress(exec),
            stop: exec.cancel.stop(),
        }
    }

    /// The writer, taken (with the database's writer lock) on first use in a statement. Fails
    /// before any work while a newer version is damaged (see [`storage::Database::warnings`]).
    pub(crate) fn writer(&self) -> Result<WriterGuard<'_>> {
        let guard = self.writer_for_restore()?;
        guard.check_writable()?;
        Ok(guard)
    }

    /// The writer even while a newer version is damaged: `RESTORE VERSION` is how the user
    /// accepts the fallback.
    pub(crate) fn writer_for_restore(&self) -> Result<WriterGuard<'_>> {
        if self.options.read_only {
            return Err(Error::ReadOnly);
        }
        let mut guard = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(self.store.writer()?);
        }
        Ok(WriterGuard(guard))
    }

    /// Gives the writer lock back after a statement, so that other processes (a second shell,
    /// a script) can write between statements, as with SQLite.
    pub(crate) fn release_writer(&self) {
        *self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Exclusive use of the writer for one statement.
pub(crate) struct WriterGuard<'a>(MutexGuard<'a, Option<storage::Writer>>);

// `Database::writer` stores the writer before it builds the guard.
impl std::ops::Deref for WriterGuard<'_> {
    type Target = storage::Writer;
    fn deref(&self) -> &storage::Writer {
        match self.0.as_ref() {
            Some(w) => w,
            None => unreachable!("writer initialised by Database::writer"),
        }
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut storage::Writer {
        match self.0.as_mut() {
            Some(w) => w,
            None => unreachable!("writer initialised by Database::writer"),
        }
    }
}
