//! `mirante sql` and `mirante shell`: statements in, formatted outputs out. Ctrl-C cancels the
//! running statement (nothing half-committed) and the shell goes on; in a terminal, tables
//! fit its width.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mirante::{Access, CancelToken, Database, ExecOptions, Options, Output, TableStyle};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

/// How outputs are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns; fitted to the terminal's width when printing to one.
    Table,
    /// One `column = value` line per value, rows separated by blank lines.
    Line,
    /// JSON lines: one object per row.
    Json,
    Csv,
}

/// How wide tables may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    /// The terminal's width when printing to one, else no limit.
    Auto,
    /// `.maxwidth N`.
    Fixed(usize),
    /// `.maxwidth 0`: every value whole.
    Unlimited,
}

/// The printer's settings.
#[derive(Debug, Clone, Copy)]
struct Printer {
    format: Format,
    width: Width,
}

impl Printer {
    fn render(&self, output: &Output) -> String {
        let style = |width| TableStyle {
            width: Some(width),
            ..TableStyle::default()
        };
        match (self.format, self.width) {
            (Format::Table, Width::Fixed(w)) => output.display_set().to_table_fitted(&style(w)),
            (Format::Table, Width::Auto) if std::io::stdout().is_terminal() => {
                let width = terminal_size::terminal_size().map_or(120, |(w, _)| w.0 as usize);
                output.display_set().to_table_fitted(&style(width))
            }
            (Format::Table, _) => output.to_result_set().to_table(),
            (Format::Line, _) => output.to_result_set().to_lines(),
            (Format::Json, _) => output.to_result_set().to_jsonl(),
            (Format::Csv, _) => output.to_result_set().to_csv(),
        }
    }
}

/// The statement Ctrl-C cancels, if one runs.
#[derive(Debug, Clone, Default)]
struct Running(Arc<Mutex<Option<CancelToken>>>);

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<CancelToken>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ctrl-C cancels the running statement; with none running, it ends the process (as an
    /// interrupted program does: status 130). At a terminal prompt the line editor reads
    /// Ctrl-C itself, so this runs only while a statement runs or input is piped.
    fn install(&self) -> Result<()> {
        let running = self.clone();
        ctrlc::set_handler(move || match running.lock().as_ref() {
            Some(token) if !token.is_cancelled() => {
                token.cancel();
                eprintln!("\ncancelling the statement...");
            }
            _ => std::process::exit(130),
        })
        .context("installing the Ctrl-C handler")
    }

    /// Runs `text` with a fresh token that Ctrl-C cancels.
    fn run(&self, db: &Database, text: &str, mut each: impl FnMut(Output)) -> mirante::Result<()> {
        let options = ExecOptions::default();
        *self.lock() = Some(options.cancel.clone());
        let result = db.sql_each(text, &options, &mut each);
        *self.lock() = None;
        result
    }
}

/// How `sql` and `shell` open their database.
#[derive(clap::Args, Debug, Clone)]
pub struct OpenArgs {
    /// Seconds a write waits for another process's writer to finish before failing (as
    /// SQLite's busy timeout; 0 fails at once).
    #[arg(long, value_name = "SECONDS", default_value_t = mirante::storage::DEFAULT_BUSY_TIMEOUT.as_secs_f64())]
    busy_timeout: f64,
    /// Confine statements to this folder (repeat for several): the files they import, the image
    /// paths they read, the model folders they load and the reports and models they write must
    /// be under one of them (the database and the Hugging Face cache stay readable). Implies
    /// --no-downloads. For hosts that run statements their users send.
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_paths: Vec<PathBuf>,
    /// Never download a model from the Hugging Face Hub; only its local cache is used.
    #[arg(long)]
    no_downloads: bool,
}

/// Opens the database and says on stderr what is wrong with it (a damaged newer version, which
/// is shown as an older one and refuses writes until restored).
pub fn open(db: &Path, progress: bool, read_only: bool, args: &OpenArgs) -> Result<Database> {
    let busy_timeout = Duration::try_from_secs_f64(args.busy_timeout)
        .map_err(|e| anyhow::anyhow!("--busy-timeout {}: {e}", args.busy_timeout))?;
    let mut access = if args.allow_paths.is_empty() {
        Access::default()
    } else {
        Access::confined(&args.allow_paths).context("--allow-path")?
    };
    access.downloads &= !args.no_downloads;
    let database = Database::open_with(
        db,
        Options {
            progress,
            busy_timeout,
            access,
            read_only,
            ..Default::default()
        },
    )
    .with_context(|| format!("opening database {}", db.display()))?;
    for w in database.warnings() {
        eprintln!("warning: {}: {w}", db.display());
    }
    Ok(database)
}

