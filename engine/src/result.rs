//! Typed results of statements and their renderings (aligned table, JSON lines, CSV).

use serde_json::json;

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
        }
    }
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

/// The result of one statement: named columns and rows, plus a status line for statements
/// that change things ("imported 7 rows into images").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultSet {
    pub columns: Vec<String>,
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

    pub fn new(columns: Vec<String>) -> Self {
        ResultSet {
            columns,
            ..Default::default()
        }
    }

    /// The value of `column` in row `row`.
    pub fn get(&self, row: usize, column: &str) -> Option<&Cell> {
        let c = self.columns.iter().position(|n| n == column)?;
        self.rows.get(row)?.get(c)
    }

    /// One JSON object per row, keys in column order.
    pub fn json_rows(&self) -> Vec<serde_json::Value> {
        self.rows
            .iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                for (name, cell) in self.columns.iter().zip(r) {
                    m.insert(name.clone(), cell.to_json());
                }
                serde_json::Value::Object(m)
            })
            .collect()
    }

    /// JSON lines: one object per row, or `{"status": ...}` for a statement without rows.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        if self.columns.is_empty() {
            if let Some(s) = &self.status {
                out.push_str(&json!({ "status": s }).to_string());
                out.push('\n');
            }
            return out;
        }
        for row in self.json_rows() {
            out.push_str(&row.to_string());
            out.push('\n');
        }
        out
    }

    /// CSV with a header row (RFC 4180 quoting).
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut write = || -> csv::Result<()> {
            if self.columns.is_empty() {
                if let Some(s) = &self.status {
                    w.write_record(["status"])?;
                    w.write_record([s])?;
                }
                return Ok(());
            }
            w.write_record(&self.columns)?;
            for r in &self.rows {
                w.write_record(r.iter().map(Cell::display))?;
            }
            Ok(())
        };
        // Writing to memory cannot fail; a failure would only truncate the text.
        let _ = write();
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }

    /// An aligned text table followed by the status line.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        if !self.columns.is_empty() {
            let cells: Vec<Vec<String>> = self
                .rows
                .iter()
                .map(|r| r.iter().map(|c| one_line(&c.display())).collect())
                .collect();
            let widths: Vec<usize> = (0..self.columns.len())
                .map(|i| {
                    cells
                        .iter()
                        .map(|r| r[i].chars().count())
                        .chain([self.columns[i].chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |vals: &[String]| -> String {
                let parts: Vec<String> = vals
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect();
                format!("{}\n", parts.join(" | ").trim_end())
            };
            out.push_str(&line(&self.columns));
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("{}\n", rule.join("-+-")));
            for r in &cells {
                out.push_str(&line(r));
            }
            out.push_str(&format!(
                "({} row{})\n",
                self.rows.len(),
                if self.rows.len() == 1 { "" } else { "s" }
            ));
        }
        if let Some(s) = &self.status {
            out.push_str(s);
            out.push('\n');
        }
        out
    }
}

/// Table cells stay on one line.
fn one_line(s: &str) -> String {
    s.replace('\n', "\\n").replace('\r', "\\r")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ResultSet {
        ResultSet {
            columns: vec!["id".into(), "text".into(), "score".into()],
            rows: vec![
                vec![
                    Cell::Int(1),
                    Cell::List(vec!["a, \"b\"".into()]),
                    Cell::Float(0.5),
                ],
                vec![Cell::Int(22), Cell::List(vec![]), Cell::Null],
            ],
            status: None,
        }
    }

    #[test]
    fn table_is_aligned() {
        assert_eq!(
            sample().to_table(),
            "id | text         | score\n\
             ---+--------------+-------\n\
             1  | [\"a, \\\"b\\\"\"] | 0.5000\n\
             22 | []           | NULL\n\
             (2 rows)\n"
        );
    }

    #[test]
    fn json_and_csv() {
        let s = sample();
        assert_eq!(
            s.to_jsonl().lines().next(),
            Some(r#"{"id":1,"text":["a, \"b\""],"score":0.5}"#)
        );
        assert_eq!(
            s.to_csv(),
            "id,text,score\n1,\"[\"\"a, \\\"\"b\\\"\"\"\"]\",0.5000\n22,[],NULL\n"
        );
        assert_eq!(
            ResultSet::status("done").to_jsonl(),
            "{\"status\":\"done\"}\n"
        );
    }
}
