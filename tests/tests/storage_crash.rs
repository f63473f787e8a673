//! Crash safety: a child process appends, compacts, re-indexes and vacuums in a loop and is
//! killed with SIGKILL at random moments. After every kill the database must open, hold every
//! acknowledged row intact, and hold the in-flight batch either whole or not at all.

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use mirante::storage::{Database, Modality};
use mirante_tests::{assert_keyed_row, int_vector, keyed_texts};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WORKER: &str = env!("CARGO_BIN_EXE_crash_worker");
const DIM: usize = 8;

/// Parses the worker's protocol into (acknowledged ids, in-flight ids).
fn parse(out: &str) -> (Vec<u64>, Vec<u64>) {
    let mut acked = Vec::new();
    let mut pending: Vec<u64> = Vec::new();
    for line in out.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("B") => {
                let a: u64 = parts.next().unwrap().parse().unwrap();
                let b: u64 = parts.next().unwrap().parse().unwrap();
                pending = (a..=b).collect();
            }
            Some("C") => acked.append(&mut pending),
            _ => {}
        }
    }
    (acked, pending)
}

/// Checks the database holds exactly `expected` ids (plus optionally `maybe` as a whole), every
/// row and vector intact. Returns the ids found.
fn verify(dir: &std::path::Path, expected: &BTreeSet<u64>, maybe: &[u64]) -> BTreeSet<u64> {
    verify_db(
        &Database::open(dir).expect("database opens after a crash"),
        expected,
        maybe,
    )
}

fn verify_db(db: &Database, expected: &BTreeSet<u64>, maybe: &[u64]) -> BTreeSet<u64> {
    let snap = db.snapshot().unwrap();
    let mut found = BTreeSet::new();
    if snap.collection("c").is_err() {
        assert!(expected.is_empty(), "collection lost");
        return found;
    }
    snap.scan("c", None, |row| {
        assert_keyed_row(&row, row.id());
        found.insert(row.id());
        Ok(())
    })
    .unwrap();
    let with_maybe: BTreeSet<u64> = expected.iter().chain(maybe).copied().collect();
    assert!(
        found == *expected || found == with_maybe,
        "after crash: found {} rows, expected {} (+{} in flight); missing {:?}; extra {:?}",
        found.len(),
        expected.len(),
        maybe.len(),
        expected.difference(&found).take(5).collect::<Vec<_>>(),
        found.difference(&with_maybe).take(5).collect::<Vec<_>>(),
    );
    // Every vector reads back intact: each column of each segment matches its rows.
    let c = snap.collection("c").unwrap();
    for seg in snap.segments(c).unwrap() {
        for (space, modality) in [(1, Modality::Image), (2, Modality::Text)] {
            let v = seg
                .vectors(c, space)
                .unwrap()
                .expect("every segment embedded");
            for (local, row) in seg.live_rows() {
                let id = row.id();
                match modality {
                    Modality::Image => assert_eq!(v.get(local), &int_vector(id, 0, DIM)[..]),
                    Modality::Text => {
                        let start = seg.text_start(local);
                        for t in 0..keyed_texts(id) {
                            assert_eq!(v.get(start + t), &int_vector(id, t as u64 + 1, DIM)[..]);
                        }
                    }
                }
            }
        }
    }
    // And search over the recovered state works (FAISS index files included).
    if let Some(&probe) = found.iter().next() {
        let hits = snap
            .search("c", 1, &int_vector(probe, 0, DIM), 3, None)
            .unwrap();
        assert!(!hits[0].is_empty());
    }
    found
}

fn iterations() -> usize {
    mirante_tests::env_count("MIRANTE_CRASH_ITERATIONS", 200)
}

#[test]
fn sigkill_at_random_moments_loses_no_committed_row() {
    let dir = tempfile::tempdir().unwrap();
    sigkill_loop(&dir.path().display().to_string(), iterations(), |_| {
        Database::open(dir.path()).expect("database opens after a crash")
    });
}

