//! Ctrl-C in `mirante shell`: SIGINT during an `IMPORT` stops the statement, the database stays
//! at its previous version (nothing half-committed), and the shell answers the next statement.
//! `mirante sql` interrupted the same way exits with status 130.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{BIN, repo, sql};

fn interrupt(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
}

/// A database with a collection of the tiny CLIP holding `rows` photographs, and a CSV of
/// 2,000 more: an import that takes many seconds of decoding.
fn setup(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let db = dir.join("db");
    let small = dir.join("small.csv");
    mirante_tests::photo_rows_csv(&small, 5);
    let big = dir.join("big.csv");
    mirante_tests::photo_rows_csv(&big, 2000);
    let model = repo().join("training/tests/fixtures/clip-tiny");
    let out = sql(
        &db,
        &format!(
            "CREATE COLLECTION images WITH (model = '{}'); IMPORT INTO images FROM '{}'",
            model.display(),
            small.display()
        ),
        "table",
    );
    assert!(out.status.success(), "{out:?}");
    (db, big)
}

/// Reads `out` until a one-row table (the first statement's answer) has come: the process runs
/// and is about to start its next statement.
fn await_first_answer(out: &mut impl BufRead) {
    let mut seen = String::new();
    while !seen.contains("(1 row)") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "ended: {seen}");
        seen.push_str(&line);
    }
}

fn versions(db: &std::path::Path) -> Vec<u64> {
    mirante::storage::Database::open(db)
        .unwrap()
        .versions()
        .unwrap()
}

#[test]
fn sigint_stops_the_running_import_and_the_shell_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, big) = setup(tmp.path());
    let before = versions(&db);
    let mut child = Command::new(BIN)
        .arg("shell")
        .arg(&db)
        .env("MIRANTE_HISTORY", tmp.path().join("history"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The first statement's answer tells that the shell runs; the import starts right after.
    writeln!(
        stdin,
        "SELECT count(*) FROM images;\nIMPORT INTO images FROM '{}';",
        big.display()
    )
    .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    await_first_answer(&mut stdout);
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(child.id());
    writeln!(stdin, "SELECT count(*) FROM images;").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: cancelled"), "{stderr}");
    // The next statement was answered: still the 5 rows of before.
    assert!(rest.contains("count\n-----\n5\n(1 row)"), "{rest}");
    assert_eq!(
        versions(&db),
        before,
        "the cancelled import committed nothing"
    );
    // Piped scripts learn of the failed statement through the exit status.
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn sigint_ends_mirante_sql_with_status_130_and_nothing_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, big) = setup(tmp.path());
    let before = versions(&db);
    let mut child = Command::new(BIN)
        .arg("sql")
        .arg(&db)
        .arg(format!(
            "SELECT count(*) FROM images; IMPORT INTO images FROM '{}'",
            big.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    await_first_answer(&mut stdout);
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: cancelled"));
    assert_eq!(versions(&db), before);
}
