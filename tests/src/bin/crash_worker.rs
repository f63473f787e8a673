//! Child process of the crash tests: commits to a database in a loop and reports each commit on
//! stdout, until the parent kills it with SIGKILL.
//!
//! Usage: `crash_worker <db-dir> <seed> [once]`. Protocol, one line each, flushed before and
//! after the commit it describes:
//! - `B <first-id> <last-id>`: about to append rows with these ids;
//! - `C`: that append is committed;
//! - `E <message>`: the append failed (used by the disk-full test with `once`).
//!
//! Rows are `keyed_row(id)` with `int_vector(id, ..)` embeddings, so the parent can check every
//! byte of what it finds after the crash.

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use mirante::storage::{Database, IndexSpec, Metric, Modality};
use mirante_tests::{keyed_row, keyed_vectors, test_schema, test_space};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;

const DIM: usize = 8;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, seed) = (&args[1], args[2].parse::<u64>().expect("seed"));
    let once = args.get(3).is_some_and(|a| a == "once");
    if let Err(e) = run(dir, seed, once) {
        println!("E {e}");
        std::process::exit(1);
    }
}

/// `dir` is a folder, or an object-storage URI worked on through the cache folder
/// `$MIRANTE_CACHE_DIR`.
fn run(dir: &str, seed: u64, once: bool) -> mirante::storage::Result<()> {
    let cache = std::env::var_os("MIRANTE_CACHE_DIR").map(std::path::PathBuf::from);
    let db = Database::open_location(dir, cache.as_deref())?;
    let mut w = db.writer()?;
    if w.manifest().collection("c").is_err() {
        w.create_collection("c", test_schema(), IndexSpec::default())?;
        for m in [Modality::Image, Modality::Text] {
            w.add_space("c", test_space(m, DIM, Metric::InnerProduct), true)?;
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let out = std::io::stdout();
    loop {
        let c = w.manifest().collection("c")?;
        let first = c.next_row_id;
        let n = if rng.random_bool(0.2) {
            rng.random_range(1000..1400)
        } else {
            rng.random_range(1..40)
        };
        let keys: Vec<u64> = (first..first + n).collect();
        let (iv, tv) = keyed_vectors(&keys, DIM);
        writeln!(out.lock(), "B {} {}", first, first + n - 1).ok();
        out.lock().flush().ok();
        let ids = w.append(
            "c",
            keys.iter().map(|&k| keyed_row(k)).collect(),
            &[(1, &iv), (2, &tv)],
        )?;
        assert_eq!(ids, keys, "ids are assigned in order");
        writeln!(out.lock(), "C").ok();
        out.lock().flush().ok();
        if once {
            return Ok(());
        }
        match rng.random_range(0..10) {
            0 => {
                w.compact("c", true)?;
            }
            1 => {
                let factory = if rng.random_bool(0.5) {
                    "HNSW16"
                } else {
                    "Flat"
                };
                w.set_index("c", IndexSpec::new(factory))?;
            }
            2 => {
                w.vacuum(2)?;
            }
            _ => {}
        }
    }
}
