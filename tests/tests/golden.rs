//! Golden files for the query language (`tests/slt/*.slt`, sqllogictest-style): each file runs
//! against a fresh database; blocks are
//!
//! ```text
//! statement ok            statement error           query
//! <sql>                   <sql>                     <sql>
//!                         ----                      ----
//!                         <rendered error>          <results as tables>
//! ```
//!
//! separated by blank lines. `${MODEL}`, `${FIXTURES}` and `${TMP}` expand to the tiny CLIP
//! checkpoint, `tests/fixtures` and a scratch folder, and the same paths in outputs are written
//! back as those names. A header line `# mask: a, b` shows columns `a` and `b` as `<masked>`
//! (timings, and fingerprints of weights a file's statements trained). `MIRANTE_BLESS=1 cargo
//! test --test golden` rewrites the expected outputs.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use mirante::{Cell, Database, ResultSet};

struct Vars {
    pairs: Vec<(String, String)>,
}

impl Vars {
    fn new(tmp: &Path) -> Self {
        let canon = |p: PathBuf| p.canonicalize().unwrap().display().to_string();
        Vars {
            pairs: vec![
                ("${MODEL}".into(), canon(mirante_tests::tiny_clip())),
                (
                    "${FIXTURES}".into(),
                    canon(mirante_tests::repo_root().join("tests/fixtures")),
                ),
                ("${TMP}".into(), canon(tmp.to_path_buf())),
            ],
        }
    }

    fn expand(&self, s: &str) -> String {
        self.pairs
            .iter()
            .fold(s.to_string(), |s, (k, v)| s.replace(k, v))
    }

    fn abstract_paths(&self, s: &str) -> String {
        self.pairs
            .iter()
            .fold(s.to_string(), |s, (k, v)| s.replace(v, k))
    }

    /// Paths are abstracted in the cells, before the table is laid out, so that column widths
    /// do not depend on where the repository is checked out; `masked` columns are hidden.
    fn abstract_result(&self, r: &ResultSet, masked: &[String]) -> ResultSet {
        let cell = |c: &Cell| match c {
            Cell::Str(s) => Cell::Str(self.abstract_paths(s)),
            Cell::List(v) => Cell::List(v.iter().map(|s| self.abstract_paths(s)).collect()),
            other => other.clone(),
        };
        let hide: Vec<bool> = r.columns.iter().map(|c| masked.contains(&c.name)).collect();
        ResultSet {
            columns: r.columns.clone(),
            rows: r
                .rows
                .iter()
                .map(|row| {
                    row.iter()
                        .zip(&hide)
                        .map(|(c, &h)| {
                            if h && *c != Cell::Null {
                                Cell::Str("<masked>".into())
                            } else {
                                cell(c)
                            }
                        })
                        .collect()
                })
                .collect(),
            status: r.status.as_ref().map(|s| self.abstract_paths(s)),
        }
    }
}

#[derive(Debug)]
struct Block {
    kind: String,
    sql: String,
    expected: Option<String>,
}

fn parse_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    for chunk in text.split("\n\n") {
        let lines: Vec<&str> = chunk
            .trim_matches('\n')
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect();
        if lines.is_empty() {
            continue;
        }
        let kind = lines[0].trim().to_string();
        let sep = lines.iter().position(|l| *l == "----");
        let (sql, expected) = match sep {
            Some(i) => (&lines[1..i], Some(lines[i + 1..].join("\n"))),
            None => (&lines[1..], None),
        };
        blocks.push(Block {
            kind,
            sql: sql.join("\n"),
            expected,
        });
    }
    blocks
}

fn render(blocks: &[Block]) -> String {
    let mut out = Vec::new();
    for b in blocks {
        let mut s = format!("{}\n{}", b.kind, b.sql);
        if let Some(e) = &b.expected {
            s.push_str(&format!("\n----\n{e}"));
        }
        out.push(s);
    }
    out.join("\n\n") + "\n"
}

fn run_file(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let masked: Vec<String> = header
        .lines()
        .filter_map(|l| l.strip_prefix("# mask:"))
        .flat_map(|l| l.split(',').map(|c| c.trim().to_string()))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let vars = Vars::new(tmp.path());
    let db = Database::open(tmp.path().join("db")).unwrap();
    let mut blocks = parse_blocks(text.strip_prefix(header.as_str()).unwrap_or(&text));
    let mut failures = Vec::new();
    for b in &mut blocks {
        let sql = vars.expand(&b.sql);
        let result = db.sql(&sql);
        let actual = match (b.kind.as_str(), &result) {
            ("statement ok", Ok(_)) => None,
            ("statement ok", Err(e)) => {
                failures.push(format!("{}: `{}` failed: {}", path.display(), b.sql, e));
                continue;
            }
            ("statement error", Ok(_)) => {
                failures.push(format!("{}: `{}` succeeded", path.display(), b.sql));
                continue;
            }
            ("statement error", Err(e)) => Some(vars.abstract_paths(&e.render(&sql))),
            ("query", Ok(results)) => Some(
                results
                    .iter()
                    .map(|r| vars.abstract_result(&r.to_result_set(), &masked).to_table())
                    .collect::<String>()
                    .trim_end()
                    .to_string(),
            ),
            ("query", Err(e)) => {
                failures.push(format!("{}: `{}` failed: {}", path.display(), b.sql, e));
                continue;
            }
            (other, _) => panic!("{}: unknown block kind '{other}'", path.display()),
        };
        if std::env::var_os("MIRANTE_BLESS").is_some() {
            b.expected = actual;
        } else if actual != b.expected {
            failures.push(format!(
                "{}: `{}`\n--- expected\n{}\n--- actual\n{}",
                path.display(),
                b.sql,
                b.expected.as_deref().unwrap_or("(nothing)"),
                actual.as_deref().unwrap_or("(nothing)")
            ));
        }
    }
    if std::env::var_os("MIRANTE_BLESS").is_some() {
        let sep = if header.is_empty() { "" } else { "\n" };
        std::fs::write(path, header + sep + &render(&blocks)).unwrap();
    }
    failures
}

#[test]
fn golden_files() {
    let dir = mirante_tests::repo_root().join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "golden files missing in {}",
        dir.display()
    );
    let failures: Vec<String> = files.iter().flat_map(|f| run_file(f)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
