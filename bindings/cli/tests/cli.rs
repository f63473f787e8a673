//! The `mirante` binary end to end: the walkthrough runs, and `info` reports what it left.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mirante");

#[test]
fn walkthrough_then_info() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let out = Command::new(BIN)
        .args(["walkthrough", "--rows", "3000", "--index", "Flat", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("appended 3000 rows (ids 1..=3000)"), "{text}");
    assert!(text.contains("WHERE year >= 2020"), "{text}");
    assert!(
        text.contains("COMPACT: 1 -> 1 segments, 2 deleted rows dropped"),
        "{text}"
    );

    let out = Command::new(BIN).arg("info").arg(&db).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("collection images: 2998 live rows in 1 segments, index 'Flat'"),
        "{text}"
    );
    assert!(
        text.contains("space 1 image walkthrough-random dim 512 (active)"),
        "{text}"
    );

    // A second walkthrough into the same folder is refused with a clear error, not a panic.
    let out = Command::new(BIN)
        .args(["walkthrough", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a database already exists at"), "{err}");

    let out = Command::new(BIN)
        .arg("info")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a Mirante database"));
}