/// `mirante sql`: runs the statements, printing each result as its statement finishes.
pub fn run_sql(
    db: &Path,
    statements: Option<String>,
    format: Format,
    progress: bool,
    open_args: &OpenArgs,
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
    let database = open(db, progress, false, open_args)?;
    let running = Running::default();
    running.install()?;
    let printer = Printer {
        format,
        width: Width::Auto,
    };
    let mut out = std::io::stdout().lock();
    let result = running.run(&database, &text, |r| {
        // A closed pipe (e.g. `| head`) is not an error worth reporting.
        let _ = out.write_all(printer.render(&r).as_bytes());
    });
    if let Err(e) = result {
        eprintln!("error: {}", e.render(&text));
        let status = if matches!(e, mirante::Error::Cancelled) {
            130
        } else {
            1
        };
        std::process::exit(status);
    }
    Ok(())
}

const HELP: &str = "\
Statements end with ';' and may span lines; Ctrl-C cancels the one running. Examples:
  CREATE COLLECTION images WITH (model = '<folder or org/name>');
  IMPORT INTO images FROM 'photos/' WITH (split = 'train');
  SEARCH images BY TEXT 'a dog on the beach' LIMIT 5;
  SEARCH images BY IMAGE 'query.jpg' MATCH IMAGES WHERE split = 'test' LIMIT 3;
  SELECT id, text FROM images WHERE text LIKE '%dog%' LIMIT 10;
  SHOW COLLECTIONS;  DESCRIBE images;  EXPLAIN SEARCH images BY ROW 1;
Dot commands:
  .help                  this text
  .mode table|line|json|csv   output format (line: one column = value per line)
  .maxwidth N            fit tables to N columns (0: every value whole; default: the terminal)
  .timer on|off          print how long each statement took
  .tables                the collections (SHOW COLLECTIONS)
  .quit / .exit          leave (or Ctrl-D)";

const DOT_COMMANDS: [&str; 7] = [
    ".help",
    ".mode",
    ".maxwidth",
    ".timer",
    ".tables",
    ".quit",
    ".exit",
];

/// Completion of keywords and collection names.
struct ShellHelper {
    db: Arc<Database>,
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
        names.extend(DOT_COMMANDS.map(String::from));
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

/// The shell's state between statements.
struct Shell {
    db: Arc<Database>,
    printer: Printer,
    timer: bool,
    failed: bool,
    running: Running,
}

impl Shell {
    /// Applies a dot command; false for `.quit`.
    fn dot(&mut self, command: &str) -> bool {
        let mut parts = command.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(".quit" | ".exit"), _) => return false,
            (Some(".help"), _) => println!("{HELP}"),
            (Some(".tables"), _) => self.run("SHOW COLLECTIONS"),
            (Some(".mode"), Some(mode)) => match mode {
                "table" => self.printer.format = Format::Table,
                "line" => self.printer.format = Format::Line,
                "json" => self.printer.format = Format::Json,
                "csv" => self.printer.format = Format::Csv,
                other => eprintln!("error: unknown mode '{other}'; modes: table, line, json, csv"),
            },
            (Some(".maxwidth"), Some(n)) => match n.parse::<usize>() {
                Ok(0) => self.printer.width = Width::Unlimited,
                Ok(n) => self.printer.width = Width::Fixed(n),
                Err(_) => eprintln!("error: .maxwidth takes a number of columns (0: no limit)"),
            },
            (Some(".timer"), Some("on")) => self.timer = true,
            (Some(".timer"), Some("off")) => self.timer = false,
            _ => eprintln!("error: unknown or incomplete dot command '{command}'; try .help"),
        }
        true
    }

    fn run(&mut self, text: &str) {
        let start = Instant::now();
        let printer = self.printer;
        let result = self
            .running
            .run(&self.db, text, |r| print!("{}", printer.render(&r)));
        // Flushed before errors go to stderr, so a reader of both sees them in order.
        let _ = std::io::stdout().flush();
        if let Err(e) = result {
            eprintln!("error: {}", e.render(text));
            self.failed = true;
        }
        if self.timer {
            println!("time: {:.3} s", start.elapsed().as_secs_f64());
        }
    }
}

/// `mirante shell`.
pub fn repl(db: &Path, open_args: &OpenArgs) -> Result<()> {
    let database = Arc::new(open(db, std::io::stderr().is_terminal(), false, open_args)?);
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
    let mut shell = Shell {
        db: database,
        printer: Printer {
            format: Format::Table,
            width: Width::Auto,
        },
        timer: false,
        failed: false,
        running: Running::default(),
    };
    shell.running.install()?;
    let mut buffer = String::new();
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
            if !shell.dot(trimmed) {
                break;
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
        shell.run(&statements);
    }
    if !buffer.trim().is_empty() {
        shell.run(&buffer);
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    // Scripts piped into the shell learn about failures through the exit status.
    if shell.failed && !interactive {
        std::process::exit(1);
    }
    Ok(())
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
        assert_eq!(completions(".m", true, cols()), [".mode", ".maxwidth"]);
        assert!(completions(".m", false, cols()).is_empty());
    }
}
