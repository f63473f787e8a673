//! The model registry of a database: `<database>/models/<name>/`, one folder per model trained
//! in the database (`FINETUNE`: a Hugging Face checkpoint; `TRAIN ELIP`: a mapper), each with
//! its [`Lineage`] in `mirante_model.json`. Collections refer to registry models by the
//! database-relative key `registry:<name>`, so a database can be moved or copied with its
//! models; [`migrate`] rewrites the absolute paths older releases stored.
//!
//! Installs are atomic: a model is written into `.partial-<name>`, every file and the folder
//! are fsynced, the folder is renamed to `<name>` and the registry folder fsynced, so a crash
//! leaves either no model or a whole one. While it trains, the install holds an exclusive
//! `flock` on `.partial-<name>.lock`: a second install under that name is refused, and
//! [`Registry::sweep`] (run by `VACUUM`) removes only partial folders nobody holds, the ones
//! killed runs left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsio;
use mirante_storage::crashpoint::crash_point;

/// The registry's folder inside a database.
pub const REGISTRY_DIR: &str = "models";
/// The lineage file of a registry model.
pub const LINEAGE_FILE: &str = "mirante_model.json";
/// How collections and lineages name a registry model: `registry:<name>`.
pub const KEY_PREFIX: &str = "registry:";
/// The lineage format this release writes: 2 names registry models by key; 1 (files without a
/// `lineage_format`) stored absolute paths.
pub const LINEAGE_FORMAT: u32 = 2;
const PARTIAL_PREFIX: &str = ".partial-";
const LOCK_SUFFIX: &str = ".lock";

/// The lock file of partial folder `partial`.
fn lock_path(partial: &Path) -> PathBuf {
    let mut name = partial.as_os_str().to_owned();
    name.push(LOCK_SUFFIX);
    PathBuf::from(name)
}

/// Where a registry model came from and how it was trained (`mirante_model.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    #[serde(default = "first_format")]
    pub lineage_format: u32,
    pub name: String,
    /// `clip`, `siglip`, or `elip` for a re-ranker.
    pub family: String,
    /// The model it started from (the backbone of an ELIP model): a model key.
    pub base: String,
    pub base_fingerprint: String,
    /// The collection and version it was trained on, and the rows (`WHERE`, `VALIDATE WHERE`).
    pub collection: String,
    pub version: u64,
    pub filter: Option<String>,
    pub validate: Option<String>,
    pub created: String,
    pub train_rows: usize,
    pub train_captions: usize,
    pub hard_negative_pairs: Option<usize>,
    /// `index` or `exact`, when hard negatives were mined.
    pub hard_negative_mining: Option<String>,
    pub text_negative_captions: Option<usize>,
    pub validation_rows: Option<usize>,
    /// The `WITH` options as written.
    pub options: BTreeMap<String, String>,
    pub metric: String,
    /// 0 when no epoch beat the starting point.
    pub best_epoch: usize,
    pub best_validation: Option<f64>,
    pub stopped_early: bool,
    pub precision: String,
    pub epochs: Vec<EpochRecord>,
    /// `FINETUNE ... hard_negatives = 'epoch'`: pairs found before each later epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_negative_pairs_remined: Option<Vec<usize>>,
    /// ELIP: first-stage results re-ranked per validation caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_top: Option<usize>,
    /// ELIP: the first stage's validation metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_validation: Option<f64>,
    /// ELIP: the weight of its score against the first stage's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<f64>,
}

fn first_format() -> u32 {
    1
}

/// One epoch of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub validation: Option<f64>,
    pub samples_per_second: f64,
}

