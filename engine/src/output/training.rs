//! The result of `FINETUNE` and `TRAIN ELIP`: one row per epoch, and the status line.

use super::table::{Cell, CellType, Column, ResultSet};

/// One epoch of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRow {
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub loss: f64,
    /// The validation metric after the epoch (re-ranked for ELIP).
    pub validation: Option<f64>,
    pub samples_per_second: f64,
    /// ELIP with validation: the fusion weight chosen and the metric of ELIP's score alone.
    pub fusion: Option<(f64, Option<f64>)>,
}

/// What a training statement did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRun {
    /// The new model's registry name.
    pub model: String,
    /// The validation metric as written (`recall@1`).
    pub metric: String,
    /// The metric column's name (`recall@1`, or `reranked recall@1` for ELIP).
    pub metric_column: String,
    pub epochs: Vec<EpochRow>,
    pub status: String,
}

impl TrainingRun {
    /// `epoch`, `loss`, the metric, `samples_per_s`, and for ELIP with validation `fusion`
    /// and `ELIP alone <metric>`.
    pub fn to_result_set(&self) -> ResultSet {
        let mut columns = vec![
            Column::new("epoch", CellType::Int, false),
            Column::new("loss", CellType::Float, false),
            Column::new(self.metric_column.clone(), CellType::Float, true),
            Column::new("samples_per_s", CellType::Float, false),
        ];
        let tuned = self.epochs.iter().any(|e| e.fusion.is_some());
        if tuned {
            columns.push(Column::new("fusion", CellType::Float, true));
            columns.push(Column::new(
                format!("ELIP alone {}", self.metric),
                CellType::Float,
                true,
            ));
        }
        let opt = |v: Option<f64>| v.map_or(Cell::Null, Cell::Float);
        let rows = self
            .epochs
            .iter()
            .map(|e| {
                let mut r = vec![
                    Cell::Int(e.epoch as i64),
                    Cell::Float(e.loss),
                    opt(e.validation),
                    Cell::Float(e.samples_per_second),
                ];
                if tuned {
                    r.push(opt(e.fusion.map(|(w, _)| w)));
                    r.push(opt(e.fusion.and_then(|(_, alone)| alone)));
                }
                r
            })
            .collect();
        ResultSet {
            columns,
            rows,
            status: Some(self.status.clone()),
        }
    }
}
