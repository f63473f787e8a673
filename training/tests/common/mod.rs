//! Helpers shared by the training crate's integration tests.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a subset; a failed unwrap is a failed test

use std::path::{Path, PathBuf};

/// The committed parity fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// Copies a fixture checkpoint (without its reference outputs) to `to`, to modify it there.
pub fn copy_checkpoint(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("reference") {
            std::fs::copy(entry.path(), to.join(name)).unwrap();
        }
    }
}
