//! Helpers shared by the `mirante` binary's tests.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a subset; a failed unwrap fails

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_mirante");

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `mirante sql <db> <statements> --format <format>`.
pub fn sql(db: &Path, statements: &str, format: &str) -> Output {
    Command::new(BIN)
        .arg("sql")
        .arg(db)
        .arg(statements)
        .args(["--format", format])
        .output()
        .unwrap()
}
