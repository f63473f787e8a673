//! Storage benchmarks. Every figure is reported next to its peer measured in the same run on the
//! same vectors: Mirante's search against a bare FAISS `IndexFlatIP` search in this process (the
//! overhead of segments, deletion bitmaps, exact re-scoring and merging), against faiss-cpu and
//! LanceDB from PyPI (`scripts/bench_peers.py`, when Python has them), and filtered against
//! unfiltered.
//!
//! `cargo run --release -p mirante-tests --bin storage_bench -- [rows] [open_rows]`
//! (defaults 200000 and 1000000).

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use faiss::{Index, MetricType};
use mirante::storage::{
    Database, IndexSpec, Metric, Modality, NewRow, SpaceSpec, Value, ValueRef, WriterOptions,
};
use mirante_tests::{clustered, test_schema, test_space};

const DIM: usize = 512;

fn space() -> SpaceSpec {
    test_space(Modality::Image, DIM, Metric::Cosine)
}

fn rows(n: usize, offset: usize) -> Vec<NewRow> {
    (0..n)
        .map(|i| NewRow {
            metadata: vec![
                ("label".into(), Value::String(format!("r{}", i + offset))),
                ("n".into(), Value::I64(((i + offset) % 100) as i64)),
            ],
            ..Default::default()
        })
        .collect()
}

/// Median of `reps` timings of `f`.
fn median(reps: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[reps / 2]
}

