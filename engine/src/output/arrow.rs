//! A [`ResultSet`] as an Arrow [`RecordBatch`], typed by its columns (never by the first value).

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};

use super::table::{Cell, CellType, Column, ResultSet};
use crate::error::{Error, Result};

/// The Arrow type of a result column.
fn data_type(ty: CellType) -> DataType {
    match ty {
        CellType::Int => DataType::Int64,
        CellType::Float => DataType::Float64,
        CellType::Str => DataType::Utf8,
        CellType::Bool => DataType::Boolean,
        CellType::StrList => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        CellType::Bytes => DataType::Binary,
    }
}

/// One column's values as an Arrow array.
fn array(column: &Column, cells: &[&Cell]) -> ArrayRef {
    match column.ty {
        CellType::Int => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Int(v) => Some(*v),
                    _ => None,
                })
                .collect::<Int64Array>(),
        ),
        CellType::Float => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Float(v) => Some(*v),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        CellType::Str => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Str(v) => Some(v.as_str()),
                    _ => None,
                })
                .collect::<StringArray>(),
        ),
        CellType::Bool => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Bool(v) => Some(*v),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        CellType::Bytes => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Bytes(v) => Some(v.as_slice()),
                    _ => None,
                })
                .collect::<BinaryArray>(),
        ),
        CellType::StrList => {
            let mut b = ListBuilder::new(StringBuilder::new());
            for c in cells {
                match c {
                    Cell::List(items) => {
                        for item in items {
                            b.values().append_value(item);
                        }
                        b.append(true);
                    }
                    _ => b.append(false),
                }
            }
            Arc::new(b.finish())
        }
    }
}

/// The result as a record batch; a status alone becomes a one-row `status` column.
pub fn to_record_batch(r: &ResultSet) -> Result<RecordBatch> {
    if r.columns.is_empty() {
        let status = r.status.clone().unwrap_or_default();
        let column = Column::new("status", CellType::Str, false);
        let rows = ResultSet {
            columns: vec![column],
            rows: vec![vec![Cell::Str(status)]],
            status: None,
        };
        return to_record_batch(&rows);
    }
    let mut arrays = Vec::with_capacity(r.columns.len());
    for (i, column) in r.columns.iter().enumerate() {
        let cells: Vec<&Cell> = r.rows.iter().filter_map(|row| row.get(i)).collect();
        if cells.len() != r.rows.len() {
            return Err(Error::Internal(format!(
                "a result row lacks column {}",
                column.name
            )));
        }
        if let Some(bad) = cells
            .iter()
            .find(|c| !c.fits(column.ty) || (!column.nullable && matches!(c, Cell::Null)))
        {
            return Err(Error::Internal(format!(
                "column {} ({:?}, nullable {}) holds {bad:?}",
                column.name, column.ty, column.nullable
            )));
        }
        arrays.push(array(column, &cells));
    }
    let fields: Vec<Field> = r
        .columns
        .iter()
        .map(|c| Field::new(&c.name, data_type(c.ty), c.nullable))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| Error::Internal(format!("result does not convert to Arrow: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::{Array, types::Int64Type};

    #[test]
    fn types_come_from_the_columns_even_without_rows() {
        let empty = ResultSet::new(vec![
            Column::new("id", CellType::Int, false),
            Column::new("text", CellType::StrList, true),
        ]);
        let b = to_record_batch(&empty).unwrap();
        assert_eq!(b.num_rows(), 0);
        assert_eq!(b.schema().field(0).data_type(), &DataType::Int64);
        assert!(!b.schema().field(0).is_nullable());
        assert!(matches!(b.schema().field(1).data_type(), DataType::List(_)));
    }

    #[test]
    fn values_and_nulls_convert() {
        let r = ResultSet {
            columns: vec![
                Column::new("id", CellType::Int, false),
                Column::new("text", CellType::StrList, true),
                Column::new("year", CellType::Int, true),
            ],
            rows: vec![
                vec![
                    Cell::Int(1),
                    Cell::List(vec!["a".into(), "b".into()]),
                    Cell::Null,
                ],
                vec![Cell::Int(2), Cell::Null, Cell::Int(1900)],
            ],
            status: None,
        };
        let b = to_record_batch(&r).unwrap();
        assert_eq!(b.column(0).as_primitive::<Int64Type>().values(), &[1, 2]);
        let texts = b.column(1).as_list::<i32>();
        assert_eq!(texts.value(0).as_string::<i32>().value(1), "b");
        assert!(texts.is_null(1));
        assert!(b.column(2).is_null(0));
        let status = to_record_batch(&ResultSet::status("done")).unwrap();
        assert_eq!(status.column(0).as_string::<i32>().value(0), "done");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_internal_error() {
        let r = ResultSet {
            columns: vec![Column::new("id", CellType::Int, false)],
            rows: vec![vec![Cell::Str("x".into())]],
            status: None,
        };
        assert!(matches!(to_record_batch(&r), Err(Error::Internal(_))));
    }
}
