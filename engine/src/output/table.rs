//! [`ResultSet`]: named, typed columns and rows of [`Cell`]s, plus a status line.

use serde_json::json;

/// The type of a result column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellType {
    Int,
    Float,
    Str,
    Bool,
    /// Several strings (a row's captions).
    StrList,
    /// Raw bytes (a stored image).
    Bytes,
}

/// A result column: its name, type and whether it may hold nulls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: CellType,
    pub nullable: bool,
}

impl Column {
    pub fn new(name: impl Into<String>, ty: CellType, nullable: bool) -> Self {
        Column {
            name: name.into(),
            ty,
            nullable,
        }
    }

    /// The type a metadata column of the storage schema gives.
    pub fn of_metadata(def: &mirante_storage::ColumnDef) -> Self {
        use mirante_storage::ColumnType;
        let ty = match def.ty {
            ColumnType::String => CellType::Str,
            ColumnType::I64 => CellType::Int,
            ColumnType::F64 => CellType::Float,
            ColumnType::Bool => CellType::Bool,
        };
        Column::new(def.name.clone(), ty, def.nullable)
    }
}

impl PartialEq<str> for Column {
    fn eq(&self, other: &str) -> bool {
        self.name == other
    }
}

impl PartialEq<&str> for Column {
    fn eq(&self, other: &&str) -> bool {
        self.name == *other
    }
}

/// One value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    /// Several strings (a row's captions).
    List(Vec<String>),
    Bytes(Vec<u8>),
}

impl Cell {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Cell::Null => serde_json::Value::Null,
            Cell::Int(v) => json!(v),
            Cell::Float(v) => json!(v),
            Cell::Str(s) => json!(s),
            Cell::Bool(b) => json!(b),
            Cell::List(v) => json!(v),
            Cell::Bytes(b) => json!(base64_of(b)),
        }
    }

    /// Text for tables and CSV: floats with 4 decimals, lists as JSON arrays.
    pub fn display(&self) -> String {
        match self {
            Cell::Null => "NULL".into(),
            Cell::Int(v) => v.to_string(),
            Cell::Float(v) => format!("{v:.4}"),
            Cell::Str(s) => s.clone(),
            Cell::Bool(b) => b.to_string(),
            Cell::List(v) => serde_json::Value::from(v.clone()).to_string(),
            Cell::Bytes(b) => format!("<{} bytes>", b.len()),
        }
    }

    /// Whether the cell fits a column of type `ty` (nulls fit every type).
    pub fn fits(&self, ty: CellType) -> bool {
        matches!(
            (self, ty),
            (Cell::Null, _)
                | (Cell::Int(_), CellType::Int)
                | (Cell::Float(_), CellType::Float)
                | (Cell::Str(_), CellType::Str)
                | (Cell::Bool(_), CellType::Bool)
                | (Cell::List(_), CellType::StrList)
                | (Cell::Bytes(_), CellType::Bytes)
        )
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl From<mirante_storage::Value> for Cell {
    fn from(v: mirante_storage::Value) -> Self {
        use mirante_storage::Value;
        match v {
            Value::Null => Cell::Null,
            Value::String(s) => Cell::Str(s),
            Value::I64(v) => Cell::Int(v),
            Value::F64(v) => Cell::Float(v),
            Value::Bool(v) => Cell::Bool(v),
        }
    }
}

/// The result of one statement as a table: typed columns and rows, plus a status line for
/// statements that change things ("imported 7 rows into images").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultSet {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
    pub status: Option<String>,
}

impl ResultSet {
    pub fn status(message: impl Into<String>) -> Self {
        ResultSet {
            status: Some(message.into()),
            ..Default::default()
        }
    }

    pub fn new(columns: Vec<Column>) -> Self {
        ResultSet {
            columns,
            ..Default::default()
        }
    }

    /// The column names, in order.
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// The value of `column` in row `row`.
    pub fn get(&self, row: usize, column: &str) -> Option<&Cell> {
        let c = self.columns.iter().position(|n| n.name == column)?;
        self.rows.get(row)?.get(c)
    }

    /// The same rows with only `names` (those that exist), in that order.
    pub fn project(&self, names: &[&str]) -> ResultSet {
        let keep: Vec<usize> = names
            .iter()
            .filter_map(|n| self.columns.iter().position(|c| c.name == *n))
            .collect();
        ResultSet {
            columns: keep.iter().map(|&i| self.columns[i].clone()).collect(),
            rows: self
                .rows
                .iter()
                .map(|r| keep.iter().map(|&i| r[i].clone()).collect())
                .collect(),
            status: self.status.clone(),
        }
    }

    /// One JSON object per row, keys in column order.
    pub fn json_rows(&self) -> Vec<serde_json::Value> {
        self.rows
            .iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                for (c, cell) in self.columns.iter().zip(r) {
                    m.insert(c.name.clone(), cell.to_json());
                }
                serde_json::Value::Object(m)
            })
            .collect()
    }
}
