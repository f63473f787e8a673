//! Import sources: what `IMPORT` reads (a folder in the Hugging Face imagefolder convention, a
//! CSV or JSONL file naming images, or a Hugging Face parquet dataset: a file, a folder of
//! shards, or `hf://datasets/...` in the hub cache). Each source yields [`Item`]s lazily (image
//! bytes are read when the loader gets to them) and declares its metadata columns up front,
//! with types inferred over the whole table for text formats.

use std::path::{Path, PathBuf};

use mirante_query::options::ImportOptions;
use mirante_storage::{ColumnDef, Value};

use super::imagefolder::imagefolder;
use super::parquet::parquet_source;
use super::table::{read_csv, read_jsonl, table_source};
use crate::error::{Error, Result, RowFailure};
use crate::fsio;

/// Image file extensions an imagefolder import picks up.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];
/// Folder names that are splits.
pub(super) const SPLIT_NAMES: [&str; 6] = ["train", "test", "validation", "valid", "val", "dev"];

/// A row's precomputed vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Precomputed {
    pub image: Vec<f32>,
    /// One per caption, in caption order.
    pub texts: Vec<Vec<f32>>,
}

/// Where a row's image comes from.
#[derive(Debug, Clone)]
pub enum ImageRef {
    Path(PathBuf),
    Bytes { name: String, bytes: Vec<u8> },
}

impl ImageRef {
    /// The path or URI shown for the image.
    pub fn name(&self) -> String {
        match self {
            // Absolute, so the stored source stays meaningful from any working directory.
            ImageRef::Path(p) => std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            ImageRef::Bytes { name, .. } => name.clone(),
        }
    }
}

/// A row read from a source.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it is in the source, for error messages.
    pub location: String,
    pub image: ImageRef,
    pub texts: Vec<String>,
    pub split: Option<String>,
    pub metadata: Vec<(String, Value)>,
    /// Present when the import names embedding columns.
    pub vectors: Option<Precomputed>,
}

/// A row, or why it cannot be imported.
#[derive(Debug)]
pub enum Item {
    Row(Record),
    Bad(RowFailure),
}

