//! The engine's error type: the errors of the crates below, plus statement and import errors.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] mirante_storage::Error),

    #[error(transparent)]
    Model(#[from] mirante_training::Error),

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

    /// A statement that is well formed but cannot run on this database as it is.
    #[error("{0}")]
    Invalid(String),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