/// The same against the object-storage backend: the worker commits through `object_store` to a
/// store in a folder (`objectfs://`) from its cache folder, and after each kill a new "machine"
/// (a fresh cache folder) checks the store.
#[test]
fn sigkill_at_random_moments_on_object_storage_loses_no_committed_row() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("objectfs://{}", dir.path().join("store").display());
    sigkill_loop(&uri, iterations() / 8, |i| {
        let cache = dir.path().join(format!("check-{i}"));
        let db = Database::open_location(&uri, Some(&cache)).expect("database opens after a crash");
        assert_eq!(db.remote_uri(), Some(uri.as_str()));
        db
    });
}

/// Starts the worker on `location` and kills it at a random moment, `runs` times; after each kill
/// the database `open` gives holds every acknowledged row and the in-flight batch whole or not
/// at all.
fn sigkill_loop(location: &str, runs: usize, open: impl Fn(usize) -> Database) {
    let cache = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(2026);
    let mut committed = BTreeSet::new();
    let mut kills_mid_batch = 0;
    for i in 0..runs {
        let mut child = Command::new(WORKER)
            .arg(location)
            .arg(i.to_string())
            .env("MIRANTE_CACHE_DIR", cache.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker");
        std::thread::sleep(Duration::from_millis(rng.random_range(2..120)));
        child.kill().expect("SIGKILL");
        let output = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        let (acked, in_flight) = parse(&out);
        committed.extend(acked);
        if !in_flight.is_empty() {
            kills_mid_batch += 1;
        }
        committed = verify_db(&open(i), &committed, &in_flight);
    }
    assert!(kills_mid_batch > 0, "no kill landed during an append");
    assert!(!committed.is_empty());
}

/// Runs the worker for one append with `seed` and returns what it printed.
fn run_once(dir: &std::path::Path, seed: u64) -> String {
    let out = Command::new(WORKER)
        .arg(dir)
        .arg(seed.to_string())
        .arg("once")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn disk_full_during_a_commit_keeps_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    // A first, unconstrained run commits something.
    let (acked, _) = parse(&run_once(dir.path(), 1));
    assert!(!acked.is_empty());
    let mut before: BTreeSet<u64> = acked.into_iter().collect();
    // Then writes larger than 16 KiB fail (EFBIG), as a full disk would.
    let mut failures = 0;
    for seed in 2..12 {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -f 16; exec {WORKER} \"$0\" {seed} once"
            ))
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (acked, _) = parse(&text);
        before.extend(acked);
        if text.lines().any(|l| l.starts_with("E ")) {
            failures += 1;
            assert!(
                text.contains("I/O error on"),
                "error names the file: {text}"
            );
            // The failed append is not visible, nothing else changed.
            let found = verify(dir.path(), &before, &[]);
            assert_eq!(found, before);
        }
    }
    assert!(failures > 0, "no write hit the limit");
}

/// Sets or clears the immutable attribute (refuses writes even to root); false if unsupported.
fn chattr(flag: &str, path: &std::path::Path) -> bool {
    Command::new("chattr")
        .arg(flag)
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Clears the immutable attribute even when an assertion fails, so the temp dir can be removed.
struct Immutable<'a>(&'a std::path::Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        chattr("-i", self.0);
    }
}

#[test]
fn permission_errors_during_a_commit_keep_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let (acked, _) = parse(&run_once(dir.path(), 1));
    let before: BTreeSet<u64> = acked.into_iter().collect();
    for locked in ["files", "_versions"] {
        let target = dir.path().join(locked);
        if !chattr("+i", &target) {
            eprintln!("chattr +i unsupported on this file system; permission case not exercised");
            return;
        }
        let guard = Immutable(&target);
        let text = run_once(dir.path(), 2);
        assert!(text.contains("E I/O error on"), "{locked}: {text}");
        assert!(
            text.contains(locked),
            "error names the path in {locked}/: {text}"
        );
        drop(guard);
        assert_eq!(verify(dir.path(), &before, &[]), before, "{locked}");
    }
    // With permissions back, vacuum removes the failed commit's leftovers and commits work again.
    let db = Database::open(dir.path()).unwrap();
    let report = db.writer().unwrap().vacuum(10).unwrap();
    assert!(
        report.files_removed > 0,
        "leftovers of the failed commit are collected"
    );
    assert!(run_once(dir.path(), 3).contains("C"));
}
