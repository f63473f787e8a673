//! Writes `tests/fixtures/db-registry-<label>/`: a small database whose collection searches with
//! a model of its own registry (a tiny CLIP made from scratch, `FINETUNE`d on the collection,
//! `REEMBED`ded with, and an ELIP re-ranker trained over it). Committed fixtures pin how each
//! engine release stores references to registry models, so later releases keep opening them:
//! `db-registry-absolute` was written by commit 622041c, which stored registry models as absolute
//! paths (moving such a database lost its models; opening now migrates them to `registry:`
//! keys, `tests/tests/relocation.rs`).
//!
//! `cargo run -p mirante-tests --bin make_registry_fixture -- <label>`

#![allow(clippy::unwrap_used)] // a test tool: a failed unwrap is a failed generation

use std::path::Path;

use mirante::Database;

fn main() {
    let label = std::env::args()
        .nth(1)
        .expect("usage: make_registry_fixture <label>");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let dir = root.join(format!("db-registry-{label}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let db = Database::open(&dir).unwrap();
    mirante_tests::registry_models(&db, work.path());
    println!("wrote {}", dir.display());
}
