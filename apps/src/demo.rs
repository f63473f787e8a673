//! The end-to-end demo (`mirante demo`): the whole workflow on the bundled shapes dataset,
//! offline, in minutes. Generate a dataset, import it with the default model, search it in
//! English and Portuguese in both directions, evaluate, fine-tune on the train split, re-embed,
//! evaluate both models side by side, and write one HTML report of it all.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mirante::output::{Evaluation, Output, ResultSet, SearchResults, TrainingRun};
use mirante::{DEFAULT_MODEL, Database, ExecOptions, Options};

use crate::error::{Error, Result};
use crate::shapes::{ShapesConfig, generate};

/// The fine-tuned model's name in the demo database's registry.
pub const FINETUNED: &str = "shapes-finetuned";
/// Marks a folder as the demo's own, so a rerun may replace it.
const MARKER: &str = ".mirante-demo";

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub rows: usize,
    /// Dataset seed; the default model was trained on seed 0, so the demo's scenes are new to it.
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub progress: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            rows: 3000,
            seed: 1,
            epochs: 5,
            batch_size: 64,
            lr: 2e-4,
            progress: false,
        }
    }
}

/// One query of the demo, run before and after fine-tuning.
#[derive(Debug)]
pub struct QueryExample {
    pub sql: String,
    pub before: SearchResults,
    pub after: SearchResults,
}

/// Everything the demo did.
#[derive(Debug)]
pub struct DemoReport {
    pub folder: PathBuf,
    pub report: PathBuf,
    pub dataset: crate::shapes::ShapesSummary,
    /// The statements run, with their durations.
    pub steps: Vec<(String, Duration)>,
    /// `FINETUNE`'s epochs.
    pub finetune: TrainingRun,
    /// The test split under the default and the fine-tuned model, with deltas.
    pub evaluation: Evaluation,
    /// The same, per caption language: ("English", ...), ("Portuguese", ...).
    pub by_language: Vec<(String, Evaluation)>,
    pub queries: Vec<QueryExample>,
}

/// Searches of the demo: text to image in English and Portuguese (one with a filter), and
/// image to text for a test image. `{image}` stands for a test image path.
const QUERIES: [&str; 5] = [
    "SEARCH shapes BY TEXT 'a small red triangle to the left of a blue circle' WHERE split = 'test' LIMIT 5",
    "SEARCH shapes BY TEXT 'uma estrela amarela acima de um quadrado verde' WHERE split = 'test' LIMIT 5",
    "SEARCH shapes BY TEXT 'two black crosses side by side' WHERE split = 'test' LIMIT 5",
    "SEARCH shapes BY TEXT 'um círculo roxo grande no centro' WHERE split = 'test' AND objects = 1 LIMIT 5",
    "SEARCH shapes BY IMAGE '{image}' WHERE split = 'test' LIMIT 5",
];

const METRICS: &str = "recall@1, recall@5, recall@10, mrr, ndcg@10";

