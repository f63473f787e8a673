//! Mirante: an embedded image-text retrieval database engine.
//!
//! Open a [`Database`] and run statements with [`Database::sql`] (typed [`Output`]s that convert
//! to tables and Arrow record batches), or use the builder API ([`Database::collection`],
//! [`Collection::search_text`]). Underneath: [`storage`] (files, commits, vector search),
//! [`query`] (the language) and [`training`] (the encoders). `ARCHITECTURE.md` walks the rooms.
//!
//! ```no_run
//! let db = mirante::Database::open("my.db")?;
//! db.sql("CREATE COLLECTION images WITH (model = 'openai/clip-vit-base-patch32')")?;
//! db.sql("IMPORT INTO images FROM 'photos/'")?;
//! for hit in db.collection("images")?.search_text("a dog on the beach").limit(5).run()?.hits {
//!     println!("{} {:.3} {:?}", hit.id, hit.score, hit.image);
//! }
//! # Ok::<(), mirante::Error>(())
//! ```

mod access;
mod api;
mod cancel;
mod catalog;
mod database;
mod error;
mod evaluate;
mod exec;
mod fsio;
pub mod ingest;
pub mod metrics;
mod models;
pub mod output;
mod pixel_cache;
pub mod ranking;
mod reembed;
pub mod registry;
pub mod report;
mod rerank;
mod search;
mod spaces;
mod train;

pub use access::Access;
pub use api::{Collection, EmbeddingVectors, Embeddings, PublishReport, Search};
pub use cancel::CancelToken;
pub use catalog::SnapshotCatalog;
pub use database::{Database, ExecOptions, Options};
pub use error::{Error, ErrorKind, Result, RowFailure};
pub use mirante_query as query;
pub use mirante_storage as storage;
pub use mirante_training as training;
pub use mirante_training::{Progress, ProgressBoard, TaskState};
pub use models::{DEFAULT_MODEL, LoadedElip, LoadedModel, Models};
pub use output::{
    Cell, CellType, Column, Evaluation, Output, ResultSet, SearchHit, SearchResults, SearchTimings,
    TableStyle, TrainingRun,
};
pub use registry::{Lineage, Registry};