/// The registry of one database.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    /// The registry of the database at `database`.
    pub fn new(database: &Path) -> Self {
        Registry {
            root: database.join(REGISTRY_DIR),
        }
    }

    /// The key collections store for model `name`.
    pub fn key(name: &str) -> String {
        format!("{KEY_PREFIX}{name}")
    }

    /// The model name of a registry key.
    pub fn name_of(key: &str) -> Option<&str> {
        key.strip_prefix(KEY_PREFIX)
    }

    /// Names a registry model may have: they become folder names.
    pub fn check_name(name: &str) -> Result<()> {
        let ok = !name.is_empty()
            && name.len() <= 100
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "model name '{name}' must be 1-100 letters, digits, '-', '_' or '.', not \
                 starting with '.'"
            )))
        }
    }

    /// The folder of model `name` (which may not exist).
    pub fn folder(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Whether the registry holds model `name`.
    pub fn contains(&self, name: &str) -> bool {
        Self::check_name(name).is_ok() && self.folder(name).join(LINEAGE_FILE).is_file()
    }

    /// The folder of model `name`, which must exist.
    pub fn existing(&self, name: &str) -> Result<PathBuf> {
        Self::check_name(name)?;
        if !self.contains(name) {
            return Err(Error::UnknownModel {
                name: name.to_string(),
                hint: self.hint(name),
            });
        }
        Ok(self.folder(name))
    }

    /// "; did you mean 'x'?" or the registry's names, for unknown-model errors.
    fn hint(&self, name: &str) -> String {
        let names = self.names().unwrap_or_default();
        match mirante_query::closest(name, names.iter().map(String::as_str)) {
            Some(c) => format!("; did you mean '{c}'?"),
            None if names.is_empty() => " (it holds no models; SHOW MODELS lists them)".into(),
            None => format!("; it holds: {}", names.join(", ")),
        }
    }

    /// The names of the registry's models, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        if !self.root.is_dir() {
            return Ok(Vec::new());
        }
        Ok(fsio::list_dir(&self.root)?
            .into_iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .filter(|n| self.contains(n))
            .collect())
    }

    /// The lineage of model `name`.
    pub fn lineage(&self, name: &str) -> Result<Lineage> {
        read_lineage(&self.existing(name)?.join(LINEAGE_FILE))
    }

    /// Every model with its lineage, by name.
    pub fn list(&self) -> Result<Vec<(String, Lineage)>> {
        self.names()?
            .into_iter()
            .map(|n| {
                let l = self.lineage(&n)?;
                Ok((n, l))
            })
            .collect()
    }

    /// Refuses `name` for a new model: not a valid name, or taken.
    pub fn check_new(&self, name: &str) -> Result<()> {
        Self::check_name(name)?;
        if self.contains(name) || self.folder(name).exists() {
            return Err(Error::ModelExists {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Starts installing model `name`, which must not exist: the returned [`Install`]'s folder
    /// receives the files, [`Install::commit`] publishes them.
    pub fn install(&self, name: &str) -> Result<Install> {
        self.check_new(name)?;
        fsio::create_dir_all(&self.root)?;
        let partial = self.root.join(format!("{PARTIAL_PREFIX}{name}"));
        let lock = lock_path(&partial);
        let lock = match fsio::try_lock(&lock)? {
            Some(file) => file,
            None => {
                return Err(Error::ModelBeingTrained {
                    name: name.to_string(),
                });
            }
        };
        if partial.exists() {
            // Left by a crashed or cancelled run.
            fsio::remove_dir_all(&partial)?;
        }
        fsio::create_dir_all(&partial)?;
        Ok(Install {
            partial,
            target: self.folder(name),
            root: self.root.clone(),
            committed: false,
            _lock: lock,
        })
    }

    /// Removes the partial folders (and their lock files) of installs that no live statement
    /// holds: what runs killed in the middle of training left. Returns how many folders.
    pub fn sweep(&self) -> Result<usize> {
        if !self.root.is_dir() {
            return Ok(0);
        }
        let partials: std::collections::BTreeSet<String> = fsio::list_dir(&self.root)?
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .filter(|n| n.starts_with(PARTIAL_PREFIX))
            .map(|n| n.strip_suffix(LOCK_SUFFIX).unwrap_or(n).to_string())
            .collect();
        let mut removed = 0;
        for name in partials {
            let path = self.root.join(name);
            let lock = lock_path(&path);
            // Held: a statement is writing this model now.
            let Some(_held) = fsio::try_lock(&lock)? else {
                continue;
            };
            // The folder goes before the lock file: an install that opens the lock file after
            // its unlink creates a new one and finds no folder to lose.
            if path.is_dir() {
                fsio::remove_dir_all(&path)?;
                removed += 1;
            }
            fsio::remove_file(&lock)?;
        }
        if removed > 0 {
            fsio::sync_dir(&self.root)?;
        }
        Ok(removed)
    }

    /// Removes model `name` (the caller checks that no collection uses it).
    pub fn remove(&self, name: &str) -> Result<()> {
        let folder = self.existing(name)?;
        // Renamed out of the way first, so a crash never leaves a half-deleted model under
        // its name.
        let doomed = self.root.join(format!("{PARTIAL_PREFIX}{name}"));
        if doomed.exists() {
            fsio::remove_dir_all(&doomed)?;
        }
        fsio::rename(&folder, &doomed)?;
        fsio::sync_dir(&self.root)?;
        fsio::remove_dir_all(&doomed)
    }

    /// Copies model `name`'s files (lineage included) into folder `to`; returns how many.
    /// Files already there are replaced only with `overwrite`, and never through a symbolic
    /// link.
    pub fn export(&self, name: &str, to: &Path, overwrite: bool) -> Result<usize> {
        let from = self.existing(name)?;
        fsio::create_dir_all(to)?;
        let mut files = 0;
        for path in fsio::list_dir(&from)? {
            if let Some(file) = path.file_name() {
                let mut out = crate::access::create_file(&to.join(file), overwrite)?;
                let mut input = fsio::open(&path)?;
                std::io::copy(&mut input, &mut out)
                    .and_then(|_| out.sync_all())
                    .map_err(|e| Error::Io {
                        path: to.join(file),
                        source: e,
                    })?;
                files += 1;
            }
        }
        Ok(files)
    }
}

fn read_lineage(path: &Path) -> Result<Lineage> {
    let text = fsio::read_to_string(path)?;
    let lineage: Lineage = serde_json::from_str(&text).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        detail: format!("not a model lineage: {e}"),
    })?;
    if lineage.lineage_format > LINEAGE_FORMAT {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "lineage format {} was written by a newer Mirante (this one reads up to {})",
                lineage.lineage_format, LINEAGE_FORMAT
            ),
        });
    }
    Ok(lineage)
}

