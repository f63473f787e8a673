//! The training crate's error type.

use std::path::PathBuf;

/// Result alias used throughout `mirante-training`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running an encoder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file a checkpoint needs is not there.
    #[error("{path} is missing: {detail}")]
    MissingFile { path: PathBuf, detail: String },

    /// A configuration file that does not parse or holds an unusable value.
    #[error("invalid {path}: {detail}")]
    InvalidConfig { path: PathBuf, detail: String },

    /// A `model_type` (or variant) Mirante does not implement.
    #[error("unsupported model type '{found}' in {path}; supported: {supported}")]
    UnsupportedModel {
        path: PathBuf,
        found: String,
        supported: String,
    },

    /// A tensor missing from the checkpoint or of the wrong shape.
    #[error("checkpoint {path}: {detail}")]
    Weights { path: PathBuf, detail: String },

    /// An image that cannot be decoded.
    #[error("cannot decode image {source_name}: {detail}")]
    Image { source_name: String, detail: String },

    #[error("tokenizer {path}: {detail}")]
    Tokenizer { path: PathBuf, detail: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A tensor operation failed (a bug, or out of memory).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),

    /// Training met a non-finite loss, gradient or weight (a learning rate far too high, say).
    /// It stops there: nothing from that step on is saved.
    #[error(
        "training diverged at epoch {epoch}, step {step}: {detail}; stopped without saving \
         anything from this point (lower the learning rate, now {lr})"
    )]
    Diverged {
        epoch: usize,
        step: usize,
        detail: String,
        lr: f64,
    },

    /// The caller's stop flag was raised ([`crate::Stop`]); checked between batches and steps.
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

    pub(crate) fn config(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::InvalidConfig {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
