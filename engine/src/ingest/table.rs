//! CSV, TSV and JSONL tables (standalone, or an imagefolder's metadata files): rows of named
//! values, column types inferred over the whole table (integer, float, boolean, else string),
//! the image, caption and split columns found by their usual names.

use std::collections::BTreeMap;
use std::path::Path;

use mirante_query::options::ImportOptions;
use mirante_storage::{ColumnDef, ColumnType, Value};

use super::source::{ImageRef, Item, Record, Source, display_name, extension};
use super::vectors::{json_vector, json_vectors, precomputed};
use crate::error::{Error, Result, RowFailure};
use crate::fsio;

pub(super) const IMAGE_COLUMNS: [&str; 6] = [
    "file_name",
    "image",
    "image_path",
    "path",
    "filepath",
    "file",
];
pub(super) const TEXT_COLUMNS: [&str; 4] = ["text", "caption", "captions", "sentences"];

/// A table read from a text format: rows of named JSON values.
pub(super) type Table = Vec<(String, serde_json::Map<String, serde_json::Value>)>;

/// A table and its lines that could not be read (not UTF-8, malformed): those fail their rows,
/// or are skipped with `ON ERROR SKIP`, like rows whose image cannot be read.
pub(super) struct ReadTable {
    pub table: Table,
    pub bad: Vec<Item>,
}

fn bad_line(location: String, reason: String) -> Item {
    Item::Bad(RowFailure {
        location,
        image: None,
        reason,
    })
}

pub(super) fn read_jsonl(path: &Path) -> Result<ReadTable> {
    let bytes = fsio::read(path)?;
    let name = display_name(path);
    let mut read = ReadTable {
        table: Vec::new(),
        bad: Vec::new(),
    };
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let location = format!("{name} line {}", i + 1);
        let line = match std::str::from_utf8(line) {
            Ok(l) => l,
            Err(e) => {
                read.bad.push(bad_line(
                    location,
                    format!(
                        "not UTF-8 text (invalid byte at column {})",
                        e.valid_up_to() + 1
                    ),
                ));
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(map)) => read.table.push((location, map)),
            Ok(_) => read
                .bad
                .push(bad_line(location, "expected a JSON object".into())),
            Err(e) => read
                .bad
                .push(bad_line(location, format!("not valid JSON: {e}"))),
        }
    }
    Ok(read)
}

pub(super) fn read_csv(path: &Path) -> Result<ReadTable> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(if extension(path) == "tsv" {
            b'\t'
        } else {
            b','
        })
        .from_path(path)
        .map_err(|e| Error::source(path, e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| Error::source(path, e.to_string()))?
        .clone();
    let name = display_name(path);
    let mut raw = Vec::new();
    let mut bad = Vec::new();
    for rec in reader.records() {
        match rec {
            Ok(rec) => {
                let line = rec.position().map_or(0, |p| p.line());
                raw.push((format!("{name} line {line}"), rec));
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                bad.push(bad_line(format!("{name} line {line}"), csv_reason(&e)));
            }
        }
    }
    // A CSV column is numeric or boolean only when every non-empty value is.
    let kinds: Vec<fn(&str) -> Option<serde_json::Value>> = (0..headers.len())
        .map(|c| {
            let values = || {
                raw.iter()
                    .filter_map(|(_, r)| r.get(c))
                    .filter(|v| !v.is_empty())
            };
            let parsers: [fn(&str) -> Option<serde_json::Value>; 3] = [
                |v| v.parse::<i64>().ok().map(serde_json::Value::from),
                |v| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(serde_json::Value::from)
                },
                |v| match v {
                    "true" | "True" | "TRUE" => Some(serde_json::Value::Bool(true)),
                    "false" | "False" | "FALSE" => Some(serde_json::Value::Bool(false)),
                    _ => None,
                },
            ];
            parsers
                .into_iter()
                .find(|p| values().all(|v| p(v).is_some()) && values().next().is_some())
                .unwrap_or(|v| Some(serde_json::Value::from(v)))
        })
        .collect();
    let table = raw
        .into_iter()
        .map(|(loc, rec)| {
            let map = headers
                .iter()
                .zip(rec.iter())
                .zip(&kinds)
                .map(|((h, v), kind)| {
                    let value = if v.is_empty() {
                        serde_json::Value::Null
                    } else {
                        kind(v).unwrap_or_else(|| serde_json::Value::from(v))
                    };
                    (h.to_string(), value)
                })
                .collect();
            (loc, map)
        })
        .collect();
    Ok(ReadTable { table, bad })
}

