//! The models of a database: `SHOW MODELS` (every model a collection embeds with, and every
//! registry model with its lineage), `DROP MODEL`, `EXPORT MODEL`.

use std::collections::BTreeMap;
use std::path::Path;

use mirante_query::OutputPath;

use crate::database::Database;
use crate::error::{Error, Result};
use crate::fsio;
use crate::output::{Cell, CellType, Column, Output, ResultSet};
use crate::registry::{Lineage, Registry};

/// A model's family from its checkpoint's config.json (`elip` for an ELIP mapper), without
/// loading the weights.
fn family(db: &Database, key: &str) -> Cell {
    let Ok(folder) = db.models.folder(key) else {
        return Cell::Null;
    };
    if folder.join(mirante_training::elip::CONFIG_FILE).is_file() {
        return Cell::Str("elip".into());
    }
    fsio::read_to_string(&folder.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| config["model_type"].as_str().map(str::to_string))
        .map_or(Cell::Null, Cell::Str)
}

/// The embedding width a registry model's config.json declares.
fn config_dim(folder: &Path) -> Option<i64> {
    let text = fsio::read_to_string(&folder.join("config.json")).ok()?;
    let c: serde_json::Value = serde_json::from_str(&text).ok()?;
    c["projection_dim"]
        .as_i64()
        .or_else(|| c["text_config"]["projection_size"].as_i64())
        .or_else(|| c["vision_config"]["hidden_size"].as_i64())
}

/// `base`, `trained_on`, `hyperparameters`, `best_validation` of a lineage.
fn lineage_cells(l: Option<&Lineage>) -> [Cell; 4] {
    let Some(l) = l else {
        return [Cell::Null, Cell::Null, Cell::Null, Cell::Null];
    };
    let hyperparameters = l
        .options
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    [
        Cell::Str(l.base.clone()),
        Cell::Str(format!(
            "{} version {}{} ({} rows)",
            l.collection,
            l.version,
            l.filter
                .as_ref()
                .map(|f| format!(" WHERE {f}"))
                .unwrap_or_default(),
            l.train_rows,
        )),
        Cell::Str(hyperparameters),
        l.best_validation.map_or(Cell::Null, |v| {
            Cell::Str(format!("{} {v:.4} (epoch {})", l.metric, l.best_epoch))
        }),
    ]
}

pub(super) fn show(db: &Database) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    /// Per model: its dimension, the collections with its embeddings, those where it is active.
    #[derive(Default)]
    struct Usage {
        dim: usize,
        collections: Vec<String>,
        active_in: Vec<String>,
    }
    let mut models: BTreeMap<(String, String), Usage> = BTreeMap::new();
    for c in snap.collections() {
        for s in &c.spaces {
            let e = models
                .entry((s.spec.model_id.clone(), s.spec.fingerprint.clone()))
                .or_default();
            e.dim = s.spec.dim;
            if !e.collections.contains(&c.name) {
                e.collections.push(c.name.clone());
            }
            let active = [c.active_image, c.active_text].contains(&Some(s.id));
            if active && !e.active_in.contains(&c.name) {
                e.active_in.push(c.name.clone());
            }
        }
    }
    let text = |n: &str| Column::new(n, CellType::Str, true);
    let mut out = ResultSet::new(vec![
        Column::new("model", CellType::Str, false),
        text("family"),
        Column::new("dim", CellType::Int, true),
        text("fingerprint"),
        Column::new("collections", CellType::StrList, false),
        Column::new("active_in", CellType::StrList, false),
        text("base"),
        text("trained_on"),
        text("hyperparameters"),
        text("best_validation"),
    ]);
    let registry = db.registry();
    let lineages = registry.list()?;
    let lineage_of = |key: &str| {
        let name = Registry::name_of(key)?;
        lineages.iter().find(|(n, _)| n == name).map(|(_, l)| l)
    };
    for ((model, fingerprint), usage) in &models {
        let mut row = vec![
            Cell::Str(model.clone()),
            family(db, model),
            Cell::Int(usage.dim as i64),
            Cell::Str(fingerprint.clone()),
            Cell::List(usage.collections.clone()),
            Cell::List(usage.active_in.clone()),
        ];
        row.extend(lineage_cells(lineage_of(model)));
        out.rows.push(row);
    }
    // Registry models no collection embeds with (fine-tuned but not used yet, ELIP mappers).
    for (name, l) in &lineages {
        let key = Registry::key(name);
        if models.keys().any(|(m, _)| *m == key) {
            continue;
        }
        let mut row = vec![
            Cell::Str(key.clone()),
            family(db, &key),
            config_dim(&registry.folder(name)).map_or(Cell::Null, Cell::Int),
            Cell::Null,
            Cell::List(Vec::new()),
            Cell::List(Vec::new()),
        ];
        row.extend(lineage_cells(Some(l)));
        out.rows.push(row);
    }
    Ok(out)
}

/// `DROP MODEL`: refused while a collection embeds with it.
pub(super) fn drop(db: &Database, name: &str) -> Result<Output> {
    let registry = db.registry();
    registry.existing(name)?;
    let key = Registry::key(name);
    // Held while the check runs and the folder goes, so no statement of another handle starts
    // using the model meanwhile.
    let writer = db.writer()?;
    let snap = writer.snapshot();
    for c in snap.collections() {
        for active in [c.active_image, c.active_text].into_iter().flatten() {
            if c.space(active)?.spec.model_id == key {
                return Err(Error::ModelInUse {
                    name: name.to_string(),
                    collection: c.name.clone(),
                });
            }
        }
    }
    registry.remove(name)?;
    Ok(Output::Status(format!("dropped model {name}")))
}

/// `EXPORT MODEL`: the checkpoint files (Hugging Face layout, lineage included) copied out.
pub(super) fn export(db: &Database, name: &str, folder: &OutputPath) -> Result<Output> {
    let to = Path::new(&folder.path);
    db.options.access.check_write(to, folder.overwrite)?;
    let files = db.registry().export(name, to, folder.overwrite)?;
    Ok(Output::Status(format!(
        "exported model {name} to {} ({files} files)",
        folder.path
    )))
}
