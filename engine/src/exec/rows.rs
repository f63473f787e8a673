//! Rows: `SELECT` (typed by the catalog) and `DELETE`.

use mirante_query::{ColumnKind, ColumnRef, Predicate, SelectList};
use mirante_storage::{self as storage, RowRef};

use crate::catalog::{columns_of, row_filter};
use crate::database::Database;
use crate::error::{Error, Result};
use crate::output::{Cell, CellType, Column, Output, ResultSet, plural};

/// The result type of a column of the language.
fn cell_type(kind: ColumnKind) -> CellType {
    match kind {
        ColumnKind::Int => CellType::Int,
        ColumnKind::Float => CellType::Float,
        ColumnKind::String => CellType::Str,
        ColumnKind::Bool => CellType::Bool,
        ColumnKind::StringList => CellType::StrList,
    }
}

pub(super) fn select(
    db: &Database,
    collection: &str,
    list: &SelectList,
    filter: Option<&Predicate>,
    (limit, offset): (Option<u64>, u64),
) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    let f = filter.map(row_filter);
    let filter_ref = f.as_ref().map(|f| f as &storage::RowFilter<'_>);
    let names = match list {
        SelectList::CountStar => {
            let n = match filter_ref {
                None => snap.count(collection)?,
                Some(f) => {
                    let mut n = 0u64;
                    snap.scan(collection, Some(f), |_| {
                        n += 1;
                        Ok(())
                    })?;
                    n
                }
            };
            return Ok(ResultSet {
                columns: vec![Column::new("count", CellType::Int, false)],
                rows: vec![vec![Cell::Int(n as i64)]],
                status: None,
            });
        }
        SelectList::Columns(c) => c,
    };
    // Types and nullability from the catalog, as the binder saw the collection.
    let catalog = columns_of(&snap.collection(collection)?.schema);
    let columns = names
        .iter()
        .map(|(name, column)| {
            let info = catalog
                .iter()
                .find(|i| i.column == *column)
                .ok_or_else(|| {
                    Error::Internal(format!("bound column {name} is not in {collection}"))
                })?;
            Ok(Column::new(
                name.clone(),
                cell_type(info.kind),
                info.nullable,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = ResultSet::new(columns);
    let mut seen = 0u64;
    let limit = limit.unwrap_or(u64::MAX);
    snap.scan(collection, filter_ref, |row| {
        if seen >= offset && (seen - offset) < limit {
            out.rows
                .push(names.iter().map(|(_, c)| cell_of(&row, *c)).collect());
        }
        seen += 1;
        Ok(())
    })?;
    Ok(out)
}

/// The value of a column of a stored row.
pub(crate) fn cell_of(row: &RowRef<'_>, column: ColumnRef) -> Cell {
    match column {
        ColumnRef::Id => Cell::Int(row.id() as i64),
        ColumnRef::Image => row
            .image_source()
            .map_or(Cell::Null, |s| Cell::Str(s.into())),
        ColumnRef::Text => Cell::List(row.texts().map(str::to_string).collect()),
        ColumnRef::Split => row.split().map_or(Cell::Null, |s| Cell::Str(s.into())),
        ColumnRef::Meta(i) => row.value_at(i).to_value().into(),
    }
}

pub(super) fn delete(
    db: &Database,
    collection: &str,
    filter: Option<&Predicate>,
) -> Result<Output> {
    let all = |_: &RowRef<'_>| true;
    let n = match filter {
        Some(p) => db.writer()?.delete_where(collection, &row_filter(p))?,
        None => db.writer()?.delete_where(collection, &all)?,
    };
    Ok(Output::Status(format!(
        "deleted {n} row{} from {collection}",
        plural(n)
    )))
}