/// What is wrong with one CSV record, without the position (the location says it).
fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!(
            "not UTF-8 text (field {} is not valid UTF-8)",
            err.field() + 1
        ),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("has {len} fields where the header has {expected_len}"),
        _ => e.to_string(),
    }
}

/// The column type of JSON values seen in one column, widening int to float and anything mixed
/// to string.
fn unify(a: Option<ColumnType>, v: &serde_json::Value) -> Option<ColumnType> {
    use serde_json::Value as J;
    let t = match v {
        J::Null => return a,
        J::Bool(_) => ColumnType::Bool,
        J::Number(n) if n.is_i64() => ColumnType::I64,
        J::Number(_) => ColumnType::F64,
        _ => ColumnType::String,
    };
    Some(match (a, t) {
        (None, t) => t,
        (Some(a), t) if a == t => a,
        (Some(ColumnType::I64), ColumnType::F64) | (Some(ColumnType::F64), ColumnType::I64) => {
            ColumnType::F64
        }
        _ => ColumnType::String,
    })
}

fn json_to_value(v: &serde_json::Value, ty: ColumnType) -> Value {
    use serde_json::Value as J;
    match (v, ty) {
        (J::Null, _) => Value::Null,
        (J::String(s), ColumnType::String) => Value::String(s.clone()),
        (J::Bool(b), ColumnType::Bool) => Value::Bool(*b),
        (J::Number(n), ColumnType::I64) if n.is_i64() => Value::I64(n.as_i64().unwrap_or(0)),
        (J::Number(n), ColumnType::F64) => Value::F64(n.as_f64().unwrap_or(f64::NAN)),
        (other, _) => Value::String(other.to_string()),
    }
}

/// Captions from a JSON value: a string, a list of strings, a JSON-array string, or null.
fn texts_of(v: &serde_json::Value) -> std::result::Result<Vec<String>, String> {
    use serde_json::Value as J;
    match v {
        J::Null => Ok(Vec::new()),
        J::String(s) if s.trim_start().starts_with('[') => {
            match serde_json::from_str::<Vec<String>>(s) {
                Ok(list) => Ok(list),
                Err(_) => Ok(vec![s.clone()]),
            }
        }
        J::String(s) => Ok(vec![s.clone()]),
        J::Array(items) => items
            .iter()
            .map(|i| match i {
                J::String(s) => Ok(s.clone()),
                other => Err(format!("caption list holds {other}, expected strings")),
            })
            .collect(),
        other => Err(format!(
            "caption is {other}, expected a string or a list of strings"
        )),
    }
}

/// Picks the column that plays a role: the one named in the options, else the first of the
/// usual names present.
pub(super) fn role_column(
    named: Option<&String>,
    defaults: &[&str],
    present: &[String],
) -> Option<String> {
    match named {
        Some(n) => Some(n.clone()),
        None => defaults
            .iter()
            .find(|d| present.iter().any(|p| p == *d))
            .map(|d| d.to_string()),
    }
}

/// Rows of a CSV/JSONL table (standalone, or an imagefolder's metadata file). `base` resolves
/// relative image paths; `split` is the split the table's location implies.
pub(super) fn table_items(
    base: &Path,
    table: Table,
    split: Option<String>,
    options: &ImportOptions,
    present: &[String],
    columns: &[ColumnDef],
) -> Result<Vec<Item>> {
    let image_col = role_column(options.image_column.as_ref(), &IMAGE_COLUMNS, present)
        .ok_or_else(|| {
            Error::source(
                base,
                format!(
                    "no image column: none of {} is present (columns: {}); name it with \
                     WITH (image_column = '...')",
                    IMAGE_COLUMNS.join(", "),
                    present.join(", ")
                ),
            )
        })?;
    let text_col = role_column(options.text_column.as_ref(), &TEXT_COLUMNS, present);
    let mut items = Vec::new();
    for (location, row) in table {
        let bad = |reason: String, image: Option<String>| {
            Item::Bad(RowFailure {
                location: location.clone(),
                image,
                reason,
            })
        };
        // Only rows that bring their own vectors may lack an image (text-only documents).
        let image = match row.get(&image_col) {
            Some(serde_json::Value::String(p)) if !p.is_empty() => Some(base.join(p)),
            None | Some(serde_json::Value::Null) if options.embeddings.is_some() => None,
            _ => {
                items.push(bad(
                    format!("missing value in image column '{image_col}'"),
                    None,
                ));
                continue;
            }
        };
        let shown = || image.as_ref().map(|p| p.display().to_string());
        let texts = match &text_col {
            Some(c) => match row.get(c) {
                Some(v) => match texts_of(v) {
                    Ok(t) => t,
                    Err(e) => {
                        items.push(bad(e, shown()));
                        continue;
                    }
                },
                None => {
                    items.push(bad(format!("missing text column '{c}'"), shown()));
                    continue;
                }
            },
            None => Vec::new(),
        };
        let vectors = match &options.embeddings {
            Some(e) => {
                let null = serde_json::Value::Null;
                let cell = |c: &str| row.get(c).unwrap_or(&null);
                match precomputed(
                    json_vector(cell(&e.image)),
                    json_vectors(cell(&e.text)),
                    e,
                    texts.len(),
                ) {
                    Ok(v) => Some(v),
                    Err(reason) => {
                        items.push(bad(reason, shown()));
                        continue;
                    }
                }
            }
            None => None,
        };
        let row_split = match row.get("split") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            _ => split.clone(),
        };
        let metadata = columns
            .iter()
            .map(|c| {
                let v = row.get(&c.name).unwrap_or(&serde_json::Value::Null);
                (c.name.clone(), json_to_value(v, c.ty))
            })
            .collect();
        items.push(Item::Row(Record {
            location,
            image: image.map(ImageRef::Path),
            texts,
            split: row_split,
            metadata,
            vectors,
        }));
    }
    Ok(items)
}

