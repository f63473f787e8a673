//! Mirante: an embedded image-text retrieval database engine.
//!
//! This crate is the library users depend on. Today it exposes the storage engine
//! ([`storage`]) and the encoders ([`training`]); the query language, evaluation and training
//! arrive on top of them.

pub use mirante_storage as storage;
pub use mirante_storage::{Database, Error, Result, Snapshot, Writer};
pub use mirante_training as training;
