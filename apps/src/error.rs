//! The applications' error type.

use std::path::PathBuf;

/// Result alias of the applications.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in an application.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A statement or engine call failed.
    #[error(transparent)]
    Engine(#[from] mirante::Error),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file of the application's own that does not read as expected.
    #[error("{path}: {detail}")]
    Data { path: PathBuf, detail: String },

    /// Settings the application cannot run with; the message says what is expected.
    #[error("{0}")]
    Invalid(String),

    /// The engine returned something other than what the application's statement returns
    /// (a bug).
    #[error("unexpected result of `{statement}`: {got}")]
    Unexpected { statement: String, got: String },
}

impl From<mirante::training::Error> for Error {
    fn from(e: mirante::training::Error) -> Self {
        Error::Engine(e.into())
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