/// What the demo reports as it goes.
#[derive(Debug)]
pub enum DemoEvent<'a> {
    /// A statement (or command) about to run.
    Statement(&'a str),
    /// A statement's result.
    Finished(&'a Output),
}

/// Runs the demo in `out` (created; a previous demo there is replaced). `log` receives each
/// statement before it runs and its result after.
pub fn run(
    config: &DemoConfig,
    out: &Path,
    mut log: impl FnMut(DemoEvent<'_>),
) -> Result<DemoReport> {
    if config.rows < 100 {
        return Err(Error::Invalid(format!(
            "the demo needs at least 100 rows to have train, validation and test splits, got {}",
            config.rows
        )));
    }
    prepare(out)?;
    let mut steps = Vec::new();
    let data = out.join("data");
    let started = Instant::now();
    log(DemoEvent::Statement(&format!(
        "mirante dataset shapes --out {} --rows {} --seed {}",
        data.display(),
        config.rows,
        config.seed
    )));
    let dataset = generate(
        &ShapesConfig {
            rows: config.rows,
            seed: config.seed,
            progress: config.progress,
            ..ShapesConfig::default()
        },
        &data,
    )?;
    steps.push(("generate the dataset".to_string(), started.elapsed()));
    let db = Database::open_with(
        out.join("demo.db"),
        Options {
            progress: config.progress,
            ..Options::default()
        },
    )?;
    step(
        &db,
        &mut log,
        &mut steps,
        "CREATE COLLECTION shapes WITH (index = 'HNSW32')",
    )?;
    let quoted = data.display().to_string().replace('\'', "''");
    step(
        &db,
        &mut log,
        &mut steps,
        &format!("IMPORT INTO shapes FROM '{quoted}'"),
    )?;

    let image = test_image(&db)?.replace('\'', "''");
    let queries: Vec<String> = QUERIES
        .iter()
        .map(|q| q.replace("{image}", &image))
        .collect();
    let mut before = Vec::new();
    for q in &queries {
        log(DemoEvent::Statement(q));
        let output = one(&db, q, true)?;
        log(DemoEvent::Finished(&output));
        before.push(search_results(q, output)?);
    }
    let zero_shot = format!("EVALUATE {METRICS} ON shapes WHERE split = 'test'");
    step(&db, &mut log, &mut steps, &zero_shot)?;
    let finetune = step(
        &db,
        &mut log,
        &mut steps,
        &format!(
            "FINETUNE MODEL '{DEFAULT_MODEL}' ON shapes WHERE split = 'train' \
             VALIDATE WHERE split = 'validation' WITH (epochs = {}, batch_size = {}, lr = {}, \
             warmup_steps = 20, hard_negatives = true, seed = 0) AS '{FINETUNED}'",
            config.epochs, config.batch_size, config.lr
        ),
    )?;
    let finetune = match finetune {
        Output::Training(run) => run,
        other => return Err(unexpected("FINETUNE", &other)),
    };
    step(
        &db,
        &mut log,
        &mut steps,
        &format!("REEMBED shapes USING MODEL '{FINETUNED}'"),
    )?;
    let mut examples = Vec::new();
    for (q, before) in queries.iter().zip(before) {
        log(DemoEvent::Statement(q));
        let output = one(&db, q, true)?;
        log(DemoEvent::Finished(&output));
        let after = search_results(q, output)?;
        examples.push(QueryExample {
            sql: q.clone(),
            before,
            after,
        });
    }
    let mut compare = |filter: &str| -> Result<Evaluation> {
        let sql = format!(
            "EVALUATE {METRICS} ON shapes WHERE {filter} USING MODEL '{DEFAULT_MODEL}', '{FINETUNED}'"
        );
        log(DemoEvent::Statement(&sql));
        let started = Instant::now();
        let output = one(&db, &sql, false)?;
        log(DemoEvent::Finished(&output));
        steps.push((sql.clone(), started.elapsed()));
        match output {
            Output::Evaluation(e) => Ok(e),
            other => Err(unexpected(&sql, &other)),
        }
    };
    let evaluation = compare("split = 'test'")?;
    let by_language = vec![
        (
            "English".to_string(),
            compare("split = 'test' AND language = 'en'")?,
        ),
        (
            "Portuguese".to_string(),
            compare("split = 'test' AND language = 'pt'")?,
        ),
    ];
    let report = DemoReport {
        folder: out.to_path_buf(),
        report: out.join("report.html"),
        dataset,
        steps,
        finetune,
        evaluation,
        by_language,
        queries: examples,
    };
    crate::demo_report::write(&report.report, &report)?;
    Ok(report)
}

/// Creates `out`, or empties it when a previous demo left it; refuses any other folder with
/// files, so the demo never deletes what it did not make.
fn prepare(out: &Path) -> Result<()> {
    if out.exists() {
        let marker = out.join(MARKER);
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty && !marker.exists() {
            return Err(Error::Invalid(format!(
                "{} exists and was not made by the demo; choose another folder with --out",
                out.display()
            )));
        }
        if !empty {
            std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let marker = out.join(MARKER);
    std::fs::write(
        &marker,
        "made by mirante demo; rerunning the demo replaces this folder\n",
    )
    .map_err(|e| Error::io(&marker, e))
}

/// Runs one statement, logging it first and timing it.
fn step(
    db: &Database,
    log: &mut impl FnMut(DemoEvent<'_>),
    steps: &mut Vec<(String, Duration)>,
    text: &str,
) -> Result<Output> {
    log(DemoEvent::Statement(text));
    let started = Instant::now();
    let result = one(db, text, false)?;
    steps.push((text.to_string(), started.elapsed()));
    log(DemoEvent::Finished(&result));
    Ok(result)
}

/// The output of a one-statement text; with `image_bytes`, search hits carry their images
/// (for the report).
fn one(db: &Database, sql: &str, image_bytes: bool) -> Result<Output> {
    let options = ExecOptions {
        image_bytes,
        ..ExecOptions::default()
    };
    let mut out = None;
    db.sql_each(sql, &options, |o| out = Some(o))?;
    out.ok_or_else(|| Error::Unexpected {
        statement: sql.to_string(),
        got: "no result".into(),
    })
}

fn unexpected(statement: &str, got: &Output) -> Error {
    Error::Unexpected {
        statement: statement.to_string(),
        got: format!("{got:?}").chars().take(200).collect(),
    }
}

fn search_results(sql: &str, output: Output) -> Result<SearchResults> {
    match output {
        Output::Search(s) => Ok(s),
        other => Err(unexpected(sql, &other)),
    }
}

/// The source path of a test image (one with two objects when there is one), the query image
/// of the image-to-text search.
fn test_image(db: &Database) -> Result<String> {
    for filter in ["split = 'test' AND objects = 2", "split = 'test'"] {
        let found: ResultSet = one(
            db,
            &format!("SELECT image FROM shapes WHERE {filter} LIMIT 1"),
            false,
        )?
        .into_result_set();
        if let Some(mirante::Cell::Str(path)) = found.rows.first().and_then(|r| r.first()) {
            return Ok(path.clone());
        }
    }
    Err(Error::Invalid(
        "the demo dataset has no test image; use more rows".into(),
    ))
}
