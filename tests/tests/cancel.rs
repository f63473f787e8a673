//! Cancellation through the library's [`CancelToken`], raised from another thread while a
//! statement runs (as the shell's Ctrl-C and the Python package's KeyboardInterrupt do): the
//! statement ends with `Error::Cancelled` and commits nothing (a REEMBED keeps the segments it
//! finished, and a rerun resumes).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use mirante::{CancelToken, Database, Error, ExecOptions};
use mirante_apps::shapes::{ShapesConfig, generate};
use mirante_tests::one;

/// Runs `sql` with a token that `ready` (polled) decides to raise; the statement's result.
fn cancelled_when(
    db: &Database,
    sql: &str,
    ready: impl Fn() -> bool + Send,
) -> mirante::Result<()> {
    let options = ExecOptions::default();
    let token: CancelToken = options.cancel.clone();
    std::thread::scope(|s| {
        let watcher = s.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !ready() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            token.cancel();
        });
        let result = db.sql_each(sql, &options, |_| {});
        // A statement that ended before the watcher fired must not leave it waiting.
        options.cancel.cancel();
        watcher.join().unwrap();
        result
    })
}

fn files(db: &Path) -> usize {
    std::fs::read_dir(db.join("files")).map_or(0, |d| d.count())
}

#[test]
fn cancelled_statements_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(
        &ShapesConfig {
            rows: 1500,
            seed: 5,
            ..ShapesConfig::default()
        },
        &data,
    )
    .unwrap();
    let path = dir.path().join("db");
    let db = Database::open(&path).unwrap();
    one(&db, "CREATE COLLECTION shapes");
    let versions = || db.storage().versions().unwrap();
    let before = versions();

    // IMPORT: cancelled once its first chunk is staged (files written, not committed).
    let staged = files(&path);
    let import = format!("IMPORT INTO shapes FROM '{}'", data.display());
    let r = cancelled_when(&db, &import, || files(&path) > staged);
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert_eq!(versions(), before, "nothing committed");
    assert_eq!(db.snapshot().unwrap().count("shapes").unwrap(), 0);
    one(&db, &import);
    assert_eq!(db.snapshot().unwrap().count("shapes").unwrap(), 1500);

    // FINETUNE: cancelled once training started; no model, no partial folder left.
    let partial = path.join("models/.partial-ft");
    let r = cancelled_when(
        &db,
        "FINETUNE MODEL 'mirante-shapes-clip' ON shapes WITH (epochs = 50, batch_size = 32) AS 'ft'",
        || partial.exists(),
    );
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(!partial.exists() && !path.join("models/ft").exists());
    assert!(db.registry().names().unwrap().is_empty());

    // REEMBED: cancelled after its first committed segment column; the collection keeps its
    // model, and the rerun resumes after what was committed.
    one(
        &db,
        "FINETUNE MODEL 'mirante-shapes-clip' ON shapes WHERE id <= 40 WITH (epochs = 1, batch_size = 8) AS 'ft'",
    );
    // The import staged two segments: the job commits the image space, then each segment's
    // image column; it is stopped after the first one.
    assert_eq!(
        db.snapshot()
            .unwrap()
            .collection("shapes")
            .unwrap()
            .segments
            .len(),
        2
    );
    let start = versions().len();
    let r = cancelled_when(&db, "REEMBED shapes USING MODEL 'ft'", || {
        db.storage().versions().unwrap().len() >= start + 2
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    let active = |db: &Database| {
        let snap = db.snapshot().unwrap();
        let c = snap.collection("shapes").unwrap();
        c.space(c.active_image.unwrap())
            .unwrap()
            .spec
            .model_id
            .clone()
    };
    assert_eq!(active(&db), "mirante-shapes-clip");
    let done = one(&db, "REEMBED shapes USING MODEL 'ft'");
    assert!(done.status.unwrap().contains("now searches with it"));
    assert_eq!(active(&db), "registry:ft");

    // A token raised before the statement stops it before it does anything.
    let raised = ExecOptions::default();
    raised.cancel.cancel();
    let v = versions();
    let r = db.sql_each("DELETE FROM shapes", &raised, |_| {});
    assert!(matches!(r, Err(Error::Cancelled)));
    assert_eq!(versions(), v);
    assert_eq!(Error::Cancelled.kind(), mirante::ErrorKind::Cancelled);
}
