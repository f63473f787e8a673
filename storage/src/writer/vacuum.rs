//! `VACUUM`: old manifests and the files no retained version references are removed, except
//! what live snapshots (of any process) still read, and `RESTORE VERSION`, which commits an older
//! version again.

use std::collections::{HashMap, HashSet};

use super::Writer;
use super::segment::BUILT_FILE_PREFIX;
use crate::crashpoint::crash_point;
use crate::error::{Error, Result};
use crate::fsio;
use crate::manifest::{self, VERSIONS_DIR};
use crate::pins;

/// Where `RESTORE VERSION` moves manifests that could not be read, for inspection.
pub(crate) const DAMAGED_DIR: &str = "damaged";

/// What a vacuum removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumReport {
    pub versions_removed: usize,
    pub files_removed: usize,
    pub bytes_freed: u64,
    /// Old versions kept because a live snapshot (of this process or another) reads them.
    pub versions_in_use: usize,
    /// Unpublished files of segment builders kept because they are younger than the grace
    /// period ([`super::WriterOptions::build_grace`]).
    pub builds_kept: usize,
}

impl Writer {
    /// Removes manifests older than the newest `keep_versions` and every file in `files/` that no
    /// remaining manifest references (including leftovers of failed commits, and of segment
    /// builds older than the grace period). Versions that a
    /// live snapshot has pinned (see [`crate::pins`]) are kept, with their files.
    pub fn vacuum(&mut self, keep_versions: usize) -> Result<VacuumReport> {
        self.check_writable()?;
        let root = self.db.path().to_path_buf();
        let versions = manifest::list_versions(&root)?;
        let keep_from = versions.len().saturating_sub(keep_versions.max(1));
        let in_use = pins::live_versions(&root)?;
        let (old, kept): (Vec<u64>, Vec<u64>) = versions
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, i < keep_from && !in_use.contains(&v)))
            .fold(
                (Vec::new(), Vec::new()),
                |(mut old, mut kept), (v, remove)| {
                    if remove {
                        old.push(v)
                    } else {
                        kept.push(v)
                    }
                    (old, kept)
                },
            );
        // Every manifest's files, read before any is removed: a snapshot that pins a version
        // while this vacuum runs keeps its files (below) even once its manifest is gone.
        let mut files_of: HashMap<u64, Vec<String>> = HashMap::new();
        for &v in &versions {
            match manifest::read(&root, v) {
                Ok(m) => {
                    files_of.insert(v, m.files().map(|f| f.name.clone()).collect());
                }
                // A retained version whose files are unknown would lose them.
                Err(e) if kept.contains(&v) => return Err(e),
                Err(_) => {}
            }
        }
        let mut report = VacuumReport {
            versions_in_use: versions[..keep_from]
                .iter()
                .filter(|v| in_use.contains(v))
                .count(),
            ..VacuumReport::default()
        };
        for &v in &old {
            fsio::remove_file(&manifest::manifest_path(&root, v))?;
            report.versions_removed += 1;
        }
        for name in fsio::list_dir(&root.join(VERSIONS_DIR))? {
            if name.starts_with(".tmp-") {
                fsio::remove_file(&root.join(VERSIONS_DIR).join(name))?;
            }
        }
        fsio::sync_dir(&root.join(VERSIONS_DIR))?;
        crash_point("storage::vacuum-manifests-removed");
        let readers_now = pins::live_versions(&root)?;
        let referenced: HashSet<&String> = self
            .manifest
            .files()
            .map(|f| &f.name)
            .chain(
                kept.iter()
                    .chain(readers_now.iter())
                    .filter_map(|v| files_of.get(v))
                    .flatten(),
            )
            .collect();
        let files = self.files_dir();
        let now = std::time::SystemTime::now();
        for name in fsio::list_dir(&files)? {
            if !referenced.contains(&name) {
                let path = files.join(&name);
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                // A segment builder's file may belong to a build still running elsewhere.
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if name.starts_with(BUILT_FILE_PREFIX) && age < self.options.build_grace {
                    report.builds_kept += 1;
                    continue;
                }
                report.bytes_freed += meta.len();
                fsio::remove_file(&path)?;
                report.files_removed += 1;
                crash_point("storage::vacuum-file-removed");
            }
        }
        fsio::sync_dir(&files)?;
        if let Some(remote) = self.db.inner.shared.remote.clone() {
            self.vacuum_remote(&remote, &kept, &referenced, &mut report)?;
        }
        Ok(report)
    }

    /// The same in the object store of a database that lives there: manifests older than the
    /// retained versions, and files none of them references once older than the grace period.
    /// Readers on other machines cannot pin versions, so the grace period (a week by default)
    /// is also what keeps their snapshots' files.
    fn vacuum_remote(
        &self,
        remote: &crate::remote::Remote,
        kept: &[u64],
        referenced: &HashSet<&String>,
        report: &mut VacuumReport,
    ) -> Result<()> {
        let oldest_kept = kept.first().copied().unwrap_or(self.manifest.version);
        for v in remote.versions()?.into_iter().filter(|&v| v < oldest_kept) {
            remote.delete(VERSIONS_DIR, &manifest::file_name(v))?;
        }
        let now = std::time::SystemTime::now();
        for (name, len, modified) in remote.files()? {
            if referenced.contains(&name) {
                continue;
            }
            if now.duration_since(modified).unwrap_or_default() < self.options.build_grace {
                report.builds_kept += 1;
                continue;
            }
            remote.delete(crate::manifest::FILES_DIR, &name)?;
            report.files_removed += 1;
            report.bytes_freed += len;
        }
        Ok(())
    }

    /// Commits the contents of retained version `version` as a new version: an undo of the
    /// commits after it, which stay readable by time travel until vacuumed. It is also how a
    /// user accepts the fallback when newer manifests are damaged: those are moved to
    /// `_versions/damaged/` (kept for inspection, never read again) before the commit.
    pub fn restore(&mut self, version: u64) -> Result<u64> {
        let root = self.db.path().to_path_buf();
        let target = match manifest::read(&root, version) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let versions = manifest::list_versions(&root)?;
                return Err(Error::NotFound {
                    kind: "version",
                    name: version.to_string(),
                    hint: format!(
                        "; retained versions are {}",
                        versions
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            other => other?,
        };
        let mut next = target;
        // Names and ids handed out after `version` are never handed out again: a file of a
        // later (or damaged) version may still be on disk.
        let highest_file = fsio::list_dir(&self.files_dir())?
            .iter()
            .filter_map(|n| n.strip_prefix('f')?.split('.').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        next.next_file_id = next
            .next_file_id
            .max(self.manifest.next_file_id)
            .max(highest_file + 1);
        next.next_segment_id = next.next_segment_id.max(self.manifest.next_segment_id);
        next.next_collection_uid = next
            .next_collection_uid
            .max(self.manifest.next_collection_uid);
        let current: HashMap<u64, u64> = self
            .manifest
            .collections
            .iter()
            .map(|c| (c.uid, c.next_row_id))
            .collect();
        for c in &mut next.collections {
            if let Some(&n) = current.get(&c.uid) {
                c.next_row_id = c.next_row_id.max(n);
            }
        }
        // Committed while the damaged manifests are still listed, so that the new version's
        // number is above theirs (never reused); they are moved aside once it is durable.
        let damaged = std::mem::take(&mut self.damaged);
        let restored = match self.commit(next, format!("restore version {version}")) {
            Ok(v) => v,
            Err(e) => {
                self.damaged = damaged;
                return Err(e);
            }
        };
        if !damaged.is_empty() {
            let aside = root.join(VERSIONS_DIR).join(DAMAGED_DIR);
            fsio::create_dir(&aside)?;
            for d in damaged {
                let from = manifest::manifest_path(&root, d.version);
                let to = aside.join(from.file_name().unwrap_or_default());
                std::fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
            }
            fsio::sync_dir(&aside)?;
            fsio::sync_dir(&root.join(VERSIONS_DIR))?;
            self.db.clear_damaged();
        }
        Ok(restored)
    }
}
