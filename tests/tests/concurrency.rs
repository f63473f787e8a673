//! Concurrency stress: one writer process appends, deletes, compacts, re-indexes and vacuums
//! (keeping one version) as fast as it can, while reader processes, and reader threads in the
//! writer's own process, check every snapshot they get. No read may fail: a snapshot's files
//! stay on disk while it lives (reader pins, `storage/src/pins.rs`).
//!
//! It runs for `MIRANTE_STRESS_SECS` seconds (default 6); `scripts/stress.sh` runs it for
//! minutes.

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use std::process::{Command, Output, Stdio};

const WORKER: &str = env!("CARGO_BIN_EXE_stress_worker");
const READER_PROCESSES: usize = 3;

fn finished(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn readers_never_fail_while_a_writer_compacts_and_vacuums() {
    let seconds = std::env::var("MIRANTE_STRESS_SECS").unwrap_or_else(|_| "6".into());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let db = db.to_str().unwrap();
    finished(
        "init",
        Command::new(WORKER).args(["init", db]).output().unwrap(),
    );
    let spawn = |args: &[&str]| {
        Command::new(WORKER)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let writer = spawn(&["writer", db, &seconds, "7"]);
    let readers: Vec<_> = (0..READER_PROCESSES)
        .map(|_| spawn(&["reader", db, &seconds]))
        .collect();
    let summary = finished("writer", writer.wait_with_output().unwrap());
    eprintln!("{summary}");
    let vacuums: u64 = summary
        .split(", ")
        .find_map(|p| p.strip_suffix(" vacuums")?.parse().ok())
        .unwrap();
    assert!(vacuums > 0, "{summary}");
    for reader in readers {
        let out = finished("reader", reader.wait_with_output().unwrap());
        let reads: u64 = out.trim().strip_prefix("R ").unwrap().parse().unwrap();
        eprintln!("reader process: {reads} snapshots read and checked");
        assert!(reads > 0, "{out}");
    }
    // Every pin went with its snapshot.
    let pins = std::fs::read_dir(dir.path().join("db/_readers"))
        .unwrap()
        .count();
    assert_eq!(pins, 0);
}
