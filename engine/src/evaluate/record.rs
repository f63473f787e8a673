//! `mirante_evaluations`: one row per evaluated (model, direction), appended by every
//! `EVALUATE`, queryable with `SELECT`.

use std::time::SystemTime;

use mirante_storage::{ColumnDef, ColumnType, IndexSpec, NewRow, Schema, Value};

use crate::database::Database;
use crate::error::{Error, Result};
use crate::output::{EVALUATIONS, Evaluation};

/// The schema of `mirante_evaluations`.
fn evaluations_schema() -> Result<Schema> {
    let col = |n: &str, ty, nullable| ColumnDef::new(n, ty, nullable);
    Ok(Schema::new(vec![
        col("time", ColumnType::String, false),
        col("collection", ColumnType::String, false),
        col("version", ColumnType::I64, false),
        col("model", ColumnType::String, false),
        col("fingerprint", ColumnType::String, false),
        col("direction", ColumnType::String, false),
        col("filter", ColumnType::String, true),
        col("ranking", ColumnType::String, false),
        col("queries", ColumnType::I64, false),
        col("metrics", ColumnType::String, false),
    ])?)
}

/// Appends one row per (model, direction) to `mirante_evaluations`, creating it on first use.
pub(super) fn record(db: &Database, e: &Evaluation) -> Result<()> {
    let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let rows: Vec<NewRow> = e
        .models
        .iter()
        .flat_map(|m| {
            m.directions.iter().map(|d| {
                let metrics: serde_json::Map<String, serde_json::Value> = d
                    .values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.map_or(serde_json::Value::Null, Into::into)))
                    .collect();
                let text = |s: &str| Value::String(s.to_string());
                NewRow {
                    metadata: vec![
                        ("time".into(), text(&time)),
                        ("collection".into(), text(&e.collection)),
                        ("version".into(), Value::I64(e.version as i64)),
                        ("model".into(), text(&m.model)),
                        ("fingerprint".into(), text(&m.fingerprint)),
                        ("direction".into(), text(&d.direction.to_string())),
                        (
                            "filter".into(),
                            e.filter.as_deref().map_or(Value::Null, text),
                        ),
                        (
                            "ranking".into(),
                            text(
                                &e.index_depth
                                    .map_or("exact".into(), |d| format!("index top {d}")),
                            ),
                        ),
                        ("queries".into(), Value::I64(d.queries as i64)),
                        (
                            "metrics".into(),
                            text(&serde_json::Value::Object(metrics).to_string()),
                        ),
                    ],
                    ..Default::default()
                }
            })
        })
        .collect();
    let mut w = db.writer()?;
    let schema = evaluations_schema()?;
    match w.snapshot().collection(EVALUATIONS) {
        Ok(existing) if existing.schema != schema => {
            return Err(Error::Invalid(format!(
                "collection {EVALUATIONS} exists with another schema; drop or rename it"
            )));
        }
        Ok(_) => {}
        Err(_) => {
            w.create_collection(EVALUATIONS, schema, IndexSpec::new("Flat"))?;
        }
    }
    w.append(EVALUATIONS, rows, &[])?;
    Ok(())
}