/// Replaces a lineage file atomically (temporary file, fsync, rename, fsync of the folder).
fn write_lineage(folder: &Path, lineage: &Lineage) -> Result<()> {
    let text = serde_json::to_string_pretty(lineage)
        .map_err(|e| Error::Internal(format!("lineage does not serialise: {e}")))?;
    let tmp = folder.join(format!(".{LINEAGE_FILE}.tmp"));
    fsio::write_durable(&tmp, text)?;
    fsio::rename(&tmp, &folder.join(LINEAGE_FILE))?;
    fsio::sync_dir(folder)
}

/// A registry model being written. Dropped without [`Install::commit`] (an error, a
/// cancellation), it removes its partial folder.
#[derive(Debug)]
pub struct Install {
    partial: PathBuf,
    target: PathBuf,
    root: PathBuf,
    committed: bool,
    /// Held until the install is dropped (see the module documentation).
    _lock: std::fs::File,
}

impl Install {
    /// The folder the model's files go into.
    pub fn folder(&self) -> &Path {
        &self.partial
    }

    /// Writes the lineage, makes every file durable and publishes the model under its name.
    pub fn commit(mut self, lineage: &Lineage) -> Result<()> {
        let mut lineage = lineage.clone();
        lineage.lineage_format = LINEAGE_FORMAT;
        write_lineage(&self.partial, &lineage)?;
        for path in fsio::list_dir(&self.partial)? {
            if path.is_file() {
                fsio::sync_file(&path)?;
            }
        }
        fsio::sync_dir(&self.partial)?;
        crash_point("engine::model-synced");
        fsio::rename(&self.partial, &self.target)?;
        crash_point("engine::model-renamed");
        fsio::sync_dir(&self.root)?;
        self.committed = true;
        // Still locked, so no sweep is racing for it.
        fsio::remove_file(&lock_path(&self.partial))?;
        Ok(())
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover is also removed by the next install under this name, or
            // by VACUUM's sweep.
            let _ = fsio::remove_dir_all(&self.partial);
            let _ = fsio::remove_file(&lock_path(&self.partial));
        }
    }
}

