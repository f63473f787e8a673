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
use mirante_tests::{repo_root, tiny_clip};

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
            std::fs::create_dir_all(&copy).unwrap();
            for entry in std::fs::read_dir(&model).unwrap() {
                let entry = entry.unwrap();
                if entry.path().is_file() {
                    std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
                }
            }
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
    // Full-size photographs, repeated, with one caption each.
    let photos = repo_root().join("training/tests/fixtures/images");
    let names = [
        "camera.png",
        "chelsea.png",
        "horse.png",
        "logo.png",
        "rocket.jpg",
    ];
    let per_segment = rows / segments;
    let mut csv = String::from("image,text\n");
    for i in 0..per_segment {
        let name = names[i % names.len()];
        csv.push_str(&format!(
            "{},photo {i} of {name}\n",
            photos.join(name).display()
        ));
    }
    let listing = tmp.path().join("rows.csv");
    std::fs::write(&listing, csv).unwrap();
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
    let sources: Vec<ImageSource> = (0..total)
        .map(|i| {
            let name = names[(i % per_segment) % names.len()];
            ImageSource::Bytes {
                source: name.into(),
                bytes: std::fs::read(photos.join(name)).unwrap(),
            }
        })
        .collect();
    let texts: Vec<String> = (0..total)
        .map(|i| format!("photo {} of x", i % per_segment))
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
