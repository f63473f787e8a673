//! Getting rows in: `IMPORT` (a source read lazily: `source`, with the text formats in
//! `table`, the imagefolder convention in `imagefolder`, parquet datasets in `parquet`,
//! precomputed vectors in `vectors`) and `INSERT ... VALUES`, both through the load path in
//! `load` (read, embed and validate, stage), committed as one transaction.

mod arrow;
mod imagefolder;
mod load;
mod parquet;
mod source;
mod table;
mod vectors;

pub use source::{IMAGE_EXTENSIONS, ImageRef, Item, Precomputed, Record, Source};

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, Schema};
use mirante_query::options::ImportOptions;
use mirante_query::{ColumnRef, Literal, Predicate};
use mirante_storage::Value;

use self::imagefolder::imagefolder;
use self::parquet::parquet_source;
use self::source::{extension, files_with, hub_dataset};
use self::table::{read_csv, read_jsonl, table_source};
use crate::access::Access;
use crate::catalog::row_filter;
use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result, RowFailure};
use crate::output::{Cell, CellType, Column, Output, ResultSet, plural};

/// Opens `source` (see the module docs for what it may be); its files must be within
/// `access`'s folders.
pub fn open(source: &str, options: &ImportOptions, access: &Access) -> Result<Source> {
    let path = match source.strip_prefix("hf://datasets/") {
        Some(id) => hub_dataset(id)?,
        None => PathBuf::from(source),
    };
    if path.exists() {
        access.check_read(&path)?;
    }
    let meta = std::path::Path::metadata(&path).map_err(|e| {
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
            for file in &parquet {
                access.check_read(file)?;
            }
            parquet_source(&path, parquet, options)?
        } else {
            imagefolder(&path, options, access)?
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
    Ok(limited(source, options.limit))
}

/// The first `limit` items of `source`, when a limit is given.
fn limited(source: Source, limit: Option<usize>) -> Source {
    match limit {
        Some(n) => Source {
            columns: source.columns,
            items: Box::new(source.items.take(n)),
        },
        None => source,
    }
}

/// Rows from Arrow record batches handed to the library (a table, a data frame, a Hugging
/// Face dataset's table), read as parquet datasets are: the image column a struct `{bytes,
/// path}`, a path or binary, captions a string or a list of strings, scalar metadata columns;
/// relative image paths are resolved from the working directory.
pub fn from_arrow<R>(schema: &Schema, batches: R, options: &ImportOptions) -> Result<Source>
where
    R: Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + Send + 'static,
{
    let origin = PathBuf::from("arrow input");
    let plan = arrow::plan(schema, &origin, options)?;
    let columns = plan.columns.clone();
    // A split column is filtered by the `split` option; without one, the option is the split.
    let (assign, wanted) = if plan.split_column {
        (None, options.split.clone())
    } else {
        (options.split.clone(), None)
    };
    let rows = arrow::Batches::new((origin, PathBuf::from(".")), assign, plan, Ok(batches));
    let items = rows.filter(move |item| match (item, &wanted) {
        (Ok(Item::Row(r)), Some(w)) => r.split.as_deref() == Some(w.as_str()),
        _ => true,
    });
    Ok(limited(
        Source {
            columns,
            items: Box::new(items),
        },
        options.limit,
    ))
}

/// What adding rows did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddReport {
    /// The new rows' ids, in the order of the source.
    pub ids: Vec<u64>,
    /// The rows left out (with `skip_errors`), with why.
    pub skipped: Vec<RowFailure>,
    /// Whether the rows got vectors (the collection's model, or precomputed ones).
    pub embedded: bool,
    /// How many rows the add replaced (deleted in its commit).
    pub replaced: usize,
    /// Why the merge of small segments after the commit failed, if it did (the rows are
    /// committed; searches stay correct, only slower, until a COMPACT succeeds).
    pub merge_error: Option<String>,
}

/// Loads an opened source into `collection` in one commit (nothing when a row fails, unless
/// `skip_errors`); `message` gives the commit's message for a row count.
pub(crate) fn add(
    db: &Database,
    collection: &str,
    src: Source,
    (options, skip_errors): (&ImportOptions, bool),
    (replace, message): (Option<&Predicate>, impl Fn(usize) -> String),
    exec: &ExecOptions,
) -> Result<AddReport> {
    let mut w = db.writer()?;
    let mut tx = w.transaction();
    let replaced = match replace {
        Some(p) => tx.delete_where(collection, &row_filter(p))?,
        None => 0,
    };
    tx.add_columns(collection, src.columns.clone())?;
    let report = load::load(
        db,
        &mut tx,
        collection,
        src.items,
        (skip_errors, options.embeddings.as_ref()),
        exec,
    )?;
    if !report.ids.is_empty() || replaced > 0 {
        let mut message = message(report.ids.len());
        if replaced > 0 {
            message.push_str(&format!(", replacing {replaced}"));
        }
        tx.commit(message)?;
    }
    Ok(AddReport {
        ids: report.ids,
        skipped: report.skipped,
        embedded: report.embedded,
        replaced,
        merge_error: w.take_merge_error().map(|e| {
            format!(
                "the rows are committed, but merging segments after them failed ({e}); \
                 COMPACT {collection} retries"
            )
        }),
    })
}

/// What building segments did (see [`build`]).
#[derive(Debug)]
pub struct BuildReport {
    /// The segments, to publish with [`Database::publish`].
    pub built: mirante_storage::BuiltSegments,
    /// The ids the rows will have once published, in the order of the source.
    pub ids: Vec<u64>,
    /// The rows left out (with `skip_errors`), with why.
    pub skipped: Vec<RowFailure>,
    /// Whether the rows got vectors (the collection's model, or precomputed ones).
    pub embedded: bool,
}

/// Loads an opened source into segments of `collection` without the writer lock (the first
/// phase of a two-phase write: many processes build, one commit publishes). Row ids are
/// reserved in short commits, the first sized by `expected_rows`.
pub(crate) fn build(
    db: &Database,
    collection: &str,
    src: Source,
    (options, skip_errors, expected_rows): (&ImportOptions, bool, u64),
    exec: &ExecOptions,
) -> Result<BuildReport> {
    if db.options.read_only {
        return Err(Error::ReadOnly);
    }
    let mut builder = mirante_storage::SegmentBuilder::new(&db.store, collection, expected_rows)?;
    mirante_storage::Stage::add_columns(&mut builder, collection, src.columns.clone())?;
    let report = load::load(
        db,
        &mut builder,
        collection,
        src.items,
        (skip_errors, options.embeddings.as_ref()),
        exec,
    )?;
    Ok(BuildReport {
        built: builder.finish()?,
        ids: report.ids,
        skipped: report.skipped,
        embedded: report.embedded,
    })
}

/// `IMPORT INTO collection FROM source`.
pub(crate) fn import(
    db: &Database,
    collection: &str,
    source: &str,
    options: &ImportOptions,
    skip_errors: bool,
    exec: &ExecOptions,
) -> Result<Output> {
    let src = open(source, options, &db.options.access)?;
    let report = add(
        db,
        collection,
        src,
        (options, skip_errors),
        (None, |n| {
            format!("import {n} rows into {collection} from {source}")
        }),
        exec,
    )?;
    let rows = report.ids.len();
    let mut status = format!("imported {rows} row{} into {collection}", plural(rows));
    if !report.embedded {
        status.push_str(&format!(
            " without embeddings (the collection has no model; add one with EMBED {collection} USING MODEL '...')"
        ));
    }
    if let Some(e) = &report.merge_error {
        status.push_str(&format!("; warning: {e}"));
    }
    if report.skipped.is_empty() {
        return Ok(Output::Status(status));
    }
    status.push_str(&format!(", skipped {}", report.skipped.len()));
    Ok(Output::Table(ResultSet {
        columns: vec![
            Column::new("skipped", CellType::Str, false),
            Column::new("image", CellType::Str, true),
            Column::new("reason", CellType::Str, false),
        ],
        rows: report
            .skipped
            .into_iter()
            .map(|f| {
                vec![
                    Cell::Str(f.location),
                    f.image.map_or(Cell::Null, Cell::Str),
                    Cell::Str(f.reason),
                ]
            })
            .collect(),
        status: Some(status),
    }))
}

fn literal_value(l: Literal) -> Value {
    match l {
        Literal::Null => Value::Null,
        Literal::Bool(b) => Value::Bool(b),
        Literal::Int(i) => Value::I64(i),
        Literal::Float(f) => Value::F64(f),
        Literal::String(s) => Value::String(s),
        // The binder lets lists reach caption columns only; spelled as SQL should one get here.
        list @ Literal::List(_) => Value::String(list.to_string()),
    }
}

/// `INSERT INTO collection (columns) VALUES ...`.
pub(crate) fn insert(
    db: &Database,
    collection: &str,
    columns: &[(String, ColumnRef)],
    rows: Vec<Vec<Literal>>,
    exec: &ExecOptions,
) -> Result<Output> {
    let mut records = Vec::with_capacity(rows.len());
    for (i, values) in rows.into_iter().enumerate() {
        let mut image = None;
        let mut texts = Vec::new();
        let mut split = None;
        let mut metadata = Vec::new();
        for ((name, column), lit) in columns.iter().zip(values) {
            match (column, lit) {
                (ColumnRef::Image, Literal::String(p)) => image = Some(p),
                (ColumnRef::Text, Literal::String(s)) => texts = vec![s],
                (ColumnRef::Text, Literal::List(items)) => {
                    texts = items
                        .into_iter()
                        .filter_map(|l| match l {
                            Literal::String(s) => Some(s),
                            _ => None,
                        })
                        .collect()
                }
                (ColumnRef::Split, Literal::String(s)) => split = Some(s),
                (ColumnRef::Meta(_), l) => metadata.push((name.clone(), literal_value(l))),
                _ => {}
            }
        }
        let location = format!("VALUES row {}", i + 1);
        let Some(image) = image else {
            return Err(Error::RowsFailed {
                total: records.len() + 1,
                failures: vec![RowFailure {
                    location,
                    image: None,
                    reason: "a row needs an image (a path in the image column)".into(),
                }],
            });
        };
        records.push(Item::Row(Record {
            location,
            image: Some(ImageRef::Path(image.into())),
            texts,
            split,
            metadata,
            vectors: None,
        }));
    }
    let src = Source {
        columns: Vec::new(),
        items: Box::new(records.into_iter().map(Ok)),
    };
    let report = add(
        db,
        collection,
        src,
        (&ImportOptions::default(), false),
        (None, |n| format!("insert {n} rows into {collection}")),
        exec,
    )?;
    let rows = report.ids.len();
    Ok(Output::Status(format!(
        "inserted {rows} row{} into {collection}{}",
        plural(rows),
        report
            .merge_error
            .map(|e| format!("; warning: {e}"))
            .unwrap_or_default()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsio;
    use mirante_storage::ColumnType;

    #[test]
    fn csv_types_are_inferred_over_all_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pairs.csv");
        fsio::write(
            &p,
            "file_name,text,year,price,flag,note\n\
             a.jpg,first,1890,1,true,x\n\
             b.jpg,\"[\"\"two\"\", \"\"captions\"\"]\",,2.5,false,12\n",
        )
        .unwrap();
        let src = open(
            p.to_str().unwrap(),
            &ImportOptions::default(),
            &Access::default(),
        )
        .unwrap();
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
            fsio::create_dir_all(f.parent().unwrap()).unwrap();
            fsio::write(&f, b"x").unwrap();
        }
        let opts = ImportOptions {
            split: Some("train".into()),
            ..Default::default()
        };
        let src = open(dir.path().to_str().unwrap(), &opts, &Access::default()).unwrap();
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
        fsio::write(
            &p,
            "{\"file_name\": \"a.jpg\", \"text\": \"ok\"}\n{\"text\": \"no image\"}\n{\"file_name\": \"c.jpg\", \"text\": 3}\n",
        )
        .unwrap();
        let src = open(
            p.to_str().unwrap(),
            &ImportOptions::default(),
            &Access::default(),
        )
        .unwrap();
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
