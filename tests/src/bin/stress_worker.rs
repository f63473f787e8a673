//! Child process of the concurrency stress test (`tests/tests/concurrency.rs`): one writer that
//! appends, deletes, compacts, re-indexes and vacuums as fast as it can, and readers that check
//! every snapshot they get, in other processes and in threads of the writer's own process.
//!
//! Usage: `stress_worker init <db-dir>`, `stress_worker writer <db-dir> <seconds> <seed>`,
//! `stress_worker reader <db-dir> <seconds>`. Each prints one summary line (`W ...` or
//! `R <reads>`) and exits 0, or prints `E <what failed>` and exits 1 at the first failure.

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mirante::storage::{Database, IndexSpec, Metric, Modality};
use mirante_tests::{
    assert_keyed_row, int_vector, keyed_row, keyed_vectors, test_schema, test_space,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 8;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args[2].clone();
    let seconds = || Duration::from_secs_f64(args[3].parse().expect("seconds"));
    let result = match args[1].as_str() {
        "init" => init(&dir),
        "writer" => writer(&dir, seconds(), args[4].parse().expect("seed")),
        "reader" => reader(&dir, seconds()).map(|reads| println!("R {reads}")),
        other => Err(format!("unknown mode {other}")),
    };
    if let Err(e) = result {
        println!("E {e}");
        std::process::exit(1);
    }
}

fn init(dir: &str) -> Result<(), String> {
    let db = Database::create(dir).map_err(|e| e.to_string())?;
    let mut w = db.writer().map_err(|e| e.to_string())?;
    w.create_collection("c", test_schema(), IndexSpec::default())
        .map_err(|e| e.to_string())?;
    for m in [Modality::Image, Modality::Text] {
        w.add_space("c", test_space(m, DIM, Metric::InnerProduct), true)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Commits until `duration` is over, while two reader threads of this process (one on the
/// writer's own handle, one on a handle of its own) check every version.
fn writer(dir: &str, duration: Duration, seed: u64) -> Result<(), String> {
    let db = Database::open(dir).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = [Some(db.clone()), None]
        .into_iter()
        .map(|handle| {
            let (dir, stop) = (dir.to_string(), stop.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let db = match handle {
                    Some(db) => db,
                    None => Database::open(&dir).map_err(|e| e.to_string())?,
                };
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    check_newest(&db).map_err(|e| format!("reader thread: {e}"))?;
                    reads += 1;
                }
                Ok(reads)
            })
        })
        .collect();
    let written = write_loop(&db, duration, seed);
    stop.store(true, Ordering::Relaxed);
    let mut reads = Vec::new();
    for t in threads {
        reads.push(t.join().map_err(|_| "a reader thread panicked")??);
    }
    let (commits, vacuums) = written?;
    println!("W {commits} commits, {vacuums} vacuums, thread reads {reads:?}");
    Ok(())
}

fn write_loop(db: &Database, duration: Duration, seed: u64) -> Result<(u64, u64), String> {
    let mut w = db.writer().map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut live: BTreeSet<u64> = BTreeSet::new();
    let (mut commits, mut vacuums) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < duration {
        let c = w.manifest().collection("c").map_err(|e| e.to_string())?;
        let first = c.next_row_id;
        let n = rng.random_range(1..200);
        let keys: Vec<u64> = (first..first + n).collect();
        let (iv, tv) = keyed_vectors(&keys, DIM);
        w.append(
            "c",
            keys.iter().map(|&k| keyed_row(k)).collect(),
            &[(1, &iv), (2, &tv)],
        )
        .map_err(|e| format!("append: {e}"))?;
        live.extend(&keys);
        commits += 1;
        match rng.random_range(0..10) {
            0..=2 => {
                let doomed: Vec<u64> = live
                    .iter()
                    .copied()
                    .filter(|_| rng.random_bool(0.05))
                    .collect();
                if !doomed.is_empty() {
                    w.delete("c", &doomed).map_err(|e| format!("delete: {e}"))?;
                    doomed.iter().for_each(|id| {
                        live.remove(id);
                    });
                    commits += 1;
                }
            }
            3 | 4 => {
                w.compact("c", true).map_err(|e| format!("compact: {e}"))?;
                commits += 1;
            }
            5 => {
                let factory = if rng.random_bool(0.5) {
                    "HNSW16"
                } else {
                    "Flat"
                };
                w.set_index("c", IndexSpec::new(factory))
                    .map_err(|e| format!("index: {e}"))?;
                commits += 1;
            }
            _ => {}
        }
        if rng.random_bool(0.5) {
            w.vacuum(1).map_err(|e| format!("vacuum: {e}"))?;
            vacuums += 1;
        }
    }
    Ok((commits, vacuums))
}

/// Reads newest snapshots until `duration` is over, on one handle and, every tenth read, on a
/// fresh one (which loads every file cold).
fn reader(dir: &str, duration: Duration) -> Result<u64, String> {
    let mut db = Database::open(dir).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut reads = 0;
    while start.elapsed() < duration {
        if reads % 10 == 9 {
            db = Database::open(dir).map_err(|e| format!("open: {e}"))?;
        }
        check_newest(&db)?;
        reads += 1;
    }
    Ok(reads)
}

/// Reads the newest version whole and checks it: every live row intact, its vectors equal to
/// what was written, the live count equal to the manifest's, and a search answering with rows
/// of this version.
fn check_newest(db: &Database) -> Result<(), String> {
    let snap = db.snapshot().map_err(|e| format!("snapshot: {e}"))?;
    let v = snap.version();
    let failed = |what: &str, e: mirante::storage::Error| format!("version {v}: {what}: {e}");
    let c = snap.collection("c").map_err(|e| failed("collection", e))?;
    let mut seen = 0;
    let mut some_id = None;
    for seg in snap.segments(c).map_err(|e| failed("segments", e))? {
        let vectors = seg
            .vectors(c, 1)
            .map_err(|e| failed("vectors", e))?
            .ok_or_else(|| format!("version {v}: a segment without image vectors"))?;
        for (local, row) in seg.live_rows() {
            assert_keyed_row(&row, row.id());
            if vectors.get(local) != &int_vector(row.id(), 0, DIM)[..] {
                return Err(format!("version {v}: row {} has another vector", row.id()));
            }
            some_id = Some(row.id());
            seen += 1;
        }
    }
    if seen != c.live_rows() {
        return Err(format!(
            "version {v}: {seen} live rows read, the manifest says {}",
            c.live_rows()
        ));
    }
    if let Some(id) = some_id {
        let hits = snap
            .search("c", 1, &int_vector(id, 0, DIM), 5, None)
            .map_err(|e| failed("search", e))?;
        for hit in &hits[0] {
            if snap
                .get("c", hit.row_id)
                .map_err(|e| failed("get", e))?
                .is_none()
            {
                return Err(format!(
                    "version {v}: search hit {} is not live",
                    hit.row_id
                ));
            }
        }
    }
    Ok(())
}
