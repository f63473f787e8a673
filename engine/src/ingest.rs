//! Import sources: a folder in the Hugging Face imagefolder convention, a CSV or JSONL file naming
//! images, or a Hugging Face parquet dataset (a file, a folder of shards, or `hf://datasets/...`
//! in the hub cache). Each source yields [`Item`]s lazily (image bytes are read when the
//! executor gets to them) and declares its metadata columns up front, with types inferred over
//! the whole table for text formats.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use mirante_storage::{ColumnDef, ColumnType, Value};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result, RowFailure};

/// Image file extensions an imagefolder import picks up.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];
const IMAGE_COLUMNS: [&str; 6] = [
    "file_name",
    "image",
    "image_path",
    "path",
    "filepath",
    "file",
];
const TEXT_COLUMNS: [&str; 4] = ["text", "caption", "captions", "sentences"];
const SPLIT_NAMES: [&str; 6] = ["train", "test", "validation", "valid", "val", "dev"];
/// Rows per parquet batch: small enough to bound memory when images are inline.
const PARQUET_BATCH: usize = 256;

/// `IMPORT ... WITH (...)` options.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub image_column: Option<String>,
    pub text_column: Option<String>,
    /// Keep only this split when the source has splits; otherwise assign it to every row.
    pub split: Option<String>,
    /// Metadata columns to keep (default: every scalar column).
    pub columns: Option<Vec<String>>,
    /// Import at most this many rows.
    pub limit: Option<usize>,
    /// Columns holding vectors computed elsewhere, stored instead of embedding the rows.
    pub embeddings: Option<EmbeddingColumns>,
}

/// Where precomputed embeddings are, and which model made them.
#[derive(Debug, Clone)]
pub struct EmbeddingColumns {
    /// One vector per row.
    pub image: String,
    /// One vector per caption: a list of vectors (or one vector for a row with one caption).
    pub text: String,
    /// The name the vectors' spaces get (`EVALUATE ... USING MODEL` names them by it).
    pub model: String,
}

/// A row's precomputed vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Precomputed {
    pub image: Vec<f32>,
    /// One per caption, in caption order.
    pub texts: Vec<Vec<f32>>,
}

/// Where a row's image comes from.
#[derive(Debug, Clone)]
pub enum ImageRef {
    Path(PathBuf),
    Bytes { name: String, bytes: Vec<u8> },
}

impl ImageRef {
    /// The path or URI shown for the image.
    pub fn name(&self) -> String {
        match self {
            // Absolute, so the stored source stays meaningful from any working directory.
            ImageRef::Path(p) => std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            ImageRef::Bytes { name, .. } => name.clone(),
        }
    }
}

/// A row read from a source.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it is in the source, for error messages.
    pub location: String,
    pub image: ImageRef,
    pub texts: Vec<String>,
    pub split: Option<String>,
    pub metadata: Vec<(String, Value)>,
    /// Present when the import names embedding columns.
    pub vectors: Option<Precomputed>,
}

/// A row, or why it cannot be imported.
#[derive(Debug)]
pub enum Item {
    Row(Record),
    Bad(RowFailure),
}

/// An opened source.
pub struct Source {
    /// Metadata columns (all nullable) the rows carry.
    pub columns: Vec<ColumnDef>,
    pub items: Box<dyn Iterator<Item = Result<Item>> + Send>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// Opens `source` (see the module docs for what it may be).
pub fn open(source: &str, options: &ImportOptions) -> Result<Source> {
    let path = match source.strip_prefix("hf://datasets/") {
        Some(id) => hub_dataset(id)?,
        None => PathBuf::from(source),
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        Error::source(
            &path,
            format!(
                "{e}; expected a folder, a .csv/.jsonl/.parquet file or hf://datasets/<org>/<name>"
            ),
        )
    })?;
    let source = if meta.is_dir() {
        let parquet = files_with(&path, &["parquet"])?;
        if !parquet.is_empty() && files_with(&path, &IMAGE_EXTENSIONS)?.is_empty() {
            parquet_source(&path, parquet, options)?
        } else {
            imagefolder(&path, options)?
        }
    } else {
        match extension(&path).as_str() {
            "csv" | "tsv" => table_source(&path, read_csv(&path)?, None, options)?,
            "jsonl" | "json" | "ndjson" => table_source(&path, read_jsonl(&path)?, None, options)?,
            "parquet" => parquet_source(
                path.parent().unwrap_or(Path::new(".")),
                vec![path.clone()],
                options,
            )?,
            other => {
                return Err(Error::source(
                    &path,
                    format!(
                        "unknown file type '.{other}'; expected .csv, .jsonl or .parquet, or a folder"
                    ),
                ));
            }
        }
    };
    Ok(match options.limit {
        Some(n) => Source {
            columns: source.columns,
            items: Box::new(source.items.take(n)),
        },
        None => source,
    })
}

