//! The database handle users open: storage, the writer (taken on the first write), loaded
//! models, and `sql()` which parses, binds and executes statements.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use mirante_query::{self as query, Catalog, ColumnInfo, ColumnKind, ColumnRef, Datum};
use mirante_storage::{self as storage, ColumnType, RowRef, Snapshot};
use mirante_training::{Device, PipelineOptions};

use crate::error::Result;
use crate::models::Models;
use crate::pixel_cache::PixelCache;
use crate::result::ResultSet;

/// How the engine runs long jobs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Progress bars on stderr for imports and embedding.
    pub progress: bool,
    /// Images or texts per model batch.
    pub batch_size: usize,
    /// Image decode/resize threads.
    pub workers: usize,
    pub device: Device,
    /// Bytes of preprocessed pixels kept in memory across statements for ELIP re-ranking
    /// (0 turns the cache off).
    pub pixel_cache_bytes: u64,
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
        }
    }
}

impl Options {
    pub(crate) fn pipeline(&self, progress: bool) -> PipelineOptions {
        PipelineOptions {
            batch_size: self.batch_size,
            workers: self.workers,
            progress,
        }
    }
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
    /// Loaded ELIP models, kept across statements.
    pub(crate) elips: crate::elip::ElipCache,
}

impl Database {
    /// Opens the database at `path`, creating it if the directory does not hold one.
    pub fn open(path: impl AsRef<Path>) -> Result<Database> {
        Self::open_with(path, Options::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Database> {
        let store = storage::Database::open_or_create(path)?;
        let registry = store.path().join(crate::finetune::REGISTRY);
        Ok(Database {
            store,
            writer: Mutex::new(None),
            models: Models::with_registry(options.device.clone(), registry),
            pixels: PixelCache::new(options.pixel_cache_bytes),
            elips: Default::default(),
            options,
        })
    }

    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// The storage engine underneath (snapshots, versions, low-level writes).
    pub fn storage(&self) -> &storage::Database {
        &self.store
    }

    /// A snapshot of the newest committed version.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.store.snapshot()?)
    }

    /// Runs `;`-separated statements in order and returns one result per statement. The text is
    /// parsed whole first, so a syntax error anywhere runs nothing; a statement that fails stops
    /// the ones after it (those before it are committed).
    pub fn sql(&self, text: &str) -> Result<Vec<ResultSet>> {
        let mut out = Vec::new();
        self.sql_each(text, |r| out.push(r))?;
        Ok(out)
    }

    /// Like [`Database::sql`], handing each result to `f` as soon as its statement finishes.
    pub fn sql_each(&self, text: &str, mut f: impl FnMut(ResultSet)) -> Result<()> {
        for stmt in query::parse(text)? {
            f(self.execute(stmt)?);
        }
        Ok(())
    }

    /// Binds and runs one parsed statement.
    pub fn execute(&self, stmt: query::Statement) -> Result<ResultSet> {
        let snap = self.snapshot()?;
        let plan = query::bind(stmt, &SnapshotCatalog(&snap))?;
        let result = crate::exec::run(self, plan);
        // The writer lock is held for one statement only, so other processes (a second shell,
        // a script) can write between statements, as with SQLite.
        *self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        result
    }

    /// The writer, taken (with the database's writer lock) on first use in a statement.
    pub(crate) fn writer(&self) -> Result<WriterGuard<'_>> {
        let mut guard = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(self.store.writer()?);
        }
        Ok(WriterGuard(guard))
    }
}

/// Exclusive use of the writer for one statement.
pub(crate) struct WriterGuard<'a>(MutexGuard<'a, Option<storage::Writer>>);

impl std::ops::Deref for WriterGuard<'_> {
    type Target = storage::Writer;
    fn deref(&self) -> &storage::Writer {
        // The guard is only built after the writer was stored.
        self.0
            .as_ref()
            .expect("writer initialised by Database::writer")
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut storage::Writer {
        self.0
            .as_mut()
            .expect("writer initialised by Database::writer")
    }
}

/// The binder's view of a snapshot: its collections and their columns.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotCatalog<'s>(pub &'s Snapshot);

/// Columns of a collection as the language sees them: the built-ins, then metadata.
pub(crate) fn columns_of(schema: &storage::Schema) -> Vec<ColumnInfo> {
    let builtin = |name: &str, column, kind| ColumnInfo {
        name: name.into(),
        column,
        kind,
        nullable: column != ColumnRef::Id,
    };
    let mut v = vec![
        builtin("id", ColumnRef::Id, ColumnKind::Int),
        builtin("image", ColumnRef::Image, ColumnKind::String),
        builtin("text", ColumnRef::Text, ColumnKind::StringList),
        builtin("split", ColumnRef::Split, ColumnKind::String),
    ];
    v.extend(schema.metadata.iter().enumerate().map(|(i, c)| ColumnInfo {
        name: c.name.clone(),
        column: ColumnRef::Meta(i),
        kind: match c.ty {
            ColumnType::String => ColumnKind::String,
            ColumnType::I64 => ColumnKind::Int,
            ColumnType::F64 => ColumnKind::Float,
            ColumnType::Bool => ColumnKind::Bool,
        },
        nullable: c.nullable,
    }));
    v
}

impl Catalog for SnapshotCatalog<'_> {
    fn collection_names(&self) -> Vec<String> {
        self.0
            .collections()
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    fn columns(&self, collection: &str) -> Option<Vec<ColumnInfo>> {
        let c = self.0.collection(collection).ok()?;
        Some(columns_of(&c.schema))
    }
}

/// A stored row as the predicate evaluator reads it.
pub(crate) struct RowValues<'a>(pub RowRef<'a>);

impl query::RowValues for RowValues<'_> {
    fn datum(&self, column: ColumnRef) -> Datum<'_> {
        let r = &self.0;
        match column {
            ColumnRef::Id => Datum::Int(r.id() as i64),
            ColumnRef::Image => r.image_source().map_or(Datum::Null, Datum::Str),
            ColumnRef::Split => r.split().map_or(Datum::Null, Datum::Str),
            ColumnRef::Text => Datum::Null,
            ColumnRef::Meta(i) => match r.value_at(i) {
                storage::ValueRef::Null => Datum::Null,
                storage::ValueRef::String(s) => Datum::Str(s),
                storage::ValueRef::I64(v) => Datum::Int(v),
                storage::ValueRef::F64(v) => Datum::Float(v),
                storage::ValueRef::Bool(v) => Datum::Bool(v),
            },
        }
    }

    fn texts(&self) -> Vec<&str> {
        self.0.texts().collect()
    }
}

/// A bound predicate as SQL, spelled with the collection's column names.
pub(crate) fn predicate_sql(schema: &storage::Schema, p: &query::Predicate) -> String {
    let names = columns_of(schema);
    p.to_sql(&|col| {
        names
            .iter()
            .find(|n| n.column == col)
            .map_or_else(|| format!("{col:?}"), |n| n.name.clone())
    })
}

/// The storage filter of a bound predicate.
pub(crate) fn row_filter(p: &query::Predicate) -> impl Fn(&RowRef<'_>) -> bool + Sync + '_ {
    move |row: &RowRef<'_>| p.matches(&RowValues(*row))
}