fn main() -> mirante::storage::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(200_000);
    let open_rows = args.get(1).copied().unwrap_or(1_000_000);
    println!("# Mirante storage benchmarks ({n} x {DIM} vectors, cosine)\n");
    let data = clustered(n + 1000, DIM, 1000, 1);
    let (vectors, queries) = data.split_at(n * DIM);

    let dir =
        tempfile::tempdir().map_err(|e| mirante::storage::Error::InvalidArgument(e.to_string()))?;
    let db = Database::create(dir.path().join("db"))?;
    let mut w = db.writer()?;
    w.create_collection("c", test_schema(), IndexSpec::default())?;
    let s = w.add_space("c", space(), true)?;
    let t = Instant::now();
    w.append("c", rows(n, 0), &[(s, vectors)])?;
    let append = t.elapsed();
    println!(
        "append: {n} rows with {DIM}-d vectors in one commit (incl. Flat index): {:.2?}, {:.0} rows/s",
        append,
        n as f64 / append.as_secs_f64()
    );

    // Flat search: Mirante vs the bare FAISS call on the same vectors.
    let mut bare = faiss::index_factory(DIM as u32, "Flat", MetricType::InnerProduct)
        .map_err(|e| mirante::storage::Error::InvalidArgument(e.to_string()))?;
    bare.add(vectors)
        .map_err(|e| mirante::storage::Error::InvalidArgument(e.to_string()))?;
    let snap = db.snapshot()?;
    snap.search("c", s, &queries[..DIM], 10, None)?; // load (map + checksum) once
    let nq_single = 30;
    let mirante_single = median(5, || {
        for q in 0..nq_single {
            snap.search("c", s, &queries[q * DIM..(q + 1) * DIM], 10, None)
                .expect("search");
        }
    }) / nq_single as u32;
    let faiss_single = median(5, || {
        for q in 0..nq_single {
            bare.search(&queries[q * DIM..(q + 1) * DIM], 10)
                .expect("faiss");
        }
    }) / nq_single as u32;
    let batch = &queries[..1000 * DIM];
    let mirante_batch = median(3, || {
        snap.search("c", s, batch, 10, None).expect("search");
    });
    let faiss_batch = median(3, || {
        bare.search(batch, 10).expect("faiss");
    });
    let peers = python_peers(vectors, &queries[..1000 * DIM]);
    println!("\n| flat search, top-10 | Mirante | bare FAISS | Mirante / FAISS |");
    println!("|---|---|---|---|");
    println!(
        "| single query | {:.2} ms | {:.2} ms | {:.3} |",
        ms(mirante_single),
        ms(faiss_single),
        ratio(mirante_single, faiss_single)
    );
    println!(
        "| 1000-query batch | {:.0} q/s | {:.0} q/s | {:.3} (time) |",
        1000.0 / mirante_batch.as_secs_f64(),
        1000.0 / faiss_batch.as_secs_f64(),
        ratio(mirante_batch, faiss_batch)
    );

    match &peers {
        Ok(p) => {
            let f_single = p["faiss_cpu"]["single_query_ms"]
                .as_f64()
                .unwrap_or(f64::NAN);
            let f_batch = p["faiss_cpu"]["batch_1000_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "\n| peer from PyPI, same vectors | peer | Mirante | Mirante / peer (time) |\n|---|---|---|---|"
            );
            println!(
                "| faiss-cpu {} IndexFlatIP, single query | {:.2} ms | {:.2} ms | {:.3} |",
                p["faiss_cpu"]["version"].as_str().unwrap_or("?"),
                f_single,
                ms(mirante_single),
                ms(mirante_single) / f_single
            );
            println!(
                "| faiss-cpu IndexFlatIP, 1000-query batch | {:.0} q/s | {:.0} q/s | {:.3} |",
                1000.0 / f_batch,
                1000.0 / mirante_batch.as_secs_f64(),
                mirante_batch.as_secs_f64() / f_batch
            );
            if let Some(l) = p["lancedb"]["single_query_ms"].as_f64() {
                println!(
                    "| LanceDB {} brute force, single query | {:.2} ms | {:.2} ms | {:.3} |",
                    p["lancedb"]["version"].as_str().unwrap_or("?"),
                    l,
                    ms(mirante_single),
                    ms(mirante_single) / l
                );
            }
        }
        Err(e) => {
            println!("\n(no PyPI peers: {e}; pip install faiss-cpu==1.15.1 numpy lancedb==0.40.0)")
        }
    }

    // Filtered search at several selectivities, against the unfiltered search.
    println!("\n| filter selectivity | single query | vs unfiltered |");
    println!("|---|---|---|");
    for pct in [1i64, 10, 50] {
        let f = move |r: &mirante::storage::RowRef<'_>| matches!(r.value_at(1), ValueRef::I64(v) if v < pct);
        let t = median(5, || {
            for q in 0..nq_single {
                snap.search("c", s, &queries[q * DIM..(q + 1) * DIM], 10, Some(&f))
                    .expect("search");
            }
        }) / nq_single as u32;
        println!(
            "| {pct}% | {:.2} ms | {:.3} |",
            ms(t),
            ratio(t, mirante_single)
        );
    }
    drop(snap);
    drop(w);

    // Single-row commits (the merge policy keeps the segment count logarithmic).
    let db2 = Database::create(dir.path().join("small"))?;
    let mut w2 = db2.writer()?;
    w2.create_collection("c", test_schema(), IndexSpec::default())?;
    let s2 = w2.add_space("c", space(), true)?;
    let commits = 300;
    let t = Instant::now();
    for i in 0..commits {
        w2.append("c", rows(1, i), &[(s2, &vectors[i * DIM..(i + 1) * DIM])])?;
    }
    let per = t.elapsed() / commits as u32;
    println!(
        "\nsingle-row commit (fsync'd, auto-compaction on): {:.2} ms per commit, {} segments after {commits} commits",
        ms(per),
        w2.manifest().collection("c")?.segments.len()
    );
    w2.set_options(WriterOptions {
        auto_compact: false,
        ..Default::default()
    });

    // Open time of a large collection.
    let db3 = Database::create(dir.path().join("large"))?;
    let mut w3 = db3.writer()?;
    w3.create_collection("c", test_schema(), IndexSpec::default())?;
    let s3 = w3.add_space("c", space(), true)?;
    let mut done = 0;
    while done < open_rows {
        let m = (open_rows - done).min(n);
        w3.append("c", rows(m, done), &[(s3, &vectors[..m * DIM])])?;
        done += m;
    }
    drop(w3);
    drop(db3);
    let t = Instant::now();
    let db3 = Database::open(dir.path().join("large"))?;
    let snap3 = db3.snapshot()?;
    let open = t.elapsed();
    let t = Instant::now();
    snap3.search("c", s3, &queries[..DIM], 10, None)?;
    let first = t.elapsed();
    println!(
        "open of a {open_rows}-vector collection: {:.2} ms; first search (maps and verifies checksums of all columns and indexes): {:.0} ms",
        ms(open),
        ms(first)
    );
    Ok(())
}

/// Runs `scripts/bench_peers.py` on the same vectors and queries; returns its JSON.
fn python_peers(vectors: &[f32], queries: &[f32]) -> Result<serde_json::Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("vectors.f32"), as_bytes(vectors)).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("queries.f32"), as_bytes(queries)).map_err(|e| e.to_string())?;
    let dim = DIM.to_string();
    mirante_tests::python_peer("bench_peers.py", &[dir.path().as_os_str(), dim.as_ref()])
}

fn as_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
