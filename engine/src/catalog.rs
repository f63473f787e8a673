//! The query language's view of stored data: the binder's catalog of a snapshot, stored rows as
//! the predicate evaluator reads them, and predicates as SQL text and as storage row filters.

use mirante_query::{self as query, Catalog, ColumnInfo, ColumnKind, ColumnRef, Datum};
use mirante_storage::{self as storage, ColumnType, RowRef, Snapshot};

/// The binder's view of a snapshot: its collections and their columns.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotCatalog<'s>(pub &'s Snapshot);

/// Columns of a collection as the language sees them: the built-ins, then metadata.
pub fn columns_of(schema: &storage::Schema) -> Vec<ColumnInfo> {
    let builtin = |name: &str, column, kind| ColumnInfo {
        name: name.into(),
        column,
        kind,
        nullable: column != ColumnRef::Id,
    };
    let mut v = vec![
        builtin("id", ColumnRef::Id, ColumnKind::Int),
        builtin("image", ColumnRef::Image, ColumnKind::String),
        builtin("text", ColumnRef::Text, ColumnKind::StringList),
        builtin("split", ColumnRef::Split, ColumnKind::String),
    ];
    v.extend(schema.metadata.iter().enumerate().map(|(i, c)| ColumnInfo {
        name: c.name.clone(),
        column: ColumnRef::Meta(i),
        kind: match c.ty {
            ColumnType::String => ColumnKind::String,
            ColumnType::I64 => ColumnKind::Int,
            ColumnType::F64 => ColumnKind::Float,
            ColumnType::Bool => ColumnKind::Bool,
        },
        nullable: c.nullable,
    }));
    v
}

impl Catalog for SnapshotCatalog<'_> {
    fn collection_names(&self) -> Vec<String> {
        self.0
            .collections()
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    fn columns(&self, collection: &str) -> Option<Vec<ColumnInfo>> {
        let c = self.0.collection(collection).ok()?;
        Some(columns_of(&c.schema))
    }
}

/// A stored row as the predicate evaluator reads it.
pub(crate) struct RowValues<'a>(pub RowRef<'a>);

impl query::RowValues for RowValues<'_> {
    fn datum(&self, column: ColumnRef) -> Datum<'_> {
        let r = &self.0;
        match column {
            ColumnRef::Id => Datum::Int(r.id() as i64),
            ColumnRef::Image => r.image_source().map_or(Datum::Null, Datum::Str),
            ColumnRef::Split => r.split().map_or(Datum::Null, Datum::Str),
            ColumnRef::Text => Datum::Null,
            ColumnRef::Meta(i) => match r.value_at(i) {
                storage::ValueRef::Null => Datum::Null,
                storage::ValueRef::String(s) => Datum::Str(s),
                storage::ValueRef::I64(v) => Datum::Int(v),
                storage::ValueRef::F64(v) => Datum::Float(v),
                storage::ValueRef::Bool(v) => Datum::Bool(v),
            },
        }
    }

    fn texts(&self) -> Vec<&str> {
        self.0.texts().collect()
    }
}

/// A bound predicate as SQL, spelled with the collection's column names.
pub(crate) fn predicate_sql(schema: &storage::Schema, p: &query::Predicate) -> String {
    let names = columns_of(schema);
    p.to_sql(&|col| {
        names
            .iter()
            .find(|n| n.column == col)
            .map_or_else(|| format!("{col:?}"), |n| n.name.clone())
    })
}

/// The storage filter of a bound predicate.
pub(crate) fn row_filter(p: &query::Predicate) -> impl Fn(&RowRef<'_>) -> bool + Sync + '_ {
    move |row: &RowRef<'_>| p.matches(&RowValues(*row))
}
