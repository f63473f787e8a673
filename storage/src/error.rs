//! The storage error type: every variant names what it concerns (a path, a collection, a column)
//! so that a user can act on it without reading the source.

use std::path::PathBuf;

/// Result alias used throughout `mirante-storage`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a named file or directory.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its contents are not what was committed (bad magic, checksum mismatch,
    /// truncation, invalid archive).
    #[error("corrupted file {path}: {detail}")]
    Corruption { path: PathBuf, detail: String },

    /// A file written by a format version this build cannot read.
    #[error(
        "{path} has format version {found}, this build reads versions {oldest}..={newest}; \
         upgrade Mirante to open it"
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        oldest: u32,
        newest: u32,
    },

    /// Another process (or another handle in this one) held the writer lock for longer than the
    /// busy timeout.
    #[error(
        "database {path} is locked by another writer ({holder}); gave up after {:.1} s (the busy \
         timeout)",
        .waited.as_secs_f64()
    )]
    Locked {
        path: PathBuf,
        holder: String,
        waited: std::time::Duration,
    },

    /// The directory is not a Mirante database (or holds no committed version).
    #[error("{path} is not a Mirante database: {detail}")]
    NotADatabase { path: PathBuf, detail: String },

    /// Creating a database where one already exists.
    #[error("a database already exists at {path}")]
    DatabaseExists { path: PathBuf },

    /// A named object (collection, column, embedding space, row, version) does not exist.
    #[error("{kind} '{name}' does not exist{hint}")]
    NotFound {
        kind: &'static str,
        name: String,
        /// Extra context such as the names that do exist, starting with "; ".
        hint: String,
    },

    /// Creating an object whose name is taken.
    #[error("{kind} '{name}' already exists")]
    AlreadyExists { kind: &'static str, name: String },

    /// A vector or batch of vectors whose dimension does not match its embedding space.
    #[error("dimension mismatch for {context}: expected {expected}, got {got}")]
    DimensionMismatch {
        context: String,
        expected: usize,
        got: usize,
    },

    /// A metadata value whose type does not match its column.
    #[error("column '{column}' expects {expected}, got {got}")]
    TypeMismatch {
        column: String,
        expected: String,
        got: String,
    },

    /// Any other argument the caller got wrong; the message says what was expected.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// FAISS refused an operation (bad factory string, training failure, ...).
    #[error("FAISS error while {context}: {detail}")]
    Faiss { context: String, detail: String },

    /// A newer committed version cannot be read, so the database shows an older one; writing on
    /// top of it would make the loss permanent. The message says how to resolve it.
    #[error("{message}")]
    DamagedNewerVersion { message: String },

    /// Another writer (on this machine or another) committed the version this commit was going
    /// to be, so nothing was committed; the database is unchanged by this attempt.
    #[error(
        "another writer committed version {version} of {uri} first; nothing was committed by \
         this statement, run it again"
    )]
    Conflict { uri: String, version: u64 },

    /// The object store holding the database failed (network, permissions, a missing bucket).
    #[error("object store error on {uri}: {detail}")]
    Remote { uri: String, detail: String },

    /// The caller asked a long operation to stop (compaction between merges); what was
    /// committed before stays committed.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Corruption {
            path: path.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn faiss(context: impl Into<String>, err: faiss::error::Error) -> Self {
        Error::Faiss {
            context: context.into(),
            detail: err.to_string(),
        }
    }
}
