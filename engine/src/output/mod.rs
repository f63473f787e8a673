//! What statements return. [`Output`] is typed by statement kind (a status line, a table, search
//! hits, an evaluation, a training run); each converts to a [`ResultSet`] (named, typed columns
//! and rows, for display) and to an Arrow [`RecordBatch`], whose schema comes from the statement
//! and the collection's catalog, never from the values. This is what the Python package hands to
//! pyarrow, pandas and polars.

mod arrow;
mod evaluation;
mod render;
mod search;
mod table;
mod training;

pub use arrow::to_record_batch;
pub use evaluation::{DirectionResult, EVALUATIONS, Evaluation, Failure, Item, ModelEvaluation};
pub use render::TableStyle;
pub use search::{SearchHit, SearchResults, SearchTimings};
pub use table::{Cell, CellType, Column, ResultSet};
pub use training::{EpochRow, TrainingRun};

use arrow_array::RecordBatch;

use crate::error::Result;

/// The result of one statement.
#[derive(Debug, Clone)]
pub enum Output {
    /// Statements that change things and return nothing else ("created collection images").
    Status(String),
    /// Rows: `SELECT`, `SHOW`, `DESCRIBE`, `EXPLAIN`, the rows an import skipped.
    Table(ResultSet),
    Search(SearchResults),
    Evaluation(Evaluation),
    /// `FINETUNE` and `TRAIN ELIP`.
    Training(TrainingRun),
}

impl Output {
    /// The status line, if the statement has one.
    pub fn status(&self) -> Option<String> {
        match self {
            Output::Status(s) => Some(s.clone()),
            Output::Table(t) => t.status.clone(),
            Output::Search(s) => s.report.as_ref().map(|p| format!("wrote report {p}")),
            Output::Evaluation(e) => Some(e.status()),
            Output::Training(t) => Some(t.status.clone()),
        }
    }

    /// Every column and value, as a table.
    pub fn to_result_set(&self) -> ResultSet {
        match self {
            Output::Status(s) => ResultSet::status(s.clone()),
            Output::Table(t) => t.clone(),
            Output::Search(s) => s.to_result_set(),
            Output::Evaluation(e) => e.to_result_set(),
            Output::Training(t) => t.to_result_set(),
        }
    }

    pub fn into_result_set(self) -> ResultSet {
        match self {
            Output::Table(t) => t,
            other => other.to_result_set(),
        }
    }

    /// What a person reads in a terminal: like [`Output::to_result_set`], but a search hit's
    /// captions are one caption (the one that matched, else the first) and their count.
    pub fn display_set(&self) -> ResultSet {
        match self {
            Output::Search(s) => s.display_set(),
            other => other.to_result_set(),
        }
    }

    /// Rows (hits) of the result; none for a status alone.
    pub fn len(&self) -> usize {
        match self {
            Output::Status(_) => 0,
            Output::Table(t) => t.rows.len(),
            Output::Search(s) => s.hits.len(),
            Output::Evaluation(e) => e.models.iter().map(|m| m.directions.len()).sum(),
            Output::Training(t) => t.epochs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The columns and rows `to_arrow` converts: every column, and for searches that fetched
    /// them the image bytes.
    pub fn arrow_set(&self) -> ResultSet {
        match self {
            Output::Search(s) => s.arrow_set(),
            other => other.to_result_set(),
        }
    }

    /// The result as one Arrow record batch (a status alone is a one-row `status` column;
    /// search hits carry an `image_bytes` column when the search fetched the images).
    pub fn to_arrow(&self) -> Result<RecordBatch> {
        to_record_batch(&self.arrow_set())
    }
}

/// "s" after a count that is not one.
pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
