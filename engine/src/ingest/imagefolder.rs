//! The imagefolder convention of Hugging Face datasets.

use std::path::Path;

use mirante_query::options::ImportOptions;
use mirante_storage::{ColumnDef, ColumnType, Value};

use super::source::{
    IMAGE_EXTENSIONS, ImageRef, Item, Record, SPLIT_NAMES, Source, display_name, extension,
    files_with, split_of,
};
use super::table::{Table, apply_split, read_csv, read_jsonl, table_columns, table_items};
use crate::access::Access;
use crate::error::{Error, Result};

/// The imagefolder convention: `metadata.jsonl`/`metadata.csv` files (at the root or in split
/// folders) with a `file_name` column relative to them; without them every image is a row and
/// its folder name a `label`.
pub(super) fn imagefolder(root: &Path, options: &ImportOptions, access: &Access) -> Result<Source> {
    let mut metadata_files = Vec::new();
    for f in files_with(root, &["jsonl", "csv"])? {
        let name = display_name(&f);
        if name == "metadata.jsonl" || name == "metadata.csv" {
            metadata_files.push(f);
        }
    }
    if metadata_files.is_empty() {
        let images = files_with(root, &IMAGE_EXTENSIONS)?;
        if images.is_empty() {
            return Err(Error::source(
                root,
                "the folder holds no images, metadata.jsonl/metadata.csv or parquet files",
            ));
        }
        let labelled = images.iter().any(|p| label_of(root, p).is_some());
        let columns = if labelled {
            vec![ColumnDef::new("label", ColumnType::String, true)]
        } else {
            Vec::new()
        };
        let items: Vec<Item> = images
            .into_iter()
            .map(|p| {
                let metadata = if labelled {
                    vec![(
                        "label".to_string(),
                        label_of(root, &p).map_or(Value::Null, Value::String),
                    )]
                } else {
                    Vec::new()
                };
                Item::Row(Record {
                    location: p.strip_prefix(root).unwrap_or(&p).display().to_string(),
                    split: split_of(root, &p),
                    image: Some(ImageRef::Path(p)),
                    texts: Vec::new(),
                    metadata,
                    vectors: None,
                })
            })
            .collect();
        return Ok(Source {
            columns,
            items: Box::new(apply_split(items, options).into_iter().map(Ok)),
        });
    }
    let mut tables = Vec::new();
    let mut bad = Vec::new();
    for f in &metadata_files {
        access.check_read(f)?;
        let read = if extension(f) == "csv" {
            read_csv(f)?
        } else {
            read_jsonl(f)?
        };
        let rel = f.strip_prefix(root).unwrap_or(f).display().to_string();
        let relative = |loc: String| loc.replacen(&display_name(f), &rel, 1);
        let table = read
            .table
            .into_iter()
            .map(|(loc, row)| (relative(loc), row))
            .collect::<Table>();
        bad.extend(read.bad.into_iter().map(|item| match item {
            Item::Bad(mut failure) => {
                failure.location = relative(failure.location);
                Item::Bad(failure)
            }
            row => row,
        }));
        tables.push((f, table));
    }
    let all: Table = tables.iter().flat_map(|(_, t)| t.iter().cloned()).collect();
    let (present, columns) = table_columns(&all, options)?;
    let mut items = bad;
    for (f, table) in tables {
        let base = f.parent().unwrap_or(root);
        items.extend(table_items(
            base,
            table,
            split_of(root, f),
            options,
            &present,
            &columns,
        )?);
    }
    Ok(Source {
        columns,
        items: Box::new(apply_split(items, options).into_iter().map(Ok)),
    })
}

/// The class folder of an image (`root/[split/]label/x.jpg`).
fn label_of(root: &Path, image: &Path) -> Option<String> {
    let rel = image.strip_prefix(root).ok()?;
    let mut dirs: Vec<String> = rel
        .parent()?
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if dirs
        .first()
        .is_some_and(|d| SPLIT_NAMES.contains(&d.to_ascii_lowercase().as_str()))
    {
        dirs.remove(0);
    }
    dirs.last().cloned()
}