fn extension(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The snapshot folder of a dataset in the Hugging Face hub cache: `<id>[@<revision>]`.
fn hub_dataset(id: &str) -> Result<PathBuf> {
    let (id, revision) = id.split_once('@').unwrap_or((id, "main"));
    let repo =
        mirante_training::hub_cache_dir().join(format!("datasets--{}", id.replace('/', "--")));
    let by_commit = repo.join("snapshots").join(revision);
    if by_commit.is_dir() {
        return Ok(by_commit);
    }
    let refs = repo.join("refs").join(revision);
    let commit = std::fs::read_to_string(&refs).map_err(|e| {
        Error::source(
            &repo,
            format!(
                "dataset {id} (revision {revision}) is not in the hub cache ({e}); download it \
                 with `huggingface-cli download --repo-type dataset {id}` where the network allows"
            ),
        )
    })?;
    Ok(repo.join("snapshots").join(commit.trim()))
}

/// Files under `root` (recursively, sorted) with one of `extensions`.
fn files_with(root: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if extensions.contains(&extension(&path).as_str()) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The split named by the first directory of `path` below `root`, if it is a split name.
fn split_of(root: &Path, path: &Path) -> Option<String> {
    let first = path.strip_prefix(root).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.to_ascii_lowercase();
    SPLIT_NAMES.contains(&name.as_str()).then_some(name)
}

/// A table read from a text format: rows of named JSON values.
type Table = Vec<(String, serde_json::Map<String, serde_json::Value>)>;

fn read_jsonl(path: &Path) -> Result<Table> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let name = display_name(path);
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::source(path, format!("line {}: {e}", i + 1)))?;
        let serde_json::Value::Object(map) = value else {
            return Err(Error::source(
                path,
                format!("line {}: expected a JSON object", i + 1),
            ));
        };
        rows.push((format!("{name} line {}", i + 1), map));
    }
    Ok(rows)
}

