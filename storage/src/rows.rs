//! Row data of a segment: an rkyv archive of row records (`.rows`) read zero-copy from a memory
//! map, and the image bytes they point into (`.blob`).

use std::path::Path;

use rkyv::rancor;

use crate::error::{Error, Result};
use crate::format::{self, FileKind, HEADER_LEN, HeaderFields};
use crate::fsio::Mapped;
use crate::manifest::FileRef;
use crate::schema::{ColumnType, NewRow, Schema, Value};

/// Where a row's image lives in the segment's blob body.
#[derive(Debug, rkyv::Archive, rkyv::Serialize)]
#[rkyv(derive(Debug))]
pub(crate) struct StoredImage {
    pub offset: u64,
    pub len: u64,
    pub source: String,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize)]
#[rkyv(derive(Debug))]
pub(crate) enum StoredValue {
    Null,
    Str(String),
    I64(i64),
    F64(f64),
    Bool(bool),
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize)]
#[rkyv(derive(Debug))]
pub(crate) struct RowRecord {
    pub id: u64,
    pub image: Option<StoredImage>,
    pub texts: Vec<String>,
    /// Position of this row's first caption among all captions of the segment (text spaces hold
    /// one vector per caption in this order).
    pub text_start: u64,
    pub split: Option<String>,
    /// One value per metadata column of the schema, in schema order.
    pub meta: Vec<StoredValue>,
}

/// The archived root of a `.rows` body.
type ArchivedRows = rkyv::vec::ArchivedVec<ArchivedRowRecord>;

/// Checks `row` against `schema` and returns its metadata in schema order.
pub(crate) fn validate_row(schema: &Schema, row: &NewRow) -> Result<Vec<StoredValue>> {
    let mut meta: Vec<Option<StoredValue>> = schema.metadata.iter().map(|_| None).collect();
    for (name, value) in &row.metadata {
        let pos = schema.position(name)?;
        let col = &schema.metadata[pos];
        if meta[pos].is_some() {
            return Err(Error::InvalidArgument(format!(
                "column '{name}' is given twice in one row"
            )));
        }
        let stored = match (col.ty, value) {
            (_, Value::Null) if col.nullable => StoredValue::Null,
            (ColumnType::String, Value::String(s)) => StoredValue::Str(s.clone()),
            (ColumnType::I64, Value::I64(v)) => StoredValue::I64(*v),
            (ColumnType::F64, Value::F64(v)) => StoredValue::F64(*v),
            (ColumnType::F64, Value::I64(v)) => StoredValue::F64(*v as f64),
            (ColumnType::Bool, Value::Bool(v)) => StoredValue::Bool(*v),
            _ => {
                return Err(Error::TypeMismatch {
                    column: name.clone(),
                    expected: if col.nullable {
                        format!("{} or null", col.ty)
                    } else {
                        col.ty.to_string()
                    },
                    got: value.type_name().to_string(),
                });
            }
        };
        meta[pos] = Some(stored);
    }
    meta.into_iter()
        .zip(&schema.metadata)
        .map(|(v, col)| match v {
            Some(v) => Ok(v),
            None if col.nullable => Ok(StoredValue::Null),
            None => Err(Error::InvalidArgument(format!(
                "column '{}' is not nullable and has no value",
                col.name
            ))),
        })
        .collect()
}

/// Writes a `.rows` file holding `records` (already validated).
pub(crate) fn write_rows(path: &Path, records: &Vec<RowRecord>) -> Result<(u64, u32)> {
    let body = rkyv::to_bytes::<rancor::Error>(records)
        .map_err(|e| Error::InvalidArgument(format!("cannot archive rows: {e}")))?;
    format::write_file(
        path,
        FileKind::Rows,
        HeaderFields {
            count: records.len() as u64,
            ..Default::default()
        },
        &body,
    )
}

/// A validated, memory-mapped `.rows` file.
#[derive(Debug)]
pub(crate) struct RowsFile {
    map: Mapped,
}

/// What a segment's manifest entry says about its row archive.
#[derive(Debug, Clone, Copy)]
pub struct RowsShape {
    pub rows: u64,
    pub texts: u64,
    pub min_row_id: u64,
    pub max_row_id: u64,
    /// Bytes of the segment's blob body, which images point into.
    pub blob_len: u64,
}

