//! Databases are relocatable: after `FINETUNE`, `REEMBED` and `TRAIN ELIP`, a database moved or
//! copied elsewhere searches with its own registry models (stored as `registry:<name>` keys),
//! never with the original's; databases written when registry models were stored as absolute
//! paths (fixture `tests/fixtures/db-registry-absolute`, made by commit 622041c) are migrated
//! when opened.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use mirante::storage::Modality;
use mirante::{Cell, Database, Registry};
use mirante_tests::{copy_dir, error, one, registry_models};

const SEARCH: &str = "SEARCH shapes BY TEXT 'a red square at the top left' LIMIT 4";
const RERANKED: &str = "SEARCH shapes BY TEXT 'a blue square at the bottom right' RERANK WITH ELIP 'elip' TOP 8 LIMIT 4";

/// The ids and scores of a search's hits.
fn hits(db: &Database, sql: &str) -> Vec<(i64, String)> {
    let r = one(db, sql);
    (0..r.rows.len())
        .map(|i| match (r.get(i, "id"), r.get(i, "score")) {
            (Some(Cell::Int(id)), Some(score)) => (*id, score.display()),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// The model ids of the collection's spaces, as stored.
fn stored_models(db: &Database) -> Vec<String> {
    let snap = db.snapshot().unwrap();
    let c = snap.collection("shapes").unwrap();
    c.spaces.iter().map(|s| s.spec.model_id.clone()).collect()
}

/// Changes a byte of a checkpoint's weights, so that its fingerprint changes.
fn damage_weights(folder: &Path) {
    let path = folder.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn moved_and_copied_databases_search_with_their_own_models() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("a").join("db");
    let db = Database::open(&original).unwrap();
    registry_models(&db, &dir.path().join("work"));
    assert!(
        stored_models(&db).contains(&"registry:ft".to_string()),
        "{:?}",
        stored_models(&db)
    );
    let before = hits(&db, SEARCH);
    let before_reranked = hits(&db, RERANKED);
    let elip = db.registry().lineage("elip").unwrap();
    assert_eq!(elip.base, "registry:ft");
    drop(db);

    // A copy uses its own models, even when the original's change.
    let copy = dir.path().join("b").join("copy");
    copy_dir(&original, &copy);
    damage_weights(&original.join("models").join("ft"));
    let db = Database::open(&copy).unwrap();
    assert_eq!(hits(&db, SEARCH), before);
    assert_eq!(hits(&db, RERANKED), before_reranked);
    let models = one(&db, "SHOW MODELS");
    assert_eq!(
        models.get(0, "model"),
        Some(&Cell::Str("registry:ft".into()))
    );
    drop(db);
    // The original sees its own (now damaged) weights and says so.
    let db = Database::open(&original).unwrap();
    let e = error(&db, SEARCH);
    assert!(e.contains("weights of model registry:ft changed"), "{e}");
    drop(db);

    // A moved database, the original gone.
    let moved = dir.path().join("c").join("moved");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&copy, &moved).unwrap();
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();
    let db = Database::open(&moved).unwrap();
    assert_eq!(hits(&db, SEARCH), before);
    assert_eq!(hits(&db, RERANKED), before_reranked);
    one(&db, "ALTER COLLECTION shapes SET MODEL 'ft'");
    let evaluated = one(&db, "EVALUATE recall@1 ON shapes USING MODEL 'ft'");
    assert_eq!(evaluated.rows.len(), 2);
    let exported = dir.path().join("exported");
    one(
        &db,
        &format!("EXPORT MODEL 'ft' TO '{}'", exported.display()),
    );
    assert!(exported.join("model.safetensors").is_file());
}

/// The fixture copied into `to`, opened by storage alone (no migration).
fn legacy_copy(to: &Path) -> PathBuf {
    let fixture = mirante_tests::repo_root().join("tests/fixtures/db-registry-absolute");
    copy_dir(&fixture, to);
    to.to_path_buf()
}

#[test]
fn absolute_model_paths_of_older_releases_are_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = legacy_copy(&dir.path().join("db"));
    let store = mirante::storage::Database::open(&path).unwrap();
    let versions = store.versions().unwrap();
    let snap = store.snapshot().unwrap();
    let legacy = &snap.collection("shapes").unwrap().spaces[0].spec.model_id;
    assert!(
        Path::new(legacy).is_absolute() && legacy.ends_with("/models/ft"),
        "the fixture stores an absolute path: {legacy}"
    );
    assert!(
        !Path::new(legacy).exists(),
        "the fixture was written elsewhere"
    );
    drop((snap, store));

    let db = Database::open(&path).unwrap();
    assert_eq!(stored_models(&db), ["registry:ft", "registry:ft"]);
    let after = db.storage().versions().unwrap();
    assert_eq!(after.len(), versions.len() + 1, "one migration commit");
    let elip = db.registry().lineage("elip").unwrap();
    assert_eq!(elip.base, "registry:ft");
    assert_eq!(elip.lineage_format, mirante::registry::LINEAGE_FORMAT);
    let found = hits(&db, SEARCH);
    assert_eq!(found.len(), 4);
    assert_eq!(hits(&db, RERANKED).len(), 4);
    let c = db.snapshot().unwrap();
    let c = c.collection("shapes").unwrap();
    assert!(c.active(Modality::Image).is_some());
    drop(db);

    // Opening again changes nothing.
    let db = Database::open(&path).unwrap();
    assert_eq!(db.storage().versions().unwrap(), after);
    assert_eq!(hits(&db, SEARCH), found);
}

#[test]
fn a_copy_of_an_old_database_never_uses_the_original_s_models() {
    let dir = tempfile::tempdir().unwrap();
    // An old database whose spaces point at its own registry by absolute path, as older
    // releases wrote them, and a copy of it.
    let original = legacy_copy(&dir.path().join("orig"));
    let store = mirante::storage::Database::open(&original).unwrap();
    let legacy = store
        .snapshot()
        .unwrap()
        .collection("shapes")
        .unwrap()
        .spaces[0]
        .spec
        .model_id
        .clone();
    let own = original.join("models").join("ft").display().to_string();
    store
        .writer()
        .unwrap()
        .rename_models(&[(legacy, own.clone())])
        .unwrap();
    drop(store);
    let copy = dir.path().join("copy");
    copy_dir(&original, &copy);
    // The original's model changes; the copy must keep its own.
    damage_weights(&original.join("models").join("ft"));
    let db = Database::open(&copy).unwrap();
    assert_eq!(stored_models(&db), ["registry:ft", "registry:ft"]);
    assert_eq!(hits(&db, SEARCH).len(), 4);
    drop(db);
    // The original's spaces keep the path: its weights no longer match what they stored.
    let db = Database::open(&original).unwrap();
    assert_eq!(stored_models(&db), [own.clone(), own]);
    let e = error(&db, SEARCH);
    assert!(
        e.contains("changed since collection shapes was embedded"),
        "{e}"
    );
    assert_eq!(Registry::name_of("registry:ft"), Some("ft"));
}

#[test]
fn databases_with_registry_keys_open_as_they_are() {
    // Written by this release's `make_registry_fixture keys`: nothing to migrate.
    let dir = tempfile::tempdir().unwrap();
    let fixture = mirante_tests::repo_root().join("tests/fixtures/db-registry-keys");
    let path = dir.path().join("db");
    copy_dir(&fixture, &path);
    let versions = mirante::storage::Database::open(&path)
        .unwrap()
        .versions()
        .unwrap();
    let db = Database::open(&path).unwrap();
    assert_eq!(db.storage().versions().unwrap(), versions);
    assert_eq!(stored_models(&db), ["registry:ft", "registry:ft"]);
    assert_eq!(hits(&db, SEARCH).len(), 4);
    assert_eq!(hits(&db, RERANKED).len(), 4);
    assert_eq!(db.registry().names().unwrap(), ["elip", "ft"]);
}
