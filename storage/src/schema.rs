//! Collection schemas, metadata values, rows to insert, and embedding spaces.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Type of a metadata column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    I64,
    F64,
    Bool,
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ColumnType::String => "string",
            ColumnType::I64 => "i64",
            ColumnType::F64 => "f64",
            ColumnType::Bool => "bool",
        })
    }
}

/// A typed metadata column. `id`, `image`, `text` and `split` are built in and not listed here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
}

impl ColumnDef {
    pub fn new(name: impl Into<String>, ty: ColumnType, nullable: bool) -> Self {
        ColumnDef {
            name: name.into(),
            ty,
            nullable,
        }
    }
}

/// Names reserved for the built-in columns.
pub const BUILTIN_COLUMNS: [&str; 4] = ["id", "image", "text", "split"];

/// The metadata columns of a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub metadata: Vec<ColumnDef>,
}

impl Schema {
    pub fn new(metadata: Vec<ColumnDef>) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for c in &metadata {
            if c.name.is_empty() {
                return Err(Error::InvalidArgument(
                    "column names must not be empty".into(),
                ));
            }
            if BUILTIN_COLUMNS.contains(&c.name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "'{}' is a built-in column ({}); pick another name for a metadata column",
                    c.name,
                    BUILTIN_COLUMNS.join(", ")
                )));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(Error::AlreadyExists {
                    kind: "column",
                    name: c.name.clone(),
                });
            }
        }
        Ok(Schema { metadata })
    }

    /// Position of a metadata column by name.
    pub fn position(&self, name: &str) -> Result<usize> {
        self.metadata
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| Error::NotFound {
                kind: "column",
                name: name.to_string(),
                hint: format!(
                    "; columns are: {}",
                    BUILTIN_COLUMNS
                        .iter()
                        .map(|s| s.to_string())
                        .chain(self.metadata.iter().map(|c| c.name.clone()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    String(String),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::String(_) => "string",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
        }
    }
}

/// Image bytes as stored in the database, plus where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageData {
    pub bytes: Vec<u8>,
    /// Source path or URI the bytes were read from (kept for display and provenance).
    pub source: String,
}

/// A row to append. Its `id` is assigned by the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewRow {
    pub image: Option<ImageData>,
    /// Zero or more captions.
    pub texts: Vec<String>,
    pub split: Option<String>,
    /// Metadata by column name; omitted nullable columns are null.
    pub metadata: Vec<(String, Value)>,
}

/// Which side of the dual encoder a vector comes from. Image spaces hold one vector per row,
/// text spaces one vector per caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Image,
    Text,
}

impl std::fmt::Display for Modality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Modality::Image => "image",
            Modality::Text => "text",
        })
    }
}

/// How vectors of a space are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Vectors (stored and queried) are L2-normalised, so inner product is the cosine.
    Cosine,
    /// Raw inner product, vectors stored as given.
    InnerProduct,
}

/// Identity of an embedding space: vectors are comparable only within one space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceSpec {
    /// Model name or Hub id.
    pub model_id: String,
    /// Fingerprint of the weights (e.g. a hash of the safetensors file), so that a fine-tuned
    /// model under the same name is a different space.
    pub fingerprint: String,
    pub modality: Modality,
    pub dim: usize,
    pub metric: Metric,
}

/// Identifier of an embedding space within a collection.
pub type SpaceId = u32;
