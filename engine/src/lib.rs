//! Mirante: an embedded image-text retrieval database engine.
//!
//! Open a [`Database`] and run statements with [`Database::sql`], or use the builder API
//! ([`Database::collection`], [`Collection::search_text`]). Underneath: [`storage`] (files,
//! commits, vector search), [`query`] (the language) and [`training`] (the encoders).
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

mod api;
mod db;
pub mod demo;
mod elip;
mod error;
pub mod evaluate;
mod exec;
mod finetune;
pub mod ingest;
pub mod metrics;
mod models;
mod pixel_cache;
pub mod pretrain;
pub mod ranking;
pub mod report;
mod result;
mod search;
pub mod shapes;

pub use api::{Collection, Search};
pub use db::{Database, Options, SnapshotCatalog};
pub use error::{Error, Result, RowFailure};
pub use mirante_query as query;
pub use mirante_storage as storage;
pub use mirante_training as training;
pub use models::{DEFAULT_MODEL, LoadedModel, Models};
pub use result::{Cell, ResultSet};
pub use search::{SearchHit, SearchResults, SearchTimings};
