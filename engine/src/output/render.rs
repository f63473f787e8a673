//! Renderings of a [`ResultSet`]: the whole table (golden files, pipes), a table fitted to a
//! terminal as DuckDB's shell does (long cells cut with an ellipsis, columns that do not fit
//! folded away with a note), one `column = value` line per value, JSON lines and CSV.

use serde_json::json;

use super::table::{Cell, ResultSet};

/// How a table is fitted to a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableStyle {
    /// The widest a line may be; `None`: no limit.
    pub width: Option<usize>,
    /// The widest a cell may be before it is cut with an ellipsis.
    pub max_cell: usize,
}

impl Default for TableStyle {
    fn default() -> Self {
        TableStyle {
            width: None,
            max_cell: 48,
        }
    }
}

/// Table cells stay on one line.
fn one_line(s: &str) -> String {
    s.replace('\n', "\\n").replace('\r', "\\r")
}

/// `s` cut to `max` characters with an ellipsis: at the end, or at the start for a path (whose
/// file name tells most).
fn cut(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    if s.contains('/') {
        let tail: String = s.chars().skip(n - keep).collect();
        return format!("…{tail}");
    }
    let mut out: String = s.chars().take(keep).collect();
    out.push('…');
    out
}

/// How a cell reads in a fitted table: a list is its first item and how many more there are.
fn short(cell: &Cell) -> String {
    match cell {
        Cell::List(items) => match items.as_slice() {
            [] => "[]".into(),
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} (+{} more)", rest.len()),
        },
        other => other.display(),
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Aligned lines: header, rule, rows.
fn lay_out(header: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
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
    let mut out = line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("{}\n", rule.join("-+-")));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

impl ResultSet {
    fn with_status(&self, mut out: String) -> String {
        if let Some(s) = &self.status {
            out.push_str(s);
            out.push('\n');
        }
        out
    }

    fn row_count(&self) -> String {
        format!("({})\n", plural(self.rows.len(), "row"))
    }

    /// Every value, aligned, followed by the status line.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        if !self.columns.is_empty() {
            let header: Vec<String> = self.columns.iter().map(|c| c.name.clone()).collect();
            let cells: Vec<Vec<String>> = self
                .rows
                .iter()
                .map(|r| r.iter().map(|c| one_line(&c.display())).collect())
                .collect();
            out.push_str(&lay_out(&header, &cells));
            out.push_str(&self.row_count());
        }
        self.with_status(out)
    }

    /// The table fitted to `style`: lists shortened, long cells cut, and the columns that do
    /// not fit the width left out (always the first one kept), with a note naming them.
    pub fn to_table_fitted(&self, style: &TableStyle) -> String {
        let mut out = String::new();
        if self.columns.is_empty() {
            return self.with_status(out);
        }
        let cell_max = style.max_cell.max(4);
        let header: Vec<String> = self
            .columns
            .iter()
            .map(|c| cut(&c.name, cell_max))
            .collect();
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|c| cut(&one_line(&short(c)), cell_max))
                    .collect()
            })
            .collect();
        let width_of = |i: usize| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let mut shown = Vec::new();
        let mut used = 0;
        for i in 0..self.columns.len() {
            let w = width_of(i) + if shown.is_empty() { 0 } else { 3 };
            if shown.is_empty() || style.width.is_none_or(|max| used + w <= max) {
                shown.push(i);
                used += w;
            }
        }
        let pick = |r: &[String]| shown.iter().map(|&i| r[i].clone()).collect::<Vec<_>>();
        let rows: Vec<Vec<String>> = cells.iter().map(|r| pick(r)).collect();
        out.push_str(&lay_out(&pick(&header), &rows));
        out.push_str(&self.row_count());
        let hidden: Vec<&str> = (0..self.columns.len())
            .filter(|i| !shown.contains(i))
            .map(|i| self.columns[i].name.as_str())
            .collect();
        if !hidden.is_empty() {
            out.push_str(&format!(
                "({} not shown: {}; .mode line shows every column, .maxwidth 0 the whole table)\n",
                plural(hidden.len(), "column"),
                hidden.join(", ")
            ));
        }
        self.with_status(out)
    }

    /// Each row as `column = value` lines, rows separated by a blank line (every value whole).
    pub fn to_lines(&self) -> String {
        let mut out = String::new();
        let width = self
            .columns
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        for (n, r) in self.rows.iter().enumerate() {
            if n > 0 {
                out.push('\n');
            }
            for (c, cell) in self.columns.iter().zip(r) {
                out.push_str(&format!(
                    "{:>width$} = {}\n",
                    c.name,
                    one_line(&cell.display())
                ));
            }
        }
        if !self.columns.is_empty() {
            out.push_str(&self.row_count());
        }
        self.with_status(out)
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
            w.write_record(self.columns.iter().map(|c| &c.name))?;
            for r in &self.rows {
                w.write_record(r.iter().map(Cell::display))?;
            }
            Ok(())
        };
        // Writing to memory cannot fail; a failure would only truncate the text.
        let _ = write();
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{CellType, Column};

    fn sample() -> ResultSet {
        ResultSet {
            columns: vec![
                Column::new("id", CellType::Int, false),
                Column::new("text", CellType::StrList, true),
                Column::new("score", CellType::Float, true),
            ],
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

    #[test]
    fn a_fitted_table_cuts_cells_shortens_lists_and_folds_columns() {
        let wide = ResultSet {
            columns: vec![
                Column::new("rank", CellType::Int, false),
                Column::new("text", CellType::StrList, true),
                Column::new("image", CellType::Str, true),
                Column::new("split", CellType::Str, true),
            ],
            rows: vec![vec![
                Cell::Int(1),
                Cell::List(vec![
                    "a red star on the left".into(),
                    "x".into(),
                    "y".into(),
                ]),
                Cell::Str("/some/very/long/path/to/an/image/file.png".into()),
                Cell::Str("test".into()),
            ]],
            status: Some("done".into()),
        };
        let style = TableStyle {
            width: Some(45),
            max_cell: 20,
        };
        let out = wide.to_table_fitted(&style);
        assert!(
            out.lines()
                .all(|l| l.chars().count() <= 45 || l.starts_with('(')),
            "{out}"
        );
        assert!(out.contains("a red star on the l…"), "{out}");
        assert!(
            out.contains("| test"),
            "a later column that fits is kept: {out}"
        );
        assert!(out.contains("(1 column not shown: image;"), "{out}");
        let paths = wide.to_table_fitted(&TableStyle {
            width: None,
            max_cell: 20,
        });
        assert!(
            paths.contains("…o/an/image/file.png"),
            "paths keep their end: {paths}"
        );
        assert!(out.ends_with("done\n"));
        let all = wide.to_table_fitted(&TableStyle {
            width: None,
            max_cell: 100,
        });
        assert!(all.contains("a red star on the left (+2 more)"), "{all}");
        assert!(!all.contains("not shown"));
        let lines = wide.to_lines();
        assert!(
            lines.contains(" text = [\"a red star on the left\",\"x\",\"y\"]"),
            "{lines}"
        );
        assert!(lines.contains("split = test"));
    }
}