impl RowsShape {
    pub(crate) fn of(meta: &crate::SegmentMeta) -> Self {
        RowsShape {
            rows: meta.rows,
            texts: meta.texts,
            min_row_id: meta.min_row_id,
            max_row_id: meta.max_row_id,
            blob_len: meta.blob_file.len.saturating_sub(HEADER_LEN as u64),
        }
    }
}

/// Validates a `.rows` body: rkyv's structural check (bytecheck), then what readers index by:
/// the row count, ids ascending within the segment's range, each row's first caption at the
/// running count of captions and the total equal to the segment's, images inside the blob.
pub fn check_rows(body: &[u8], shape: &RowsShape) -> std::result::Result<(), String> {
    archive(body, shape).map(|_| ())
}

fn archive<'a>(body: &'a [u8], shape: &RowsShape) -> std::result::Result<&'a ArchivedRows, String> {
    let rows = rkyv::access::<ArchivedRows, rancor::Error>(body)
        .map_err(|e| format!("invalid row archive: {e}"))?;
    if rows.len() as u64 != shape.rows {
        return Err(format!(
            "holds {} rows, the manifest says {}",
            rows.len(),
            shape.rows
        ));
    }
    let mut texts = 0u64;
    let mut last_id = None;
    for (i, row) in rows.iter().enumerate() {
        let id = row.id.to_native();
        if last_id.is_some_and(|last| id <= last)
            || !(shape.min_row_id..=shape.max_row_id).contains(&id)
        {
            return Err(format!(
                "row {i} has id {id}: not ascending or outside the segment's ids {} to {}",
                shape.min_row_id, shape.max_row_id
            ));
        }
        last_id = Some(id);
        if row.text_start.to_native() != texts {
            return Err(format!(
                "row {i}'s first caption is at {}, after {texts} captions",
                row.text_start.to_native()
            ));
        }
        texts += row.texts.len() as u64;
        if let Some(img) = row.image.as_ref() {
            let end = img.offset.to_native().checked_add(img.len.to_native());
            if end.is_none_or(|end| end > shape.blob_len) {
                return Err(format!(
                    "row {i}'s image ({} bytes at {}) lies outside the {}-byte blob",
                    img.len.to_native(),
                    img.offset.to_native(),
                    shape.blob_len
                ));
            }
        }
    }
    if texts != shape.texts {
        return Err(format!(
            "holds {texts} captions, the manifest says {}",
            shape.texts
        ));
    }
    Ok(rows)
}

impl RowsFile {
    pub fn open(path: &Path, expect: &FileRef, shape: &RowsShape) -> Result<Self> {
        let (fields, map) = format::map_file(path, FileKind::Rows, expect)?;
        if fields.count != shape.rows {
            return Err(Error::corruption(
                path,
                format!(
                    "header says {} rows, the manifest says {}",
                    fields.count, shape.rows
                ),
            ));
        }
        archive(&map[HEADER_LEN..], shape).map_err(|e| Error::corruption(path, e))?;
        Ok(RowsFile { map })
    }

    pub fn rows(&self) -> &ArchivedRows {
        // SAFETY: `open` validated exactly these bytes with `rkyv::access` (bytecheck), and the
        // mapping is of a sealed file that never changes, so the archive stays valid.
        unsafe { rkyv::access_unchecked::<ArchivedRows>(&self.map[HEADER_LEN..]) }
    }
}

/// A validated, memory-mapped `.blob` file.
#[derive(Debug)]
pub(crate) struct BlobFile {
    map: Mapped,
}

impl BlobFile {
    pub fn open(path: &Path, expect: &FileRef) -> Result<Self> {
        let (_, map) = format::map_file(path, FileKind::Blob, expect)?;
        Ok(BlobFile { map })
    }

    pub fn body(&self) -> &[u8] {
        &self.map[HEADER_LEN..]
    }
}

/// A metadata value borrowed from a memory-mapped row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    String(&'a str),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl ValueRef<'_> {
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::String(s) => Value::String(s.to_string()),
            ValueRef::I64(v) => Value::I64(v),
            ValueRef::F64(v) => Value::F64(v),
            ValueRef::Bool(v) => Value::Bool(v),
        }
    }
}

/// A zero-copy view of one stored row.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub(crate) rec: &'a ArchivedRowRecord,
    pub(crate) blob: &'a [u8],
    pub(crate) schema: &'a Schema,
}

impl<'a> RowRef<'a> {
    pub fn id(&self) -> u64 {
        self.rec.id.to_native()
    }