/// An opened source.
pub struct Source {
    /// Metadata columns (all nullable) the rows carry.
    pub columns: Vec<ColumnDef>,
    pub items: Box<dyn Iterator<Item = Result<Item>> + Send>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// Opens `source` (see the module docs for what it may be).
pub fn open(source: &str, options: &ImportOptions) -> Result<Source> {
    let path = match source.strip_prefix("hf://datasets/") {
        Some(id) => hub_dataset(id)?,
        None => PathBuf::from(source),
    };
    let meta = std::path::Path::metadata(&path).map_err(|e| {
        Error::source(
            &path,
            format!(
                "{e}; expected a folder, a .csv/.jsonl/.parquet file or hf://datasets/<org>/<name>"
            ),
        )
    })?;
    let source = if meta.is_dir() {
        let parquet = files_with(&path, &["parquet"])?;
        if !parquet.is_empty() && files_with(&path, &IMAGE_EXTENSIONS)?.is_empty() {
            parquet_source(&path, parquet, options)?
        } else {
            imagefolder(&path, options)?
        }
    } else {
        match extension(&path).as_str() {
            "csv" | "tsv" => table_source(&path, read_csv(&path)?, None, options)?,
            "jsonl" | "json" | "ndjson" => table_source(&path, read_jsonl(&path)?, None, options)?,
            "parquet" => parquet_source(
                path.parent().unwrap_or(Path::new(".")),
                vec![path.clone()],
                options,
            )?,
            other => {
                return Err(Error::source(
                    &path,
                    format!(
                        "unknown file type '.{other}'; expected .csv, .jsonl or .parquet, or a folder"
                    ),
                ));
            }
        }
    };
    Ok(match options.limit {
        Some(n) => Source {
            columns: source.columns,
            items: Box::new(source.items.take(n)),
        },
        None => source,
    })
}

pub(super) fn extension(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The snapshot folder of a dataset in the Hugging Face hub cache: `<id>[@<revision>]`.
fn hub_dataset(id: &str) -> Result<PathBuf> {
    let (id, revision) = id.split_once('@').unwrap_or((id, "main"));
    let repo =
        mirante_training::hub_cache_dir().join(format!("datasets--{}", id.replace('/', "--")));
    let by_commit = repo.join("snapshots").join(revision);
    if by_commit.is_dir() {
        return Ok(by_commit);
    }
    let refs = repo.join("refs").join(revision);
    let commit = fsio::read_to_string(&refs).map_err(|e| {
        Error::source(
            &repo,
            format!(
                "dataset {id} (revision {revision}) is not in the hub cache ({e}); download it \
                 with `huggingface-cli download --repo-type dataset {id}` where the network allows"
            ),
        )
    })?;
    Ok(repo.join("snapshots").join(commit.trim()))
}

/// Files under `root` (recursively, sorted) with one of `extensions`.
pub(super) fn files_with(root: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for path in fsio::list_dir(&dir)? {
            let name = path.file_name().unwrap_or_default();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if extensions.contains(&extension(&path).as_str()) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The split named by the first directory of `path` below `root`, if it is a split name.
pub(super) fn split_of(root: &Path, path: &Path) -> Option<String> {
    let first = path.strip_prefix(root).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.to_ascii_lowercase();
    SPLIT_NAMES.contains(&name.as_str()).then_some(name)
}


pub(super) fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirante_storage::ColumnType;

    #[test]
    fn csv_types_are_inferred_over_all_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pairs.csv");
        fsio::write(
            &p,
            "file_name,text,year,price,flag,note\n\
             a.jpg,first,1890,1,true,x\n\
             b.jpg,\"[\"\"two\"\", \"\"captions\"\"]\",,2.5,false,12\n",
        )
        .unwrap();
        let src = open(p.to_str().unwrap(), &ImportOptions::default()).unwrap();
        let types: Vec<(String, ColumnType)> =
            src.columns.iter().map(|c| (c.name.clone(), c.ty)).collect();
        assert_eq!(
            types,
            vec![
                ("year".into(), ColumnType::I64),
                ("price".into(), ColumnType::F64),
                ("flag".into(), ColumnType::Bool),
                ("note".into(), ColumnType::String),
            ]
        );
        let rows: Vec<Record> = src
            .items
            .map(|i| match i.unwrap() {
                Item::Row(r) => r,
                Item::Bad(b) => panic!("{b}"),
            })
            .collect();
        assert_eq!(rows[1].texts, vec!["two", "captions"]);
        assert_eq!(rows[1].metadata[0].1, Value::Null);
        assert_eq!(rows[0].metadata[1].1, Value::F64(1.0));
        assert_eq!(rows[1].metadata[3].1, Value::String("12".into()));
    }

    #[test]
    fn imagefolder_labels_and_splits() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["train/cat/1.jpg", "train/dog/2.png", "test/cat/3.jpg"] {
            let f = dir.path().join(p);
            fsio::create_dir_all(f.parent().unwrap()).unwrap();
            fsio::write(&f, b"x").unwrap();
        }
        let opts = ImportOptions {
            split: Some("train".into()),
            ..Default::default()
        };
        let src = open(dir.path().to_str().unwrap(), &opts).unwrap();
        let rows: Vec<(String, Option<String>)> = src
            .items
            .map(|i| match i.unwrap() {
                Item::Row(r) => (format!("{:?}", r.metadata[0].1), r.split),
                Item::Bad(b) => panic!("{b}"),
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("String(\"cat\")".into(), Some("train".into())),
                ("String(\"dog\")".into(), Some("train".into()))
            ]
        );
    }

    #[test]
    fn bad_rows_are_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        fsio::write(
            &p,
            "{\"file_name\": \"a.jpg\", \"text\": \"ok\"}\n{\"text\": \"no image\"}\n{\"file_name\": \"c.jpg\", \"text\": 3}\n",
        )
        .unwrap();
        let src = open(p.to_str().unwrap(), &ImportOptions::default()).unwrap();
        let bad: Vec<String> = src
            .items
            .filter_map(|i| match i.unwrap() {
                Item::Bad(b) => Some(b.to_string()),
                Item::Row(_) => None,
            })
            .collect();
        assert_eq!(bad.len(), 2);
        assert_eq!(
            bad[0],
            "m.jsonl line 2: missing value in image column 'file_name'"
        );
        assert!(
            bad[1].contains("expected a string or a list of strings"),
            "{}",
            bad[1]
        );
    }
}

