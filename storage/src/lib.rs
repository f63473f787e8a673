//! Mirante's storage engine.
//!
//! A database is a directory: `_versions/` holds one manifest per committed version, `files/`
//! holds immutable data files (rkyv row archives, image blobs, memory-mapped embedding columns,
//! deletion vectors and FAISS index segments). A [`Writer`] (one per database, across processes)
//! commits by writing new files and then a new manifest atomically; readers work on
//! [`Snapshot`]s of one version. See `docs/format.md` for the bytes and the commit protocol.

mod column;
pub mod crashpoint;
mod db;
mod deletes;
mod error;
mod factory;
mod format;
mod fsio;
mod index;
pub mod manifest;
mod pins;
mod remote;
mod rows;
mod schema;
mod search;
mod snapshot;
mod writer;

pub use column::{dot, dot_block, normalize};
pub use db::{DEFAULT_BUSY_TIMEOUT, DamagedVersion, Database, REMOTE_REFRESH};
pub use error::{Error, Result};
pub use format::{FORMAT_VERSION, OLDEST_SUPPORTED_VERSION};
pub use index::{IndexSpec, MIN_INDEXED_ITEMS};
pub use manifest::{CollectionMeta, IdRange, Manifest, SegmentMeta};
pub use remote::is_remote;
pub use rows::{RowRef, RowsShape, ValueRef, check_rows};
pub use schema::{
    BUILTIN_COLUMNS, ColumnDef, ColumnType, ImageData, Metric, Modality, NewRow, Schema, SpaceId,
    SpaceSpec, Value,
};
pub use search::{Hit, RowFilter, SegmentPlan, Strategy, sort_hits};
pub use snapshot::{RowHandle, SegmentView, Snapshot, Vectors};
pub use writer::{
    BuiltColumns, BuiltSegments, CompactReport, DEFAULT_BUILD_GRACE, SegmentBuilder, Stage,
    Transaction, VacuumReport, Writer, WriterOptions, build_columns,
};