/// The registry model an absolute path stored by an older release stands for: a folder
/// `.../models/<name>` whose name this registry holds with the same weights (`fingerprint`).
/// The path may point into this database (before a move) or into the one it was copied from.
pub(crate) fn legacy_name(
    registry: &Registry,
    model_id: &str,
    fingerprint: &str,
) -> Option<String> {
    let path = Path::new(model_id);
    if !path.is_absolute() || path.parent()?.file_name()? != REGISTRY_DIR {
        return None;
    }
    let name = path.file_name()?.to_str()?;
    if !registry.contains(name) {
        return None;
    }
    let ours = registry.folder(name);
    let matches = if ours.join(mirante_training::elip::CONFIG_FILE).is_file() {
        // An ELIP mapper is never an embedding space; only lineages name it, by path.
        true
    } else {
        mirante_training::checkpoint_fingerprint(&ours).ok()? == fingerprint
    };
    matches.then(|| name.to_string())
}

/// Rewrites what older releases stored as absolute paths of registry models (embedding spaces
/// of every collection, and lineages' `base`) to `registry:<name>` keys, so that a moved or
/// copied database uses its own models. Needs the writer; returns how many references changed.
pub(crate) fn migrate(store: &mirante_storage::Database, registry: &Registry) -> Result<usize> {
    let snap = store.snapshot()?;
    let mut renames: Vec<(String, String)> = Vec::new();
    for c in snap.collections() {
        for s in &c.spaces {
            if let Some(name) = legacy_name(registry, &s.spec.model_id, &s.spec.fingerprint) {
                let pair = (s.spec.model_id.clone(), Registry::key(&name));
                if !renames.contains(&pair) {
                    renames.push(pair);
                }
            }
        }
    }
    let mut lineages = Vec::new();
    for name in registry.names()? {
        // A damaged lineage does not keep the database from opening: it is reported (as
        // `Error::Corrupt`) by the statements that read that model.
        let Ok(lineage) = registry.lineage(&name) else {
            continue;
        };
        if let Some(base) = legacy_name(registry, &lineage.base, &lineage.base_fingerprint) {
            lineages.push((name, lineage, base));
        }
    }
    if renames.is_empty() && lineages.is_empty() {
        return Ok(0);
    }
    // Another process writing, a database opened read-only, or a damaged newer version that
    // refuses writes: the next open that can write migrates. Until then, references keep their
    // old paths (a moved database reports its registry models missing, as older releases did).
    let Ok(mut writer) = store.writer() else {
        return Ok(0);
    };
    if writer.check_writable().is_err() {
        return Ok(0);
    }
    let changed = renames.len() + lineages.len();
    for (name, mut lineage, base) in lineages {
        lineage.base = Registry::key(&base);
        lineage.lineage_format = LINEAGE_FORMAT;
        write_lineage(&registry.folder(&name), &lineage)?;
    }
    if !renames.is_empty() {
        writer.rename_models(&renames)?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_folder_names_only_when_safe() {
        for ok in ["ft", "clip-art_v2.1"] {
            Registry::check_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(101)] {
            assert!(Registry::check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(Registry::name_of(&Registry::key("ft")), Some("ft"));
        assert_eq!(Registry::name_of("/abs/models/ft"), None);
    }

    #[test]
    fn an_install_is_invisible_until_committed_and_cleaned_up_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new(dir.path());
        let install = r.install("m").unwrap();
        fsio::write(&install.folder().join("config.json"), "{}").unwrap();
        assert!(!r.contains("m") && r.names().unwrap().is_empty());
        drop(install);
        assert!(!dir.path().join(REGISTRY_DIR).join(".partial-m").exists());

        let install = r.install("m").unwrap();
        fsio::write(&install.folder().join("config.json"), "{}").unwrap();
        let lineage: Lineage = serde_json::from_value(serde_json::json!({
            "name": "m", "family": "clip", "base": "b", "base_fingerprint": "f",
            "collection": "c", "version": 3, "filter": null, "validate": null,
            "created": "now", "train_rows": 2, "train_captions": 2,
            "hard_negative_pairs": null, "hard_negative_mining": null,
            "text_negative_captions": null, "validation_rows": null, "options": {},
            "metric": "recall@1", "best_epoch": 1, "best_validation": null,
            "stopped_early": false, "precision": "fp32", "epochs": []
        }))
        .unwrap();
        assert_eq!(
            lineage.lineage_format, 1,
            "files without a format are format 1"
        );
        install.commit(&lineage).unwrap();
        assert_eq!(r.names().unwrap(), ["m"]);
        let left: Vec<_> = fsio::list_dir(&dir.path().join(REGISTRY_DIR)).unwrap();
        assert_eq!(
            left,
            [r.folder("m")],
            "no lock file or partial folder is left"
        );
        assert_eq!(r.lineage("m").unwrap().lineage_format, LINEAGE_FORMAT);
        assert!(matches!(r.install("m"), Err(Error::ModelExists { .. })));
        let out = dir.path().join("out");
        assert_eq!(r.export("m", &out, false).unwrap(), 2);
        r.remove("m").unwrap();
        assert!(matches!(r.lineage("m"), Err(Error::UnknownModel { .. })));
    }

    #[test]
    fn a_held_install_is_exclusive_and_kept_by_sweeps_an_abandoned_one_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new(dir.path());
        let live = r.install("live").unwrap();
        fsio::write(&live.folder().join("weights"), "w").unwrap();
        assert!(matches!(
            r.install("live"),
            Err(Error::ModelBeingTrained { .. })
        ));
        // What a killed run leaves: a partial folder with files, its lock file unheld, and a
        // lock file whose folder was never made.
        let root = dir.path().join(REGISTRY_DIR);
        fsio::create_dir_all(&root.join(".partial-dead")).unwrap();
        fsio::write(&root.join(".partial-dead").join("weights"), "w").unwrap();
        fsio::write(&root.join(".partial-dead.lock"), "").unwrap();
        fsio::write(&root.join(".partial-early.lock"), "").unwrap();
        assert_eq!(r.sweep().unwrap(), 1);
        let mut left: Vec<_> = fsio::list_dir(&root).unwrap();
        left.sort();
        assert_eq!(
            left,
            [root.join(".partial-live"), root.join(".partial-live.lock")]
        );
        assert!(
            live.folder().join("weights").exists(),
            "the live install is untouched"
        );
        drop(live);
        assert!(fsio::list_dir(&root).unwrap().is_empty());
        assert_eq!(r.sweep().unwrap(), 0);
    }

    #[test]
    fn a_damaged_lineage_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new(dir.path());
        let folder = r.folder("m");
        fsio::create_dir_all(&folder).unwrap();
        fsio::write(&folder.join(LINEAGE_FILE), "{\"name\": 3}").unwrap();
        let e = r.lineage("m").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::Data);
    }
}