/// Metadata columns of a table: every key but the image, text and split columns (or the ones
/// the options name), typed over all rows.
pub(super) fn table_columns(
    table: &Table,
    options: &ImportOptions,
) -> Result<(Vec<String>, Vec<ColumnDef>)> {
    let mut present: Vec<String> = Vec::new();
    let mut types: BTreeMap<String, Option<ColumnType>> = BTreeMap::new();
    for (_, row) in table {
        for (k, v) in row {
            if !present.contains(k) {
                present.push(k.clone());
            }
            let t = types.entry(k.clone()).or_insert(None);
            *t = unify(*t, v);
        }
    }
    let image_col = role_column(options.image_column.as_ref(), &IMAGE_COLUMNS, &present);
    let text_col = role_column(options.text_column.as_ref(), &TEXT_COLUMNS, &present);
    let embedding_cols = options
        .embeddings
        .as_ref()
        .map(|e| [e.image.clone(), e.text.clone()]);
    let roles = [image_col, text_col, Some("split".to_string())]
        .into_iter()
        .chain(embedding_cols.into_iter().flatten().map(Some))
        .collect::<Vec<_>>();
    let keep = |name: &String| {
        !roles.iter().flatten().any(|r| r == name)
            && options
                .columns
                .as_ref()
                .is_none_or(|cols| cols.contains(name))
    };
    let columns = present
        .iter()
        .filter(|n| keep(n))
        .map(|n| {
            let ty = types
                .get(n)
                .copied()
                .flatten()
                .unwrap_or(ColumnType::String);
            ColumnDef::new(n.clone(), ty, true)
        })
        .collect();
    Ok((present, columns))
}

/// Applies the `split` option: filter when the rows have splits, else assign it.
pub(super) fn apply_split(items: Vec<Item>, options: &ImportOptions) -> Vec<Item> {
    let Some(wanted) = &options.split else {
        return items;
    };
    let has_splits = items
        .iter()
        .any(|i| matches!(i, Item::Row(r) if r.split.is_some()));
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Row(mut r) => {
                if !has_splits {
                    r.split = Some(wanted.clone());
                    Some(Item::Row(r))
                } else if r.split.as_deref() == Some(wanted) {
                    Some(Item::Row(r))
                } else {
                    None
                }
            }
            bad => Some(bad),
        })
        .collect()
}

pub(super) fn table_source(
    path: &Path,
    ReadTable { table, bad }: ReadTable,
    split: Option<String>,
    options: &ImportOptions,
) -> Result<Source> {
    let base = path.parent().unwrap_or(Path::new("."));
    let (present, columns) = table_columns(&table, options)?;
    if let Some(c) = &options.text_column
        && !present.contains(c)
    {
        return Err(Error::source(
            path,
            format!(
                "text column '{c}' is not in the file (columns: {})",
                present.join(", ")
            ),
        ));
    }
    let mut items = table_items(base, table, split, options, &present, &columns)?;
    items.extend(bad);
    let items = apply_split(items, options);
    Ok(Source {
        columns,
        items: Box::new(items.into_iter().map(Ok)),
    })
}
