//! Evaluation of bound predicates over a row, through [`RowValues`] so that this crate stays
//! independent of the storage layout. SQL semantics: a comparison with a null value is false
//! (and so is its negation); a predicate on captions holds when any caption satisfies it.

use std::cmp::Ordering;

use crate::ast::{CmpOp, Literal};
use crate::binder::{ColumnRef, Predicate};

/// A single value read from a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Datum<'a> {
    Null,
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bool(bool),
}

/// Read access to the columns of one row.
pub trait RowValues {
    /// The value of a single-valued column (`Text` is never asked here).
    fn datum(&self, column: ColumnRef) -> Datum<'_>;
    /// The row's captions.
    fn texts(&self) -> Vec<&str>;
}

impl Predicate {
    /// Whether `row` satisfies the predicate.
    pub fn matches(&self, row: &dyn RowValues) -> bool {
        self.eval(row).unwrap_or(false)
    }

    /// Three-valued logic: `None` is SQL's unknown (a null was compared).
    fn eval(&self, row: &dyn RowValues) -> Option<bool> {
        match self {
            Predicate::And(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Predicate::Or(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Predicate::Not(a) => a.eval(row).map(|v| !v),
            Predicate::IsNull { column, negated } => {
                let null = match column {
                    ColumnRef::Text => row.texts().is_empty(),
                    c => row.datum(*c) == Datum::Null,
                };
                Some(null != *negated)
            }
            Predicate::Compare { column, op, value } => {
                any_value(row, *column, |d| compare(d, value).map(|o| holds(*op, o)))
            }
            Predicate::InList {
                column,
                values,
                sorted_strings,
                negated,
            } => any_value(row, *column, |d| {
                if let (Datum::Str(s), Some(sorted)) = (d, sorted_strings) {
                    return Some(sorted.binary_search_by(|v| v.as_str().cmp(s)).is_ok());
                }
                let mut unknown = false;
                for v in values {
                    match compare(d, v) {
                        Some(Ordering::Equal) => return Some(true),
                        None => unknown = true,
                        _ => {}
                    }
                }
                if unknown { None } else { Some(false) }
            })
            .map(|v| v != *negated),
            Predicate::Between {
                column,
                low,
                high,
                negated,
            } => any_value(row, *column, |d| {
                let lo = compare(d, low)?;
                let hi = compare(d, high)?;
                Some(lo != Ordering::Less && hi != Ordering::Greater)
            })
            .map(|v| v != *negated),
            Predicate::Like {
                column,
                pattern,
                negated,
                case_insensitive,
            } => any_value(row, *column, |d| match d {
                Datum::Str(s) if *case_insensitive => {
                    Some(like(&s.to_lowercase(), &pattern.to_lowercase()))
                }
                Datum::Str(s) => Some(like(s, pattern)),
                _ => None,
            })
            .map(|v| v != *negated),
        }
    }
}

/// Applies `test` to the column's value, or to each caption (true if any is true).
fn any_value(
    row: &dyn RowValues,
    column: ColumnRef,
    test: impl Fn(Datum<'_>) -> Option<bool>,
) -> Option<bool> {
    match column {
        ColumnRef::Text => {
            let texts = row.texts();
            if texts.is_empty() {
                return None;
            }
            let mut any_unknown = false;
            for t in texts {
                match test(Datum::Str(t)) {
                    Some(true) => return Some(true),
                    None => any_unknown = true,
                    Some(false) => {}
                }
            }
            if any_unknown { None } else { Some(false) }
        }
        c => test(row.datum(c)),
    }
}

fn compare(d: Datum<'_>, lit: &Literal) -> Option<Ordering> {
    match (d, lit) {
        (Datum::Int(a), Literal::Int(b)) => Some(a.cmp(b)),
        (Datum::Int(a), Literal::Float(b)) => (a as f64).partial_cmp(b),
        (Datum::Float(a), Literal::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Datum::Float(a), Literal::Float(b)) => a.partial_cmp(b),
        (Datum::Str(a), Literal::String(b)) => Some(a.cmp(b.as_str())),
        (Datum::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn holds(op: CmpOp, o: Ordering) -> bool {
    match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::NotEq => o != Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::LtEq => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::GtEq => o != Ordering::Less,
    }
}

/// SQL `LIKE`: `%` matches any run of characters, `_` exactly one.
pub fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // Greedy matching with backtracking to the last '%': linear for typical patterns.
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '%')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::{Catalog, ColumnInfo, ColumnKind, Plan, bind};
    use crate::parser::parse;

    struct Row {
        year: Option<i64>,
        texts: Vec<&'static str>,
    }

    impl RowValues for Row {
        fn datum(&self, column: ColumnRef) -> Datum<'_> {
            match column {
                ColumnRef::Meta(0) => self.year.map_or(Datum::Null, Datum::Int),
                ColumnRef::Split => Datum::Str("test"),
                _ => Datum::Null,
            }
        }
        fn texts(&self) -> Vec<&str> {
            self.texts.clone()
        }
    }

    struct Cat;
    impl Catalog for Cat {
        fn collection_names(&self) -> Vec<String> {
            vec!["c".into()]
        }
        fn columns(&self, _: &str) -> Option<Vec<ColumnInfo>> {
            Some(vec![
                ColumnInfo {
                    name: "year".into(),
                    column: ColumnRef::Meta(0),
                    kind: ColumnKind::Int,
                    nullable: true,
                },
                ColumnInfo {
                    name: "text".into(),
                    column: ColumnRef::Text,
                    kind: ColumnKind::StringList,
                    nullable: true,
                },
                ColumnInfo {
                    name: "split".into(),
                    column: ColumnRef::Split,
                    kind: ColumnKind::String,
                    nullable: true,
                },
            ])
        }
    }

    fn check(filter: &str, row: &Row) -> bool {
        let sql = format!("SELECT * FROM c WHERE {filter}");
        let Plan::Select {
            filter: Some(p), ..
        } = bind(parse(&sql).unwrap().remove(0), &Cat).unwrap()
        else {
            panic!()
        };
        p.matches(row)
    }

    #[test]
    fn sql_semantics() {
        let r = Row {
            year: Some(1890),
            texts: vec!["A Starry night", "blue swirls"],
        };
        let null = Row {
            year: None,
            texts: vec![],
        };
        assert!(check("year BETWEEN 1880 AND 1890", &r));
        assert!(check("year IN (1, 1890) AND split = 'test'", &r));
        assert!(check("text LIKE '%swirl%'", &r));
        assert!(!check("text LIKE 'starry%'", &r));
        assert!(check("text ILIKE 'a starry%'", &r));
        assert!(check("NOT year > 1900", &r));
        // Comparisons with null are unknown: neither they nor their negation hold.
        assert!(!check("year > 1", &null));
        assert!(!check("NOT year > 1", &null));
        assert!(check("year IS NULL OR year > 1", &null));
        assert!(check("text IS NULL", &null));
        // String lists are looked up sorted: any order, duplicates, and on every caption.
        assert!(check("text IN ('z', 'blue swirls', 'a', 'a')", &r));
        assert!(check("text NOT IN ('z', 'a starry night')", &r));
        assert!(check("split IN ('train', 'test')", &r));
        assert!(!check("split IN ('train', 'val')", &r));
        assert!(check("year NOT IN (1, 2)", &r));
    }

    #[test]
    fn like_patterns() {
        assert!(like("abc", "a%c"));
        assert!(like("abc", "%"));
        assert!(like("", "%%"));
        assert!(like("abc", "a_c"));
        assert!(!like("abc", "a_"));
        assert!(like("aXbXc", "%b%c"));
        assert!(!like("ab", "a%b%c"));
        assert!(like("ção", "_ã_"));
    }
}
