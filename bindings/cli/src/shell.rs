//! `mirante sql` and `mirante shell`: statements in, formatted result sets out.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use mirante::{Database, Options, ResultSet};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

/// How result sets are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl Format {
    fn render(self, r: &ResultSet) -> String {
        match self {
            Format::Table => r.to_table(),
            Format::Json => r.to_jsonl(),
            Format::Csv => r.to_csv(),
        }
    }
}

/// `mirante sql`: runs the statements, printing each result as its statement finishes.
pub fn run_sql(
    db: &Path,
    statements: Option<String>,
    format: Format,
    progress: bool,
) -> Result<()> {
    let text = match statements {
        Some(t) => t,
        None => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .context("reading statements from stdin")?;
            t
        }
    };
    let database = Database::open_with(
        db,
        Options {
            progress,
            ..Default::default()
        },
    )
    .with_context(|| format!("opening database {}", db.display()))?;
    let mut out = std::io::stdout().lock();
    let result = database.sql_each(&text, |r| {
        // A closed pipe (e.g. `| head`) is not an error worth reporting.
        let _ = out.write_all(format.render(&r).as_bytes());
    });
    if let Err(e) = result {
        eprintln!("error: {}", e.render(&text));
        std::process::exit(1);
    }
    Ok(())
}

const HELP: &str = "\
Statements end with ';' and may span lines. Examples:
  CREATE COLLECTION images WITH (model = '<folder or org/name>');
  IMPORT INTO images FROM 'photos/' WITH (split = 'train');
  SEARCH images BY TEXT 'a dog on the beach' LIMIT 5;
  SEARCH images BY IMAGE 'query.jpg' MATCH IMAGES WHERE split = 'test' LIMIT 3;
  SELECT id, text FROM images WHERE text LIKE '%dog%' LIMIT 10;
  SHOW COLLECTIONS;  DESCRIBE images;  EXPLAIN SEARCH images BY ROW 1;
Dot commands:
  .help              this text
  .mode table|json|csv   output format
  .timer on|off      print how long each statement took
  .tables            the collections (SHOW COLLECTIONS)
  .quit / .exit      leave (or Ctrl-D)";

/// Completion of keywords and collection names.
struct ShellHelper {
    db: std::sync::Arc<Database>,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .map_or(0, |i| i + 1);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((start, Vec::new()));
        }
        let collections: Vec<String> = self
            .db
            .snapshot()
            .map(|s| s.collections().iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let pairs = completions(word, start == 0, collections)
            .into_iter()
            .map(|n| Pair {
                display: n.clone(),
                replacement: n,
            })
            .collect();
        Ok((start, pairs))
    }
}

/// Completions of `word`: collection names, keywords (in the case the user types) and, at the
/// start of a line, dot commands.
fn completions(word: &str, line_start: bool, collections: Vec<String>) -> Vec<String> {
    let lower = word.to_lowercase();
    let mut names = collections;
    names.extend(mirante::query::KEYWORDS.iter().map(|k| {
        if word.chars().next().is_some_and(char::is_lowercase) {
            k.to_lowercase()
        } else {
            k.to_string()
        }
    }));
    names.extend(
        mirante::query::EvalMetric::DEFAULTS
            .iter()
            .map(ToString::to_string),
    );
    if line_start {
        names.extend([".help", ".mode", ".timer", ".tables", ".quit", ".exit"].map(String::from));
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| n.to_lowercase().starts_with(&lower) && seen.insert(n.clone()));
    names
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

fn history_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("MIRANTE_HISTORY") {
        return Some(p.into());
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".mirante_history"))
}

/// `mirante shell`.
pub fn repl(db: &Path) -> Result<()> {
    let database = std::sync::Arc::new(
        Database::open_with(
            db,
            Options {
                progress: std::io::stderr().is_terminal(),
                ..Default::default()
            },
        )
        .with_context(|| format!("opening database {}", db.display()))?,
    );
    let mut editor: Editor<ShellHelper, rustyline::history::DefaultHistory> = Editor::new()?;
    editor.set_helper(Some(ShellHelper {
        db: database.clone(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        // A missing history file is the normal first run.
        let _ = editor.load_history(h);
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        println!(
            "Mirante {} shell on {}. Type .help for help; statements end with ';'.",
            env!("CARGO_PKG_VERSION"),
            db.display()
        );
    }
    let mut mode = Format::Table;
    let mut timer = false;
    let mut buffer = String::new();
    let mut failed = false;
    loop {
        let prompt = if buffer.is_empty() {
            "mirante> "
        } else {
            "    ...> "
        };
        let line = match editor.readline(prompt) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if buffer.is_empty() && trimmed.starts_with('.') {
            let _ = editor.add_history_entry(trimmed);
            let mut parts = trimmed.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(".quit" | ".exit"), _) => break,
                (Some(".help"), _) => println!("{HELP}"),
                (Some(".tables"), _) => {
                    run_one(&database, "SHOW COLLECTIONS", mode, timer, &mut failed)
                }
                (Some(".mode"), Some("table")) => mode = Format::Table,
                (Some(".mode"), Some("json")) => mode = Format::Json,
                (Some(".mode"), Some("csv")) => mode = Format::Csv,
                (Some(".timer"), Some("on")) => timer = true,
                (Some(".timer"), Some("off")) => timer = false,
                _ => eprintln!("error: unknown or incomplete dot command '{trimmed}'; try .help"),
            }
            continue;
        }
        if !buffer.is_empty() {
            buffer.push('\n');
        }
        buffer.push_str(&line);
        if !trimmed.ends_with(';') {
            continue;
        }
        let statements = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(statements.as_str());
        run_one(&database, &statements, mode, timer, &mut failed);
    }
    if !buffer.trim().is_empty() {
        run_one(&database, &buffer, mode, timer, &mut failed);
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    // Scripts piped into the shell learn about failures through the exit status.
    if failed && !interactive {
        std::process::exit(1);
    }
    Ok(())
}

fn run_one(db: &Database, text: &str, mode: Format, timer: bool, failed: &mut bool) {
    let start = Instant::now();
    let result = db.sql_each(text, |r| print!("{}", mode.render(&r)));
    if let Err(e) = result {
        eprintln!("error: {}", e.render(text));
        *failed = true;
    }
    if timer {
        println!("time: {:.3} s", start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::completions;

    #[test]
    fn completes_keywords_collections_and_dot_commands() {
        let cols = || vec!["images".to_string(), "paintings".to_string()];
        assert_eq!(completions("SEA", false, cols()), ["SEARCH"]);
        assert_eq!(completions("sea", false, cols()), ["search"]);
        assert_eq!(
            completions("im", false, cols()),
            ["images", "image", "image_to_text", "import"]
        );
        assert_eq!(
            completions("rec", false, cols()),
            ["recall@1", "recall@5", "recall@10"]
        );
        assert_eq!(completions("pai", false, cols()), ["paintings"]);
        assert_eq!(completions(".m", true, cols()), [".mode"]);
        assert!(completions(".m", false, cols()).is_empty());
    }
}
