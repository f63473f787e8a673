//! Getting rows in: `IMPORT` (a source read lazily: `source`, with the text formats in
//! `table`, the imagefolder convention in `imagefolder`, parquet datasets in `parquet`,
//! precomputed vectors in `vectors`) and `INSERT ... VALUES`, both through the load path in
//! `load` (read, embed and validate, stage), committed as one transaction.

mod imagefolder;
mod load;
mod parquet;
mod source;
mod table;
mod vectors;

pub use source::{IMAGE_EXTENSIONS, ImageRef, Item, Precomputed, Record, Source, open};

use mirante_query::options::ImportOptions;
use mirante_query::{ColumnRef, Literal};
use mirante_storage::Value;

use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result, RowFailure};
use crate::exec::plural;
use crate::output::{Cell, CellType, Column, Output, ResultSet};

/// `IMPORT INTO collection FROM source`.
pub(crate) fn import(
    db: &Database,
    collection: &str,
    source: &str,
    options: &ImportOptions,
    skip_errors: bool,
    exec: &ExecOptions,
) -> Result<Output> {
    let src = open(source, options)?;
    let mut w = db.writer()?;
    let mut tx = w.transaction();
    tx.add_columns(collection, src.columns.clone())?;
    let report = load::load(
        db,
        &mut tx,
        collection,
        src.items,
        (skip_errors, options.embeddings.as_ref()),
        exec,
    )?;
    if report.rows > 0 {
        tx.commit(format!(
            "import {} rows into {collection} from {source}",
            report.rows
        ))?;
    }
    let mut status = format!(
        "imported {} row{} into {collection}",
        report.rows,
        plural(report.rows)
    );
    if !report.embedded {
        status.push_str(&format!(
            " without embeddings (the collection has no model; add one with EMBED {collection} USING MODEL '...')"
        ));
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
        Literal::List(items) => Value::String(format!("{items:?}")),
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
            image: ImageRef::Path(image.into()),
            texts,
            split,
            metadata,
            vectors: None,
        }));
    }
    let mut w = db.writer()?;
    let mut tx = w.transaction();
    let report = load::load(
        db,
        &mut tx,
        collection,
        records.into_iter().map(Ok),
        (false, None),
        exec,
    )?;
    tx.commit(format!("insert {} rows into {collection}", report.rows))?;
    Ok(Output::Status(format!(
        "inserted {} row{} into {collection}",
        report.rows,
        plural(report.rows)
    )))
}
