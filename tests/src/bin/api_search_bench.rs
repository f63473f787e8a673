//! The wall time of top-k text searches through the Rust API, for the Python package's
//! benchmark (bindings/python/bench/bench_python.py), which runs the same searches on the same
//! database from Python in the same run and reports the difference as Python's overhead.
//!
//! `api_search_bench <database> <collection> <queries file, one per line> [limit] [rounds]`
//! prints one JSON object: the median wall time per search and the median of the engine's
//! timed parts (embed, search, rerank, fetch), in seconds.

#![allow(clippy::unwrap_used)] // benchmark tool: a failed unwrap is a failed run

use std::time::{Duration, Instant};

use mirante::Database;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, collection, queries, rest @ ..] = args.as_slice() else {
        panic!("usage: api_search_bench <database> <collection> <queries file> [limit] [rounds]");
    };
    let limit: usize = rest.first().map_or(10, |l| l.parse().unwrap());
    let rounds: usize = rest.get(1).map_or(3, |r| r.parse().unwrap());
    let queries: Vec<String> = std::fs::read_to_string(queries)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let db = Database::open(db).unwrap();
    let search = |q: &str| {
        db.collection(collection)
            .unwrap()
            .search_text(q)
            .limit(limit)
            .run()
            .unwrap()
    };
    for q in queries.iter().take(5) {
        search(q);
    }
    let (mut walls, mut engine) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for q in &queries {
            let started = Instant::now();
            let r = search(q);
            walls.push(started.elapsed());
            let t = &r.timings;
            engine.push(t.embed + t.search + t.rerank + t.fetch);
        }
    }
    println!(
        "{{\"wall\": {}, \"engine\": {}, \"searches\": {}}}",
        median(walls),
        median(engine),
        queries.len() * rounds
    );
}
