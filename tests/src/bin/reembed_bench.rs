//! Re-embedding benchmark: `REEMBED` throughput against the embedding work alone (the same
//! rows through the same encoder pipeline, no storage) in the same run, and the latency of
//! searches that a reader thread runs throughout the re-embed against the same searches before
//! it (the time readers are blocked should be none).
//!
//! `cargo run --release -p mirante-tests --bin reembed_bench -- [--model DIR] [--rows N]
//! [--segments N]`; the default model is the tiny test checkpoint.

#![allow(clippy::unwrap_used)] // benchmark tool: a failed unwrap is a failed run

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mirante::Database;
use mirante::training::{
    DualEncoder, ImageSource, PipelineOptions, default_device, embed_images, embed_texts,
};
use mirante_tests::tiny_clip;

fn main() {
    let (mut model, mut rows, mut segments) = (tiny_clip(), 2000usize, 4usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--model" => model = PathBuf::from(value),
            "--rows" => rows = value.parse().unwrap(),
            "--segments" => segments = value.parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    // The same weights under other folders: REEMBED's work is real, the results comparable.
    let copies: Vec<PathBuf> = (0..2)
        .map(|k| {
            let copy = tmp.path().join(format!("model-copy-{k}"));
            mirante_tests::copy_model(&model, &copy);
            copy
        })
        .collect();
    let reembed = |db: &Database, k: usize| {
        let start = Instant::now();
        db.sql(&format!(
            "REEMBED images USING MODEL '{}'",
            copies[k].display()
        ))
        .unwrap();
        start.elapsed()
    };
    let per_segment = rows / segments;
    let listing = tmp.path().join("rows.csv");
    mirante_tests::photo_rows_csv(&listing, per_segment);
    let path = tmp.path().join("db");
    let db = Database::open(&path).unwrap();
    db.sql(&format!(
        "CREATE COLLECTION images WITH (model = '{}')",
        model.display()
    ))
    .unwrap();
    for _ in 0..segments {
        db.sql(&format!("IMPORT INTO images FROM '{}'", listing.display()))
            .unwrap();
    }
    let total = per_segment * segments;

    // The peer: the same embedding work without storage.
    let encoder = DualEncoder::load(&model, &default_device()).unwrap();
    // The imported rows, read back from the listing, once per segment.
    let listed: Vec<(String, String)> = std::fs::read_to_string(&listing)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (image, text) = l.split_once(',').unwrap();
            (image.to_string(), text.to_string())
        })
        .collect();
    let sources: Vec<ImageSource> = (0..segments)
        .flat_map(|_| &listed)
        .map(|(image, _)| ImageSource::Bytes {
            source: image.clone(),
            bytes: std::fs::read(image).unwrap(),
        })
        .collect();
    let texts: Vec<String> = (0..segments)
        .flat_map(|_| &listed)
        .map(|(_, text)| text.clone())
        .collect();
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let options = PipelineOptions::default();
    let start = Instant::now();
    embed_images(&encoder, &sources, &options).unwrap();
    embed_texts(&encoder, &text_refs, &options).unwrap();
    let alone = start.elapsed();

    // REEMBED alone on the machine.
    let quiet = reembed(&db, 0);

    // Readers: the same search before and during a second re-embed, from another handle.
    let search = "SEARCH images BY TEXT 'a photo of a cat' LIMIT 10";
    let reader = Database::open(&path).unwrap();
    reader.sql(search).unwrap(); // loads the query model
    let mut before = Vec::new();
    for _ in 0..200 {
        let s = Instant::now();
        reader.sql(search).unwrap();
        before.push(s.elapsed());
    }
    let running = AtomicBool::new(true);
    let (during, reembed) = std::thread::scope(|scope| {
        let readers = scope.spawn(|| {
            let mut lat = Vec::new();
            while running.load(Ordering::Relaxed) {
                let s = Instant::now();
                reader.sql(search).unwrap();
                lat.push(s.elapsed());
            }
            lat
        });
        let took = reembed(&db, 1);
        running.store(false, Ordering::Relaxed);
        (readers.join().unwrap(), took)
    });
    let stats = |mut v: Vec<Duration>| {
        v.sort();
        (
            v[v.len() / 2],
            v[v.len() * 99 / 100],
            v[v.len() - 1],
            v.len(),
        )
    };
    let (b_median, b_p99, b_max, b_count) = stats(before);
    let (d_median, d_p99, d_max, d_count) = stats(during);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "# REEMBED of {total} rows ({segments} segments, 1 caption each), model {}\n",
        model.display()
    );
    println!("| | seconds | rows/s | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| embedding alone (images + captions, same pipeline) | {:.2} | {:.0} | 1.00 |",
        alone.as_secs_f64(),
        total as f64 / alone.as_secs_f64()
    );
    for (label, took) in [("alone", quiet), ("with the reader running", reembed)] {
        println!(
            "| `REEMBED` {label} (embedding, columns, indexes, per-segment commits, switch) | {:.2} | {:.0} | {:.2} |",
            took.as_secs_f64(),
            total as f64 / took.as_secs_f64(),
            alone.as_secs_f64() / took.as_secs_f64()
        );
    }
    println!("\n| searches | median ms | p99 ms | max ms | count |");
    println!("|---|---|---|---|---|");
    println!(
        "| before | {:.2} | {:.2} | {:.2} | {b_count} |",
        ms(b_median),
        ms(b_p99),
        ms(b_max)
    );
    println!(
        "| during REEMBED | {:.2} | {:.2} | {:.2} | {d_count} |",
        ms(d_median),
        ms(d_p99),
        ms(d_max)
    );
}