    pub fn texts(&self) -> impl ExactSizeIterator<Item = &'a str> + use<'a> {
        self.rec.texts.iter().map(|s| s.as_str())
    }

    pub fn text(&self, i: usize) -> Option<&'a str> {
        self.rec.texts.get(i).map(|s| s.as_str())
    }

    pub fn text_count(&self) -> usize {
        self.rec.texts.len()
    }

    pub fn split(&self) -> Option<&'a str> {
        self.rec.split.as_ref().map(|s| s.as_str())
    }

    pub fn image_source(&self) -> Option<&'a str> {
        self.rec.image.as_ref().map(|i| i.source.as_str())
    }

    /// The stored image bytes, if the row has an image.
    pub fn image_bytes(&self) -> Option<&'a [u8]> {
        let img = self.rec.image.as_ref()?;
        let start = img.offset.to_native() as usize;
        let end = start.checked_add(img.len.to_native() as usize)?;
        self.blob.get(start..end)
    }

    /// Metadata value at schema position `i`.
    pub fn value_at(&self, i: usize) -> ValueRef<'a> {
        match self.rec.meta.get(i) {
            None | Some(ArchivedStoredValue::Null) => ValueRef::Null,
            Some(ArchivedStoredValue::Str(s)) => ValueRef::String(s.as_str()),
            Some(ArchivedStoredValue::I64(v)) => ValueRef::I64(v.to_native()),
            Some(ArchivedStoredValue::F64(v)) => ValueRef::F64(v.to_native()),
            Some(ArchivedStoredValue::Bool(v)) => ValueRef::Bool(*v),
        }
    }

    /// Metadata value by column name.
    pub fn value(&self, name: &str) -> Result<ValueRef<'a>> {
        Ok(self.value_at(self.schema.position(name)?))
    }

    /// Owned copy of the row, as it would be appended again (used by compaction and tests).
    pub fn to_new_row(&self) -> NewRow {
        NewRow {
            image: self.rec.image.as_ref().map(|i| crate::schema::ImageData {
                bytes: self.image_bytes().unwrap_or_default().to_vec(),
                source: i.source.to_string(),
            }),
            texts: self.texts().map(str::to_string).collect(),
            split: self.split().map(str::to_string),
            metadata: self
                .schema
                .metadata
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), self.value_at(i).to_value()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, texts: usize, text_start: u64, image: Option<(u64, u64)>) -> RowRecord {
        RowRecord {
            id,
            image: image.map(|(offset, len)| StoredImage {
                offset,
                len,
                source: "x.png".into(),
            }),
            texts: vec!["a caption".into(); texts],
            text_start,
            split: None,
            meta: Vec::new(),
        }
    }

    fn check(records: Vec<RowRecord>, shape: RowsShape) -> std::result::Result<(), String> {
        let body = rkyv::to_bytes::<rancor::Error>(&records).unwrap();
        check_rows(&body, &shape)
    }

    #[test]
    fn row_archives_must_match_what_readers_index_by() {
        let shape = RowsShape {
            rows: 2,
            texts: 3,
            min_row_id: 5,
            max_row_id: 6,
            blob_len: 10,
        };
        let good = || vec![record(5, 1, 0, Some((0, 4))), record(6, 2, 1, Some((4, 6)))];
        check(good(), shape).unwrap();
        for (records, shape, why) in [
            (good(), RowsShape { rows: 3, ..shape }, "holds 2 rows"),
            (good(), RowsShape { texts: 4, ..shape }, "holds 3 captions"),
            (
                good(),
                RowsShape {
                    blob_len: 9,
                    ..shape
                },
                "outside the 9-byte blob",
            ),
            (
                good(),
                RowsShape {
                    max_row_id: 5,
                    ..shape
                },
                "row 1 has id 6",
            ),
            (
                vec![record(6, 1, 0, None), record(5, 2, 1, None)],
                shape,
                "not ascending",
            ),
            (
                vec![record(5, 1, 0, None), record(6, 2, 2, None)],
                shape,
                "first caption is at 2, after 1",
            ),
            (
                vec![record(5, 1, 0, Some((u64::MAX, 2))), record(6, 2, 1, None)],
                shape,
                "lies outside",
            ),
        ] {
            let e = check(records, shape).unwrap_err();
            assert!(e.contains(why), "{e} (expected {why})");
        }
        assert!(check_rows(b"not an archive", &shape).is_err());
    }
}
