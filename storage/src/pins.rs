//! Reader pins: how a snapshot keeps `VACUUM` (in this process or another) from removing the
//! manifest and files it still reads.
//!
//! Each pinned version is a file `_readers/<version>-<owner>.pin` that its process holds a
//! shared `flock` on for as long as some snapshot of that version lives. A vacuum keeps every
//! version whose pin file is locked, and removes pin files nobody locks (left by a process
//! that died), so a crashed reader never blocks space reclamation.
//!
//! The protocol against races: a reader publishes its pin *before* it reads the manifest, and
//! retries when the manifest is gone; vacuum reads the pins once to choose the manifests it
//! removes and again, after removing them, to choose the files it removes. A reader whose
//! manifest read succeeded therefore published its pin before the second read, and keeps its
//! files. Pin files are created under a temporary name, locked, and then renamed, so a pin is
//! never visible unlocked.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};
use crate::fsio;

pub(crate) const READERS_DIR: &str = "_readers";
const SUFFIX: &str = ".pin";
const TMP_PREFIX: &str = ".tmp-";

/// One pinned version; the pin file goes away when the last snapshot holding it drops.
#[derive(Debug)]
pub(crate) struct Pin {
    /// `None` when the pin could not be written (a read-only database directory, where no
    /// vacuum can run through this file system either).
    file: Option<(PathBuf, File)>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some((path, _)) = &self.file {
            // Unlink before the descriptor (and its lock) closes, so a vacuum never finds the
            // file unlocked while its version is still in use. A failure leaves a stale file
            // that the next vacuum removes.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// This process's pins on one database, shared by every snapshot taken through one handle.
#[derive(Debug)]
pub(crate) struct Pins {
    dir: PathBuf,
    live: Mutex<HashMap<u64, Weak<Pin>>>,
}

/// Makes pin file names unique within the process (the pid makes them unique across processes).
static NEXT_PIN: AtomicU64 = AtomicU64::new(0);

impl Pins {
    pub fn new(root: &Path) -> Pins {
        Pins {
            dir: root.join(READERS_DIR),
            live: Mutex::default(),
        }
    }

    /// Pins `version` (or shares the pin a live snapshot of it already holds).
    pub fn pin(&self, version: u64) -> Arc<Pin> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pin) = live.get(&version).and_then(Weak::upgrade) {
            return pin;
        }
        live.retain(|_, w| w.strong_count() > 0);
        let pin = Arc::new(Pin {
            file: self.publish(version).ok(),
        });
        live.insert(version, Arc::downgrade(&pin));
        pin
    }

    /// Writes and locks the pin file of `version`. A vacuum may remove the temporary file
    /// between its creation and its lock (it looks abandoned); the rename then fails and the
    /// pin is written again.
    fn publish(&self, version: u64) -> std::io::Result<(PathBuf, File)> {
        if !self.dir.is_dir() {
            match std::fs::create_dir(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        let mut last = None;
        for _ in 0..8 {
            let owner = format!(
                "{}-{}",
                std::process::id(),
                NEXT_PIN.fetch_add(1, Ordering::Relaxed)
            );
            let tmp = self.dir.join(format!("{TMP_PREFIX}{owner}"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            file.lock_shared()?;
            let path = self.dir.join(format!("{version:020}-{owner}{SUFFIX}"));
            match std::fs::rename(&tmp, &path) {
                Ok(()) => return Ok((path, file)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("pin not published")))
    }
}

/// Versions some live snapshot (of any process) has pinned. Pin files nobody holds are removed
/// on the way.
pub(crate) fn live_versions(root: &Path) -> Result<BTreeSet<u64>> {
    let dir = root.join(READERS_DIR);
    let mut versions = BTreeSet::new();
    for name in fsio::list_dir(&dir)? {
        let path = dir.join(&name);
        let file = match File::open(&path) {
            Ok(f) => f,
            // Its snapshot dropped since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, e)),
        };
        match file.try_lock() {
            Err(TryLockError::WouldBlock) => {
                if let Some(v) = pinned_version(&name) {
                    versions.insert(v);
                }
            }
            Ok(()) => {
                // Nobody holds it: its process died (or, for a temporary name, has not locked
                // it yet and will retry).
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(&path, e));
                    }
                    _ => {}
                }
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
    }
    Ok(versions)
}

fn pinned_version(name: &str) -> Option<u64> {
    name.strip_suffix(SUFFIX)?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pins_are_live_until_dropped_and_shared_per_version() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::new(dir.path());
        let a = pins.pin(3);
        let b = pins.pin(3);
        assert!(Arc::ptr_eq(&a, &b));
        let c = pins.pin(5);
        assert_eq!(live_versions(dir.path()).unwrap(), BTreeSet::from([3, 5]));
        drop((a, c));
        assert_eq!(live_versions(dir.path()).unwrap(), BTreeSet::from([3]));
        drop(b);
        assert!(live_versions(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn pins_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let readers = dir.path().join(READERS_DIR);
        std::fs::create_dir(&readers).unwrap();
        // What a killed reader leaves: a pin file nobody locks, and a temporary one.
        std::fs::write(readers.join("00000000000000000007-1-0.pin"), b"").unwrap();
        std::fs::write(readers.join(".tmp-1-1"), b"").unwrap();
        assert!(live_versions(dir.path()).unwrap().is_empty());
        assert!(fsio::list_dir(&readers).unwrap().is_empty());
    }
}
