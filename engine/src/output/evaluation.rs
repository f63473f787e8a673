//! The results of an `EVALUATE`: metrics per model and direction, the worst failures (for the
//! report), and their table.

use std::time::Duration;

use mirante_query::{Direction, EvalMetric};

use super::table::{Cell, CellType, Column, ResultSet};

/// The collection that keeps every evaluation run.
pub const EVALUATIONS: &str = "mirante_evaluations";

/// The outcome of one `EVALUATE`.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub collection: String,
    /// The version of the collection evaluated.
    pub version: u64,
    /// The `WHERE` clause as SQL.
    pub filter: Option<String>,
    pub metrics: Vec<EvalMetric>,
    /// Distinct images (after merging byte-identical ones) and captions evaluated.
    pub images: usize,
    pub captions: usize,
    pub models: Vec<ModelEvaluation>,
    /// `USING INDEX`: how deep each search went; `None` for exact ranks.
    pub index_depth: Option<usize>,
    /// Why the run was not stored in `mirante_evaluations`, if it was not.
    pub not_recorded: Option<String>,
    pub report: Option<String>,
}

/// The results of one model.
#[derive(Debug, Clone)]
pub struct ModelEvaluation {
    /// As named in `USING MODEL`, or the collection's model.
    pub model: String,
    pub fingerprint: String,
    pub directions: Vec<DirectionResult>,
    /// Time of the exact ranking pass (both directions).
    pub ranking_time: Duration,
}

/// The metrics of one direction.
#[derive(Debug, Clone)]
pub struct DirectionResult {
    pub direction: Direction,
    /// Queries with at least one relevant item in the gallery.
    pub queries: usize,
    /// Column name and value, in the order of the statement's metrics (`mean_similarity` adds
    /// `mean_similarity_nonmatching`); `None` when there were no queries.
    pub values: Vec<(String, Option<f64>)>,
    /// The queries whose first relevant item ranked worst.
    pub worst: Vec<Failure>,
}

/// A query that went badly, with what was retrieved instead (for the report).
#[derive(Debug, Clone)]
pub struct Failure {
    /// The caption, or the query image's row.
    pub query: Item,
    /// Rank of the first relevant item ([`crate::metrics::NOT_RETRIEVED`] when a `USING INDEX`
    /// search did not return it).
    pub rank: u32,
    /// The relevant items (the gold image, or the image's captions).
    pub relevant: Vec<Item>,
    /// The first results, with their scores.
    pub retrieved: Vec<(Item, f32)>,
}

/// A caption or an image of the evaluated rows.
#[derive(Debug, Clone)]
pub struct Item {
    pub row: u64,
    /// The caption text (captions), or the image source (images).
    pub label: String,
    /// Image bytes, for images.
    pub image: Option<Vec<u8>>,
}

impl Evaluation {
    /// Metric columns in order.
    pub fn metric_columns(&self) -> Vec<String> {
        self.models
            .first()
            .and_then(|m| m.directions.first())
            .map(|d| d.values.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }

    /// One row per (model, direction): `model`, `direction`, `queries`, one column per metric,
    /// and with several models `delta_<metric>` against the first model.
    pub fn to_result_set(&self) -> ResultSet {
        let metrics = self.metric_columns();
        let mut columns = vec![
            Column::new("model", CellType::Str, false),
            Column::new("direction", CellType::Str, false),
            Column::new("queries", CellType::Int, false),
        ];
        columns.extend(
            metrics
                .iter()
                .map(|m| Column::new(m.clone(), CellType::Float, true)),
        );
        let compare = self.models.len() > 1;
        if compare {
            columns.extend(
                metrics
                    .iter()
                    .map(|m| Column::new(format!("delta_{m}"), CellType::Float, true)),
            );
        }
        let cell = |v: Option<f64>| v.map_or(Cell::Null, Cell::Float);
        let mut rows = Vec::new();
        for m in &self.models {
            for d in &m.directions {
                let mut row = vec![
                    Cell::Str(m.model.clone()),
                    Cell::Str(d.direction.to_string()),
                    Cell::Int(d.queries as i64),
                ];
                row.extend(d.values.iter().map(|(_, v)| cell(*v)));
                if compare {
                    let base = self.models[0]
                        .directions
                        .iter()
                        .find(|b| b.direction == d.direction);
                    for (i, (_, v)) in d.values.iter().enumerate() {
                        let b = base.and_then(|b| b.values[i].1);
                        row.push(cell(v.zip(b).map(|(v, b)| v - b)));
                    }
                }
                rows.push(row);
            }
        }
        ResultSet {
            columns,
            rows,
            status: Some(self.status()),
        }
    }

    /// What was evaluated, where it was recorded, and the report.
    pub fn status(&self) -> String {
        let mut status = format!(
            "evaluated {} on {} images and {} captions of {} (version {}{})",
            if self.models.len() == 1 {
                "1 model".to_string()
            } else {
                format!("{} models", self.models.len())
            },
            self.images,
            self.captions,
            self.collection,
            self.version,
            self.filter
                .as_ref()
                .map(|f| format!(", WHERE {f}"))
                .unwrap_or_default()
        );
        if let Some(depth) = self.index_depth {
            status.push_str(&format!(
                "; ranked through the collection's search (top {depth} per query)"
            ));
        }
        match &self.not_recorded {
            None => status.push_str(&format!("; recorded in {EVALUATIONS}")),
            Some(why) => status.push_str(&format!("; not recorded in {EVALUATIONS}: {why}")),
        }
        if let Some(r) = &self.report {
            status.push_str(&format!("; wrote report {r}"));
        }
        status
    }
}