fn read_csv(path: &Path) -> Result<Table> {
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
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| Error::source(path, e.to_string()))?;
        raw.push((format!("{name} line {}", i + 2), rec));
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
    Ok(raw
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
        .collect())
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
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
fn role_column(named: Option<&String>, defaults: &[&str], present: &[String]) -> Option<String> {
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
fn table_items(
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
        let image = match row.get(&image_col) {
            Some(serde_json::Value::String(p)) if !p.is_empty() => base.join(p),
            _ => {
                items.push(bad(
                    format!("missing value in image column '{image_col}'"),
                    None,
                ));
                continue;
            }
        };
        let texts = match &text_col {
            Some(c) => match row.get(c) {
                Some(v) => match texts_of(v) {
                    Ok(t) => t,
                    Err(e) => {
                        items.push(bad(e, Some(image.display().to_string())));
                        continue;
                    }
                },
                None => {
                    items.push(bad(
                        format!("missing text column '{c}'"),
                        Some(image.display().to_string()),
                    ));
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
                        items.push(bad(reason, Some(image.display().to_string())));
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
            image: ImageRef::Path(image),
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
fn table_columns(table: &Table, options: &ImportOptions) -> Result<(Vec<String>, Vec<ColumnDef>)> {
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
fn apply_split(items: Vec<Item>, options: &ImportOptions) -> Vec<Item> {
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

fn table_source(
    path: &Path,
    table: Table,
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
    let items = table_items(base, table, split, options, &present, &columns)?;
    let items = apply_split(items, options);
    Ok(Source {
        columns,
        items: Box::new(items.into_iter().map(Ok)),
    })
}

/// The imagefolder convention: `metadata.jsonl`/`metadata.csv` files (at the root or in split
/// folders) with a `file_name` column relative to them; without them every image is a row and
/// its folder name a `label`.
fn imagefolder(root: &Path, options: &ImportOptions) -> Result<Source> {
    let mut metadata_files = Vec::new();
    for f in files_with(root, &["jsonl", "csv"])? {
        let name = display_name(&f);
        if name == "metadata.jsonl" || name == "metadata.csv" {
            metadata_files.push(f);
        }
    }
    if metadata_files.is_empty() {
        let images = files_with(root, &IMAGE_EXTENSIONS)?;
        if images.is_empty() {
            return Err(Error::source(
                root,
                "the folder holds no images, metadata.jsonl/metadata.csv or parquet files",
            ));
        }
        let labelled = images.iter().any(|p| label_of(root, p).is_some());
        let columns = if labelled {
            vec![ColumnDef::new("label", ColumnType::String, true)]
        } else {
            Vec::new()
        };
        let items: Vec<Item> = images
            .into_iter()
            .map(|p| {
                let metadata = if labelled {
                    vec![(
                        "label".to_string(),
                        label_of(root, &p).map_or(Value::Null, Value::String),
                    )]
                } else {
                    Vec::new()
                };
                Item::Row(Record {
                    location: p.strip_prefix(root).unwrap_or(&p).display().to_string(),
                    split: split_of(root, &p),
                    image: ImageRef::Path(p),
                    texts: Vec::new(),
                    metadata,
                    vectors: None,
                })
            })
            .collect();
        return Ok(Source {
            columns,
            items: Box::new(apply_split(items, options).into_iter().map(Ok)),
        });
    }
    let mut tables = Vec::new();
    for f in &metadata_files {
        let table = if extension(f) == "csv" {
            read_csv(f)?
        } else {
            read_jsonl(f)?
        };
        let table = table
            .into_iter()
            .map(|(loc, row)| {
                let rel = f.strip_prefix(root).unwrap_or(f).display().to_string();
                (loc.replacen(&display_name(f), &rel, 1), row)
            })
            .collect::<Table>();
        tables.push((f, table));
    }
    let all: Table = tables.iter().flat_map(|(_, t)| t.iter().cloned()).collect();
    let (present, columns) = table_columns(&all, options)?;
    let mut items = Vec::new();
    for (f, table) in tables {
        let base = f.parent().unwrap_or(root);
        items.extend(table_items(
            base,
            table,
            split_of(root, f),
            options,
            &present,
            &columns,
        )?);
    }
    Ok(Source {
        columns,
        items: Box::new(apply_split(items, options).into_iter().map(Ok)),
    })
}

/// The class folder of an image (`root/[split/]label/x.jpg`).
fn label_of(root: &Path, image: &Path) -> Option<String> {
    let rel = image.strip_prefix(root).ok()?;
    let mut dirs: Vec<String> = rel
        .parent()?
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if dirs
        .first()
        .is_some_and(|d| SPLIT_NAMES.contains(&d.to_ascii_lowercase().as_str()))
    {
        dirs.remove(0);
    }
    dirs.last().cloned()
}

/// The split a parquet shard belongs to: `train-00000-of-00002.parquet`, `data/test/x.parquet`.
fn parquet_split(root: &Path, file: &Path) -> Option<String> {
    if let Some(s) = split_of(root, file) {
        return Some(s);
    }
    let rel = file.strip_prefix(root).ok()?;
    for c in rel.components() {
        let name = c.as_os_str().to_string_lossy().to_ascii_lowercase();
        let stem = name.split(['-', '.', '_']).next().unwrap_or("");
        if SPLIT_NAMES.contains(&stem) {
            return Some(stem.to_string());
        }
    }
    None
}

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

/// One parquet shard's plan: which arrow columns play which role.
#[derive(Debug, Clone)]
struct ParquetPlan {
    image: String,
    text: Option<String>,
    split_column: bool,
    columns: Vec<ColumnDef>,
    embeddings: Option<EmbeddingColumns>,
}

fn parquet_source(root: &Path, files: Vec<PathBuf>, options: &ImportOptions) -> Result<Source> {
    let first = files
        .first()
        .ok_or_else(|| Error::source(root, "no parquet files"))?;
    let schema = ParquetRecordBatchReaderBuilder::try_new(
        File::open(first).map_err(|e| Error::io(first, e))?,
    )
    .map_err(|e| Error::source(first, e.to_string()))?
    .schema()
    .clone();
    let present: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let image = role_column(options.image_column.as_ref(), &IMAGE_COLUMNS, &present)
        .filter(|c| present.contains(c))
        .ok_or_else(|| {
            Error::source(
                first,
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
            first,
            format!(
                "text column '{t}' is not in the file (columns: {})",
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
        let wanted = options.columns.as_ref().is_none_or(|c| c.contains(name));
        match scalar_type(f.data_type()) {
            Some(ty) if wanted => columns.push(ColumnDef::new(name.clone(), ty, true)),
            None if options.columns.as_ref().is_some_and(|c| c.contains(name)) => {
                return Err(Error::source(
                    first,
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
                    first,
                    format!(
                        "embedding column '{c}' is not in the file (columns: {})",
                        present.join(", ")
                    ),
                ));
            }
        }
    }
    let plan = ParquetPlan {
        image,
        text,
        split_column: present.iter().any(|p| p == "split"),
        columns: columns.clone(),
        embeddings: options.embeddings.clone(),
    };
    let shards: Vec<(PathBuf, Option<String>)> = files
        .into_iter()
        .map(|f| {
            let s = parquet_split(root, &f);
            (f, s)
        })
        .collect();
    let has_split = plan.split_column || shards.iter().any(|(_, s)| s.is_some());
    let wanted = options.split.clone();
    let shards: Vec<(PathBuf, Option<String>)> = shards
        .into_iter()
        .filter(|(_, s)| match (&wanted, s) {
            (Some(w), Some(s)) if !plan.split_column => w == s,
            _ => true,
        })
        .collect();
    let items = shards.into_iter().flat_map(move |(file, split)| {
        let plan = plan.clone();
        let wanted = wanted.clone();
        let assign = if has_split { None } else { wanted.clone() };
        ParquetShard::open(file, split.or(assign), plan).filter(move |item| match (item, &wanted) {
            (Ok(Item::Row(r)), Some(w)) => r.split.as_deref() == Some(w.as_str()),
            _ => true,
        })
    });
    Ok(Source {
        columns,
        items: Box::new(items),
    })
}

/// Reads one shard batch by batch.
struct ParquetShard {
    file: PathBuf,
    split: Option<String>,
    plan: ParquetPlan,
    reader: Option<parquet::arrow::arrow_reader::ParquetRecordBatchReader>,
    pending: std::vec::IntoIter<Item>,
    row: usize,
    error: Option<Error>,
}

impl ParquetShard {
    fn open(file: PathBuf, split: Option<String>, plan: ParquetPlan) -> Self {
        let reader = File::open(&file)
            .map_err(|e| Error::io(&file, e))
            .and_then(|f| {
                ParquetRecordBatchReaderBuilder::try_new(f)
                    .and_then(|b| b.with_batch_size(PARQUET_BATCH).build())
                    .map_err(|e| Error::source(&file, e.to_string()))
            });
        let (reader, error) = match reader {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        ParquetShard {
            file,
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
                &self.file,
                format!("column '{name}' is missing in this shard"),
            )
        })
    }

    fn items(&self, batch: &RecordBatch) -> Result<Vec<Item>> {
        let name = display_name(&self.file);
        let base = self.file.parent().unwrap_or(Path::new("."));
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
            let image = match image_at(image, i, base) {
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
                        image: Some(image.name()),
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

impl Iterator for ParquetShard {
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
                    return Some(Err(Error::source(&self.file, e.to_string())));
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
fn image_at(a: &ArrayRef, i: usize, base: &Path) -> std::result::Result<ImageRef, String> {
    if a.is_null(i) {
        return Err("the image is null".into());
    }
    match a.data_type() {
        DataType::Struct(_) => {
            let s = a.as_struct();
            let path = s.column_by_name("path").and_then(|p| string_at(p, i));
            let bytes = s.column_by_name("bytes").and_then(|b| binary_at(b, i));
            match (bytes, path) {
                (Some(bytes), path) => Ok(ImageRef::Bytes {
                    name: path.unwrap_or_else(|| format!("row {i}")),
                    bytes,
                }),
                (None, Some(p)) => Ok(ImageRef::Path(base.join(p))),
                (None, None) => Err("the image struct has neither bytes nor path".into()),
            }
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(ImageRef::Path(
            base.join(string_at(a, i).unwrap_or_default()),
        )),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Ok(ImageRef::Bytes {
            name: format!("row {i}"),
            bytes: binary_at(a, i).unwrap_or_default(),
        }),
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

/// Checks a row's precomputed vectors: present, finite, one text vector per caption.
fn precomputed(
    image: std::result::Result<Vec<f32>, String>,
    texts: std::result::Result<Vec<Vec<f32>>, String>,
    e: &EmbeddingColumns,
    captions: usize,
) -> std::result::Result<Precomputed, String> {
    let image = image.map_err(|m| format!("image embedding column '{}': {m}", e.image))?;
    let texts = texts.map_err(|m| format!("text embedding column '{}': {m}", e.text))?;
    if texts.len() != captions {
        return Err(format!(
            "text embedding column '{}' holds {} vectors for {captions} captions",
            e.text,
            texts.len()
        ));
    }
    if image.is_empty() || texts.iter().any(Vec::is_empty) {
        return Err("an embedding is empty".into());
    }
    if !image
        .iter()
        .chain(texts.iter().flatten())
        .all(|x| x.is_finite())
    {
        return Err("an embedding holds NaN or infinity".into());
    }
    Ok(Precomputed { image, texts })
}

/// A vector from JSON: an array of numbers, or a string holding one (a CSV cell).
fn json_vector(v: &serde_json::Value) -> std::result::Result<Vec<f32>, String> {
    use serde_json::Value as J;
    match v {
        J::Null => Err("the vector is missing".into()),
        J::String(s) => json_vector(
            &serde_json::from_str(s).map_err(|e| format!("not a JSON array of numbers: {e}"))?,
        ),
        J::Array(items) => items
            .iter()
            .map(|x| {
                x.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| format!("the vector holds {x}, expected numbers"))
            })
            .collect(),
        other => Err(format!("{other} is not a vector (a list of numbers)")),
    }
}

/// Caption vectors from JSON: an array of vectors, or one vector for a single caption.
fn json_vectors(v: &serde_json::Value) -> std::result::Result<Vec<Vec<f32>>, String> {
    use serde_json::Value as J;
    match v {
        J::String(s) => json_vectors(
            &serde_json::from_str(s).map_err(|e| format!("not a JSON array of vectors: {e}"))?,
        ),
        J::Array(items) if items.iter().all(J::is_array) => items.iter().map(json_vector).collect(),
        J::Array(_) => Ok(vec![json_vector(v)?]),
        J::Null => Ok(Vec::new()),
        other => Err(format!("{other} is not a list of vectors")),
    }
}

/// A vector cell: a list (or fixed-size list) of floats.
fn vector_at(a: &ArrayRef, i: usize) -> std::result::Result<Vec<f32>, String> {
    if a.is_null(i) {
        return Err("the vector is missing".into());
    }
    let values = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().value(i),
        DataType::LargeList(_) => a.as_list::<i64>().value(i),
        DataType::FixedSizeList(_, _) => a.as_fixed_size_list().value(i),
        other => return Err(format!("type {other} is not a list of floats")),
    };
    let floats = arrow_cast::cast(&values, &DataType::Float32)
        .map_err(|e| format!("type {} is not a list of floats: {e}", a.data_type()))?;
    let floats = floats.as_primitive::<arrow_array::types::Float32Type>();
    if floats.null_count() > 0 {
        return Err("the vector holds nulls".into());
    }
    Ok(floats.values().to_vec())
}

/// Caption vectors: a list of vectors, or one vector for a row with one caption.
fn vectors_at(a: &ArrayRef, i: usize) -> std::result::Result<Vec<Vec<f32>>, String> {
    if a.is_null(i) {
        return Ok(Vec::new());
    }
    let inner = match a.data_type() {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type(),
        other => return Err(format!("type {other} is not a list of vectors")),
    };
    if !matches!(
        inner,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _)
    ) {
        return Ok(vec![vector_at(a, i)?]);
    }
    let list = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().value(i),
        DataType::LargeList(_) => a.as_list::<i64>().value(i),
        _ => a.as_fixed_size_list().value(i),
    };
    (0..list.len()).map(|j| vector_at(&list, j)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_types_are_inferred_over_all_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pairs.csv");
        std::fs::write(
            &p,
            "file_name,text,year,price,flag,note\n\
             a.jpg,first,1890,1,true,x\n\
             b.jpg,\"[\"\"two\"\", \"\"captions\"\"]\",,2.5,false,12\n",
        )
        .unwrap();
        let src = open(p.to_str().unwrap(), &ImportOptions::default()).unwrap();
        let types: Vec<(String, ColumnType)> =
            src.columns.iter().map(|c| (c.name.clone(), c.ty)).collect();
        assert_eq!(
            types,
            vec![
                ("year".into(), ColumnType::I64),
                ("price".into(), ColumnType::F64),
                ("flag".into(), ColumnType::Bool),
                ("note".into(), ColumnType::String),
            ]
        );
        let rows: Vec<Record> = src
            .items
            .map(|i| match i.unwrap() {
                Item::Row(r) => r,
                Item::Bad(b) => panic!("{b}"),
            })
            .collect();
        assert_eq!(rows[1].texts, vec!["two", "captions"]);
        assert_eq!(rows[1].metadata[0].1, Value::Null);
        assert_eq!(rows[0].metadata[1].1, Value::F64(1.0));
        assert_eq!(rows[1].metadata[3].1, Value::String("12".into()));
    }

    #[test]
    fn imagefolder_labels_and_splits() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["train/cat/1.jpg", "train/dog/2.png", "test/cat/3.jpg"] {
            let f = dir.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"x").unwrap();
        }
        let opts = ImportOptions {
            split: Some("train".into()),
            ..Default::default()
        };
        let src = open(dir.path().to_str().unwrap(), &opts).unwrap();
        let rows: Vec<(String, Option<String>)> = src
            .items
            .map(|i| match i.unwrap() {
                Item::Row(r) => (format!("{:?}", r.metadata[0].1), r.split),
                Item::Bad(b) => panic!("{b}"),
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("String(\"cat\")".into(), Some("train".into())),
                ("String(\"dog\")".into(), Some("train".into()))
            ]
        );
    }

    #[test]
    fn bad_rows_are_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(
            &p,
            "{\"file_name\": \"a.jpg\", \"text\": \"ok\"}\n{\"text\": \"no image\"}\n{\"file_name\": \"c.jpg\", \"text\": 3}\n",
        )
        .unwrap();
        let src = open(p.to_str().unwrap(), &ImportOptions::default()).unwrap();
        let bad: Vec<String> = src
            .items
            .filter_map(|i| match i.unwrap() {
                Item::Bad(b) => Some(b.to_string()),
                Item::Row(_) => None,
            })
            .collect();
        assert_eq!(bad.len(), 2);
        assert_eq!(
            bad[0],
            "m.jsonl line 2: missing value in image column 'file_name'"
        );
        assert!(
            bad[1].contains("expected a string or a list of strings"),
            "{}",
            bad[1]
        );
    }
}
