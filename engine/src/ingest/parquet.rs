//! Hugging Face parquet datasets (a file or a folder of shards), read batch by batch so that
//! inline images bound memory, the split from the shard's name; each batch's rows come from
//! `arrow.rs`.

use std::path::{Path, PathBuf};

use mirante_query::options::ImportOptions;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::arrow::{ArrowPlan, Batches, plan};
use super::source::{Item, SPLIT_NAMES, Source, split_of};
use crate::error::{Error, Result};
use crate::fsio;

/// Rows per parquet batch: small enough to bound memory when images are inline.
const PARQUET_BATCH: usize = 256;

/// The split a parquet shard belongs to: `train-00000-of-00002.parquet`, `data/test/x.parquet`.
fn parquet_split(root: &Path, file: &Path) -> Option<String> {
    if let Some(s) = split_of(root, file) {
        return Some(s);
    }
    let rel = file.strip_prefix(root).ok()?;
    for c in rel.components() {
        let name = c.as_os_str().to_string_lossy().to_ascii_lowercase();
        let stem = name.split(['-', '.', '_']).next().unwrap_or("");
        if SPLIT_NAMES.contains(&stem) {
            return Some(stem.to_string());
        }
    }
    None
}

pub(super) fn parquet_source(
    root: &Path,
    files: Vec<PathBuf>,
    options: &ImportOptions,
) -> Result<Source> {
    let first = files
        .first()
        .ok_or_else(|| Error::source(root, "no parquet files"))?;
    let schema = ParquetRecordBatchReaderBuilder::try_new(fsio::open(first)?)
        .map_err(|e| Error::source(first, e.to_string()))?
        .schema()
        .clone();
    let plan = plan(&schema, first, options)?;
    let columns = plan.columns.clone();
    let shards: Vec<(PathBuf, Option<String>)> = files
        .into_iter()
        .map(|f| {
            let s = parquet_split(root, &f);
            (f, s)
        })
        .collect();
    let has_split = plan.split_column || shards.iter().any(|(_, s)| s.is_some());
    let wanted = options.split.clone();
    let shards: Vec<(PathBuf, Option<String>)> = shards
        .into_iter()
        .filter(|(_, s)| match (&wanted, s) {
            (Some(w), Some(s)) if !plan.split_column => w == s,
            _ => true,
        })
        .collect();
    let items = shards.into_iter().flat_map(move |(file, split)| {
        let plan = plan.clone();
        let wanted = wanted.clone();
        let assign = if has_split { None } else { wanted.clone() };
        shard(file, split.or(assign), plan).filter(move |item| match (item, &wanted) {
            (Ok(Item::Row(r)), Some(w)) => r.split.as_deref() == Some(w.as_str()),
            _ => true,
        })
    });
    Ok(Source {
        columns,
        items: Box::new(items),
    })
}

/// One shard's rows, batch by batch.
fn shard(
    file: PathBuf,
    split: Option<String>,
    plan: ArrowPlan,
) -> Batches<ParquetRecordBatchReader> {
    let reader = fsio::open(&file).and_then(|f| {
        ParquetRecordBatchReaderBuilder::try_new(f)
            .and_then(|b| b.with_batch_size(PARQUET_BATCH).build())
            .map_err(|e| Error::source(&file, e.to_string()))
    });
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    Batches::new((file, base), split, plan, reader)
}
