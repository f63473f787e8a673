//! Arrow record batches as import rows, the shared reader of parquet datasets and of Arrow
//! input handed to the library (the Python package's tables and data frames): the image column a
//! struct `{bytes, path}` (Hugging Face datasets' `Image`), a path string or binary; captions a
//! string or a list of strings; a `split` column; scalar metadata columns; precomputed vectors.

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Schema};
use mirante_query::options::{EmbeddingColumns, ImportOptions};
use mirante_storage::{ColumnDef, ColumnType, Value};

use super::source::{ImageRef, Item, Record, display_name};
use super::table::{IMAGE_COLUMNS, TEXT_COLUMNS, role_column};
use super::vectors::{precomputed, vector_at, vectors_at};
use crate::error::{Error, Result, RowFailure};

fn scalar_type(t: &DataType) -> Option<ColumnType> {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Some(ColumnType::I64),
        DataType::UInt64 | DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            Some(ColumnType::F64)
        }
        DataType::Boolean => Some(ColumnType::Bool),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(ColumnType::String),
        _ => None,
    }
}

/// Which Arrow columns play which role.
#[derive(Debug, Clone)]
pub(super) struct ArrowPlan {
    pub image: String,
    pub text: Option<String>,
    pub split_column: bool,
    pub columns: Vec<ColumnDef>,
    pub embeddings: Option<EmbeddingColumns>,
}

