//! The engine's error type: the errors of the crates below, plus statement, registry and import
//! errors. [`Error::kind`] sorts every error into what the user can fix (their input, the
//! database's state), damaged data, cancellation, and internal bugs.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(mirante_storage::Error),

    #[error(transparent)]
    Model(mirante_training::Error),

    /// A statement that does not parse or bind; `render` shows it with a caret.
    #[error(transparent)]
    Query(#[from] mirante_query::Error),

    /// An import source that cannot be read as a whole (unknown format, unreadable file).
    #[error("cannot import {source_path}: {detail}")]
    Source {
        source_path: PathBuf,
        detail: String,
    },

    /// Rows of an import (or insert) that failed; nothing was committed.
    #[error(
        "{} of {total} rows failed, nothing was committed (add ON ERROR SKIP to import the others):\n{}",
        failures.len(),
        failures.iter().take(20).map(|f| format!("  {f}")).collect::<Vec<_>>().join("\n")
    )]
    RowsFailed {
        total: usize,
        failures: Vec<RowFailure>,
    },

    /// A model name the database's registry does not hold.
    #[error("model '{name}' is not in this database's registry{hint}")]
    UnknownModel { name: String, hint: String },

    /// A new registry model under a name that is taken.
    #[error(
        "model '{name}' already exists in this database; DROP MODEL '{name}' first or pick another name"
    )]
    ModelExists { name: String },

    /// A statement that would change the database or write a file, on a read-only
    /// connection.
    #[error(
        "the database is open read-only, and this statement would change it or write a file; \
         open it for writing to run it"
    )]
    ReadOnly,

    /// A new registry model whose name another statement is training under right now.
    #[error(
        "model '{name}' is being trained by another statement (in this or another process); wait for it to finish or pick another name"
    )]
    ModelBeingTrained { name: String },

    /// A registry model a collection still searches with.
    #[error("collection {collection} embeds with model '{name}'; switch it to another model first")]
    ModelInUse { name: String, collection: String },

    /// A collection lacks the embeddings a statement needs; `detail` says which and how to
    /// compute them.
    #[error("collection {collection} {detail}")]
    MissingEmbeddings { collection: String, detail: String },

    /// A model's weights changed since a collection was embedded with it.
    #[error(
        "the weights of model {model} changed since collection {collection} was embedded with it \
         (fingerprint {then} then, {now} now); re-embed with EMBED {collection} USING MODEL '{model}'"
    )]
    ModelChanged {
        model: String,
        collection: String,
        then: String,
        now: String,
    },

    /// A statement that is well formed but cannot run on this database as it is.
    #[error("{0}")]
    Invalid(String),

    /// The statement was cancelled (Ctrl-C, or a host's [`crate::CancelToken`]); nothing it
    /// did was committed, except the whole segments a resumable job (`REEMBED`) had finished.
    #[error("cancelled")]
    Cancelled,

    /// A file of the engine's own (a model's lineage) that cannot be read as what it must be.
    #[error("corrupted file {path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A broken invariant of the engine itself: a bug, never a consequence of the input.
    #[error("internal error (a bug in Mirante): {0}")]
    Internal(String),
}

/// Who can act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The statement, its input or the database's state: the message says what to change.
    User,
    /// Files that are damaged, missing or unreadable (I/O, corruption, a locked database).
    Data,
    /// Stopped on request.
    Cancelled,
    /// A bug in Mirante.
    Internal,
}

impl From<mirante_storage::Error> for Error {
    fn from(e: mirante_storage::Error) -> Self {
        match e {
            mirante_storage::Error::Cancelled => Error::Cancelled,
            e => Error::Storage(e),
        }
    }
}

impl From<mirante_training::Error> for Error {
    fn from(e: mirante_training::Error) -> Self {
        match e {
            mirante_training::Error::Cancelled => Error::Cancelled,
            e => Error::Model(e),
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn source(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Source {
            source_path: path.into(),
            detail: detail.into(),
        }
    }

    /// Who can act on this error.
    pub fn kind(&self) -> ErrorKind {
        use mirante_storage::Error as S;
        use mirante_training::Error as T;
        match self {
            Error::Storage(S::Io { .. } | S::Corruption { .. } | S::Locked { .. })
            | Error::Storage(S::UnsupportedFormat { .. } | S::DamagedNewerVersion { .. })
            | Error::Storage(S::Faiss { .. } | S::Remote { .. })
            | Error::Model(T::Io { .. } | T::Weights { .. } | T::Tensor(_))
            | Error::Io { .. }
            | Error::Corrupt { .. } => ErrorKind::Data,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Internal(_) => ErrorKind::Internal,
            _ => ErrorKind::User,
        }
    }

    /// The message, with the statement line and a caret for query errors.
    pub fn render(&self, sql: &str) -> String {
        match self {
            Error::Query(e) => e.render(sql),
            other => other.to_string(),
        }
    }
}

/// One row of an import that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFailure {
    /// Where the row is in its source: "metadata.jsonl line 4", "train-00000.parquet row 17".
    pub location: String,
    /// The image path or URI, when known.
    pub image: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for RowFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.image {
            Some(image) => write!(f, "{} ({image}): {}", self.location, self.reason),
            None => write!(f, "{}: {}", self.location, self.reason),
        }
    }
}
