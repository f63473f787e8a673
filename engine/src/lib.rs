//! Mirante: an embedded image-text retrieval database engine.
//!
//! This crate is the library users depend on. Today it exposes the storage engine
//! ([`storage`]); the query language, encoders, evaluation and training arrive on top of it.

pub use mirante_storage as storage;
pub use mirante_storage::{Database, Error, Result, Snapshot, Writer};
