//! `VACUUM`: old manifests and the files no retained version references are removed.

use std::collections::HashSet;

use super::Writer;
use crate::error::Result;
use crate::fsio;
use crate::manifest::{self, VERSIONS_DIR};

/// What a vacuum removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumReport {
    pub versions_removed: usize,
    pub files_removed: usize,
    pub bytes_freed: u64,
}

impl Writer {
    /// Removes manifests older than the newest `keep_versions` and every file in `files/` that no
    /// remaining manifest references (including leftovers of failed commits).
    pub fn vacuum(&mut self, keep_versions: usize) -> Result<VacuumReport> {
        let root = self.db.path().to_path_buf();
        let versions = manifest::list_versions(&root)?;
        let keep_from = versions.len().saturating_sub(keep_versions.max(1));
        let (old, kept) = versions.split_at(keep_from);
        let mut referenced: HashSet<String> =
            self.manifest.files().map(|f| f.name.clone()).collect();
        for &v in kept {
            if let Ok(m) = manifest::read(&root, v) {
                referenced.extend(m.files().map(|f| f.name.clone()));
            }
        }
        let mut report = VacuumReport::default();
        for &v in old {
            fsio::remove_file(&manifest::manifest_path(&root, v))?;
            report.versions_removed += 1;
        }
        for name in fsio::list_dir(&root.join(VERSIONS_DIR))? {
            if name.starts_with(".tmp-") {
                fsio::remove_file(&root.join(VERSIONS_DIR).join(name))?;
            }
        }
        fsio::sync_dir(&root.join(VERSIONS_DIR))?;
        let files = self.files_dir();
        for name in fsio::list_dir(&files)? {
            if !referenced.contains(&name) {
                let path = files.join(&name);
                report.bytes_freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fsio::remove_file(&path)?;
                report.files_removed += 1;
            }
        }
        fsio::sync_dir(&files)?;
        Ok(report)
    }
}
