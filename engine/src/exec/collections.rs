//! Collections: `CREATE` / `DROP COLLECTION`, `SHOW COLLECTIONS`, `DESCRIBE`, `CREATE INDEX`,
//! `COMPACT` and `VACUUM`.

use mirante_query::ast::ColumnType as AstType;
use mirante_query::options::{CollectionOptions, ModelChoice};
use mirante_query::{ColumnPlan, ColumnRef};
use mirante_storage::{
    CollectionMeta, ColumnDef, ColumnType, IndexSpec, Modality, Schema, SpaceId,
};

use crate::catalog::columns_of;
use crate::database::{Database, ExecOptions};
use crate::error::Result;
use crate::models::DEFAULT_MODEL;
use crate::output::{Cell, CellType, Column, Output, ResultSet, plural};

pub(super) fn create(
    db: &Database,
    name: &str,
    exists: bool,
    columns: &[ColumnPlan],
    options: &CollectionOptions,
) -> Result<Output> {
    if exists {
        return Ok(Output::Status(format!("collection {name} already exists")));
    }
    let schema = Schema::new(
        columns
            .iter()
            .map(|c| {
                let ty = match c.ty {
                    AstType::String => ColumnType::String,
                    AstType::Int => ColumnType::I64,
                    AstType::Float => ColumnType::F64,
                    AstType::Bool => ColumnType::Bool,
                };
                ColumnDef::new(c.name.clone(), ty, c.nullable)
            })
            .collect(),
    )?;
    // Load the model first: a bad locator must not leave a half-made collection.
    let model = match &options.model {
        ModelChoice::Default => Some(db.models.load(DEFAULT_MODEL)?),
        ModelChoice::None => None,
        ModelChoice::Named(m) => Some(db.models.load(m)?),
    };
    let index = IndexSpec::new(options.index.clone());
    if let Some(m) = &model {
        index.validate(m.dim())?;
    }
    let mut w = db.writer()?;
    w.create_collection(name, schema, index)?;
    if let Some(m) = &model {
        for modality in [Modality::Image, Modality::Text] {
            w.add_space(name, m.space(modality), true)?;
        }
    }
    Ok(Output::Status(match model {
        Some(m) => format!(
            "created collection {name} with model {} ({}, dim {})",
            m.key,
            m.family(),
            m.dim()
        ),
        None => format!(
            "created collection {name} without a model (add one with EMBED {name} USING MODEL '...')"
        ),
    }))
}

pub(super) fn drop(db: &Database, name: &str, exists: bool) -> Result<Output> {
    if !exists {
        return Ok(Output::Status(format!("collection {name} does not exist")));
    }
    db.writer()?.drop_collection(name)?;
    Ok(Output::Status(format!("dropped collection {name}")))
}

pub(super) fn create_index(db: &Database, collection: &str, factory: &str) -> Result<Output> {
    let v = db
        .writer()?
        .set_index(collection, IndexSpec::new(factory.to_string()))?;
    Ok(Output::Status(format!(
        "indexed {collection} with '{factory}' (version {v})"
    )))
}

pub(super) fn compact(db: &Database, collection: &str, exec: &ExecOptions) -> Result<Output> {
    let r = db
        .writer()?
        .compact_until(collection, true, &|| exec.cancel.is_cancelled())?;
    Ok(Output::Status(format!(
        "compacted {collection}: {} segments -> {}, {} deleted rows dropped",
        r.segments_before, r.segments_after, r.rows_dropped
    )))
}

pub(super) fn vacuum(db: &Database, keep: usize) -> Result<Output> {
    let mut writer = db.writer()?;
    let r = writer.vacuum(keep)?;
    // Under the writer lock, like every other change to the database's folder.
    let models = match db.registry().sweep()? {
        0 => String::new(),
        n => format!(
            "; removed {n} model folder{} that interrupted training left",
            plural(n)
        ),
    };
    std::mem::drop(writer);
    let in_use = match r.versions_in_use {
        0 => String::new(),
        n => format!(
            "; {n} older version{} kept while open snapshots read {}",
            plural(n),
            if n == 1 { "it" } else { "them" }
        ),
    };
    Ok(Output::Status(format!(
        "vacuum kept {keep} version{}: removed {} versions and {} files ({} bytes){models}{in_use}",
        plural(keep),
        r.versions_removed,
        r.files_removed,
        r.bytes_freed
    )))
}

pub(super) fn restore(db: &Database, version: u64) -> Result<Output> {
    let new = db.writer_for_restore()?.restore(version)?;
    Ok(Output::Status(format!(
        "restored version {version} as version {new}"
    )))
}

fn model_of_space(c: &CollectionMeta, space: Option<SpaceId>) -> Cell {
    space
        .and_then(|s| c.space(s).ok())
        .map_or(Cell::Null, |s| Cell::Str(s.spec.model_id.clone()))
}

pub(super) fn show(db: &Database) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    let mut out = ResultSet::new(vec![
        Column::new("name", CellType::Str, false),
        Column::new("rows", CellType::Int, false),
        Column::new("captions", CellType::Int, false),
        Column::new("segments", CellType::Int, false),
        Column::new("model", CellType::Str, true),
        Column::new("index", CellType::Str, false),
    ]);
    for c in snap.collections() {
        let captions: u64 = c.segments.iter().map(|s| s.texts).sum();
        out.rows.push(vec![
            Cell::Str(c.name.clone()),
            Cell::Int(c.live_rows() as i64),
            Cell::Int(captions as i64),
            Cell::Int(c.segments.len() as i64),
            model_of_space(c, c.active_image.or(c.active_text)),
            Cell::Str(c.index.factory.clone()),
        ]);
    }
    Ok(out)
}

pub(super) fn describe(db: &Database, name: &str) -> Result<ResultSet> {
    let snap = db.snapshot()?;
    let c = snap.collection(name)?;
    let mut out = ResultSet::new(vec![
        Column::new("column", CellType::Str, false),
        Column::new("type", CellType::Str, false),
        Column::new("nullable", CellType::Bool, false),
    ]);
    let kinds = [
        "i64",
        "string (image source)",
        "list of strings (captions)",
        "string",
    ];
    for (info, builtin) in columns_of(&c.schema)
        .iter()
        .zip(kinds.iter().map(Some).chain(std::iter::repeat(None)))
    {
        let ty = match (builtin, info.column) {
            (Some(k), _) => k.to_string(),
            (None, ColumnRef::Meta(i)) => c.schema.metadata[i].ty.to_string(),
            (None, _) => String::new(),
        };
        out.rows.push(vec![
            Cell::Str(info.name.clone()),
            Cell::Str(ty),
            Cell::Bool(info.nullable),
        ]);
    }
    let spaces: Vec<String> = c
        .spaces
        .iter()
        .map(|s| {
            let active = [c.active_image, c.active_text].contains(&Some(s.id));
            format!(
                "{} {} (dim {}{})",
                s.spec.modality,
                s.spec.model_id,
                s.spec.dim,
                if active { ", active" } else { "" }
            )
        })
        .collect();
    out.status = Some(format!(
        "collection {name}: {} rows in {} segments, index '{}'; embedding spaces: {}",
        c.live_rows(),
        c.segments.len(),
        c.index.factory,
        if spaces.is_empty() {
            "none".to_string()
        } else {
            spaces.join("; ")
        }
    ));
    Ok(out)
}