/// Which columns of an Arrow schema play which role (image, captions, split, metadata,
/// precomputed vectors), or why the schema cannot be imported; `origin` names the input in
/// messages.
pub(super) fn plan(schema: &Schema, origin: &Path, options: &ImportOptions) -> Result<ArrowPlan> {
    let present: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let image = role_column(options.image_column.as_ref(), &IMAGE_COLUMNS, &present)
        .filter(|c| present.contains(c))
        .ok_or_else(|| {
            Error::source(
                origin,
                format!(
                    "no image column (columns: {}); name it with WITH (image_column = '...')",
                    present.join(", ")
                ),
            )
        })?;
    let text = role_column(options.text_column.as_ref(), &TEXT_COLUMNS, &present);
    if let Some(t) = &text
        && !present.contains(t)
    {
        return Err(Error::source(
            origin,
            format!(
                "text column '{t}' is not in the input (columns: {})",
                present.join(", ")
            ),
        ));
    }
    let mut columns = Vec::new();
    for f in schema.fields() {
        let name = f.name();
        if *name == image || Some(name) == text.as_ref() || name == "split" {
            continue;
        }
        if options
            .embeddings
            .as_ref()
            .is_some_and(|e| *name == e.image || *name == e.text)
        {
            continue;
        }
        let wanted = options.columns.as_ref().is_none_or(|c| c.contains(name));
        match scalar_type(f.data_type()) {
            Some(ty) if wanted => columns.push(ColumnDef::new(name.clone(), ty, true)),
            None if options.columns.as_ref().is_some_and(|c| c.contains(name)) => {
                return Err(Error::source(
                    origin,
                    format!(
                        "column '{name}' has type {}, which is not a scalar Mirante can store",
                        f.data_type()
                    ),
                ));
            }
            _ => {}
        }
    }
    if let Some(e) = &options.embeddings {
        for c in [&e.image, &e.text] {
            if !present.contains(c) {
                return Err(Error::source(
                    origin,
                    format!(
                        "embedding column '{c}' is not in the input (columns: {})",
                        present.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(ArrowPlan {
        image,
        text,
        split_column: present.iter().any(|p| p == "split"),
        columns,
        embeddings: options.embeddings.clone(),
    })
}

/// Record batches read as [`Item`]s: one per row, or why the row cannot be imported.
pub(super) struct Batches<R> {
    /// The input's name in row locations and errors (a file, or "arrow input").
    origin: PathBuf,
    /// Where relative image paths are resolved.
    base: PathBuf,
    /// The split of rows that carry none.
    split: Option<String>,
    plan: ArrowPlan,
    reader: Option<R>,
    pending: std::vec::IntoIter<Item>,
    row: usize,
    error: Option<Error>,
}

impl<R> Batches<R> {
    /// Reads `reader` (or reports `error`, when the input could not be opened).
    pub fn new(
        (origin, base): (PathBuf, PathBuf),
        split: Option<String>,
        plan: ArrowPlan,
        reader: Result<R>,
    ) -> Self {
        let (reader, error) = match reader {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        Batches {
            origin,
            base,
            split,
            plan,
            reader,
            pending: Vec::new().into_iter(),
            row: 0,
            error,
        }
    }

    fn column<'b>(&self, batch: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef> {
        batch.column_by_name(name).ok_or_else(|| {
            Error::source(
                &self.origin,
                format!("column '{name}' is missing in this batch"),
            )
        })
    }
    fn items(&self, batch: &RecordBatch) -> Result<Vec<Item>> {
        let name = display_name(&self.origin);
        let base = self.base.as_path();
        let image = self.column(batch, &self.plan.image)?;
        let text = match &self.plan.text {
            Some(t) => Some(self.column(batch, t)?),
            None => None,
        };
        let split = if self.plan.split_column {
            Some(self.column(batch, "split")?)
        } else {
            None
        };
        let embedding_arrays = match &self.plan.embeddings {
            Some(e) => Some((
                self.column(batch, &e.image)?,
                self.column(batch, &e.text)?,
                e,
            )),
            None => None,
        };
        let meta: Vec<(&ColumnDef, &ArrayRef)> = self
            .plan
            .columns
            .iter()
            .map(|c| Ok((c, self.column(batch, &c.name)?)))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let location = format!("{name} row {}", self.row + i);
            // Only rows that bring their own vectors may lack an image (text-only documents).
            let image = match image_at(image, i, base) {
                Ok(None) if self.plan.embeddings.is_none() => {
                    out.push(Item::Bad(RowFailure {
                        location,
                        image: None,
                        reason: "the image is null".into(),
                    }));
                    continue;
                }
                Ok(im) => im,
                Err(reason) => {
                    out.push(Item::Bad(RowFailure {
                        location,
                        image: None,
                        reason,
                    }));
                    continue;
                }
            };
            let cells = text
                .map(|t| texts_at(t, i))
                .transpose()
                .map(Option::unwrap_or_default)
                .and_then(|texts| {
                    let vectors = embedding_arrays
                        .map(|(im, tx, e)| {
                            precomputed(vector_at(im, i), vectors_at(tx, i), e, texts.len())
                        })
                        .transpose()?;
                    Ok((texts, vectors))
                });
            let (texts, vectors) = match cells {
                Ok(c) => c,
                Err(reason) => {
                    out.push(Item::Bad(RowFailure {
                        location,
                        image: image.as_ref().map(ImageRef::name),
                        reason,
                    }));
                    continue;
                }
            };
            let row_split = match split {
                Some(s) => string_at(s, i),
                None => self.split.clone(),
            };
            let metadata = meta
                .iter()
                .map(|(c, a)| (c.name.clone(), scalar_at(a, i, c.ty)))
                .collect();
            out.push(Item::Row(Record {
                location,
                image,
                texts,
                split: row_split,
                metadata,
                vectors,
            }));
        }
        Ok(out)
    }
}

impl<R: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>> Iterator for Batches<R> {
    type Item = Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            self.reader = None;
            return Some(Err(e));
        }
        loop {
            if let Some(item) = self.pending.next() {
                return Some(Ok(item));
            }
            let batch = match self.reader.as_mut()?.next()? {
                Ok(b) => b,
                Err(e) => {
                    self.reader = None;
                    return Some(Err(Error::source(&self.origin, e.to_string())));
                }
            };
            match self.items(&batch) {
                Ok(items) => {
                    self.row += batch.num_rows();
                    self.pending = items.into_iter();
                }
                Err(e) => {
                    self.reader = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn string_at(a: &ArrayRef, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Some(a.as_string_view().value(i).to_string()),
        _ => None,
    }
}

fn binary_at(a: &ArrayRef, i: usize) -> Option<Vec<u8>> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Binary => Some(a.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Some(a.as_binary::<i64>().value(i).to_vec()),
        DataType::BinaryView => Some(a.as_binary_view().value(i).to_vec()),
        _ => None,
    }
}

/// An image cell: the datasets `Image` struct {bytes, path}, a path string, or raw bytes.
/// A null cell is no image.
fn image_at(a: &ArrayRef, i: usize, base: &Path) -> std::result::Result<Option<ImageRef>, String> {
    if a.is_null(i) {
        return Ok(None);
    }
    match a.data_type() {
        DataType::Struct(_) => {
            let s = a.as_struct();
            let path = s.column_by_name("path").and_then(|p| string_at(p, i));
            let bytes = s.column_by_name("bytes").and_then(|b| binary_at(b, i));
            match (bytes, path) {
                (Some(bytes), path) => Ok(Some(ImageRef::Bytes {
                    name: path.unwrap_or_else(|| format!("row {i}")),
                    bytes,
                })),
                (None, Some(p)) => Ok(Some(ImageRef::Path(base.join(p)))),
                (None, None) => Err("the image struct has neither bytes nor path".into()),
            }
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(Some(ImageRef::Path(
            base.join(string_at(a, i).unwrap_or_default()),
        ))),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            Ok(Some(ImageRef::Bytes {
                name: format!("row {i}"),
                bytes: binary_at(a, i).unwrap_or_default(),
            }))
        }
        other => Err(format!(
            "image column has type {other}; expected a struct {{bytes, path}}, a path string or binary"
        )),
    }
}

/// A text cell: a string or a list of strings.
fn texts_at(a: &ArrayRef, i: usize) -> std::result::Result<Vec<String>, String> {
    if a.is_null(i) {
        return Ok(Vec::new());
    }
    match a.data_type() {
        DataType::List(_) => list_strings(&a.as_list::<i32>().value(i)),
        DataType::LargeList(_) => list_strings(&a.as_list::<i64>().value(i)),
        _ => match string_at(a, i) {
            Some(s) => Ok(vec![s]),
            None => Err(format!(
                "text column has type {}; expected a string or a list of strings",
                a.data_type()
            )),
        },
    }
}

fn list_strings(a: &ArrayRef) -> std::result::Result<Vec<String>, String> {
    (0..a.len())
        .filter(|&j| !a.is_null(j))
        .map(|j| string_at(a, j).ok_or_else(|| format!("caption list of type {}", a.data_type())))
        .collect()
}

fn scalar_at(a: &ArrayRef, i: usize, ty: ColumnType) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    let target = match ty {
        ColumnType::I64 => DataType::Int64,
        ColumnType::F64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::String => DataType::Utf8,
    };
    let Ok(cast) = arrow_cast::cast(&a.slice(i, 1), &target) else {
        return Value::Null;
    };
    match ty {
        ColumnType::I64 => Value::I64(
            cast.as_primitive::<arrow_array::types::Int64Type>()
                .value(0),
        ),
        ColumnType::F64 => Value::F64(
            cast.as_primitive::<arrow_array::types::Float64Type>()
                .value(0),
        ),
        ColumnType::Bool => Value::Bool(cast.as_boolean().value(0)),
        ColumnType::String => string_at(&cast, 0).map_or(Value::Null, Value::String),
    }
}
