//! Query engine benchmarks.
//!
//! 1. End-to-end `SEARCH ... BY TEXT` latency on a collection of `rows` rows, broken into its
//!    parts, next to the two costs the engine cannot avoid measured alone in the same run: the
//!    model's text forward pass and a bare FAISS search of the same index type over the same
//!    vectors. What is left (parse, bind, snapshot, filters, exact re-scoring, merge, row fetch,
//!    result set) is the engine's overhead.
//! 2. `IMPORT` throughput of a folder of JPEGs, with the time split between decoding and
//!    resizing, the model, and storage, each measured alone on the same images.
//!
//! `cargo run --release -p mirante-tests --bin query_bench -- [--model DIR] [--rows N]
//! [--index FACTORY] [--images N]`; the default model is the tiny test checkpoint (24-d); pass
//! a full-size one (e.g. written by scripts/bench_encoders.py) for realistic dimensions.

#![allow(clippy::unwrap_used)] // benchmark tool: a failed unwrap is a failed run

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use faiss::Index;
use mirante::query;
use mirante::storage::{ImageData, NewRow};
use mirante::training::{DualEncoder, ImageSource, PipelineOptions, default_device};
use mirante::{Cell, Database};
use mirante_tests::{clustered, repo_root, tiny_clip};

struct Args {
    model: PathBuf,
    rows: usize,
    index: String,
    images: usize,
    queries: usize,
}

fn args() -> Args {
    let mut a = Args {
        model: tiny_clip(),
        rows: 100_000,
        index: "HNSW32".into(),
        images: 256,
        queries: 50,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--model" => a.model = value.into(),
            "--rows" => a.rows = value.parse().unwrap(),
            "--index" => a.index = value,
            "--images" => a.images = value.parse().unwrap(),
            "--queries" => a.queries = value.parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let a = args();
    let model = a.model.canonicalize().unwrap();
    println!(
        "# Mirante query benchmarks: model {}, {} rows, index {}\n",
        model.display(),
        a.rows,
        a.index
    );
    search_latency(&a, &model);
    import_throughput(&a, &model);
}

fn search_latency(a: &Args, model: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("db");
    let enc = DualEncoder::load(model, &default_device()).unwrap();
    let dim = enc.model.embedding_dim();
    {
        let db = Database::open(&path).unwrap();
        db.sql(&format!(
            "CREATE COLLECTION images WITH (model = '{}', index = '{}')",
            model.display(),
            a.index
        ))
        .unwrap();
    }
    // Rows go in through storage with synthetic vectors in the model's spaces: embedding 100k
    // real images is the import benchmark's business, not this one's.
    let vectors = clustered(a.rows, dim, 1000, 7);
    let t = Instant::now();
    {
        let store = mirante::storage::Database::open(&path).unwrap();
        let mut w = store.writer().unwrap();
        let snap = w.snapshot();
        let c = snap.collection("images").unwrap();
        let (img, txt) = (c.active_image.unwrap(), c.active_text.unwrap());
        let rows: Vec<NewRow> = (0..a.rows)
            .map(|i| NewRow {
                image: Some(ImageData {
                    bytes: Vec::new(),
                    source: format!("photos/{i:06}.jpg"),
                }),
                texts: vec![format!("caption of row {i}")],
                split: Some(if i % 10 == 0 { "test" } else { "train" }.into()),
                metadata: Vec::new(),
            })
            .collect();
        w.append("images", rows, &[(img, &vectors), (txt, &vectors)])
            .unwrap();
    }
    println!(
        "built {} rows with {} indexes in {:.1} s",
        a.rows,
        a.index,
        t.elapsed().as_secs_f64()
    );

    let db = Database::open(&path).unwrap();
    let queries: Vec<String> = (0..a.queries)
        .map(|i| format!("a photograph of scene number {i} at the beach"))
        .collect();
    let sql = |q: &str| format!("SEARCH images BY TEXT '{q}' LIMIT 10");
    for q in queries.iter().take(3) {
        db.sql(&sql(q)).unwrap();
    }
    let mut total = Vec::new();
    for q in &queries {
        let s = Instant::now();
        let r = db.sql(&sql(q)).unwrap().remove(0).into_result_set();
        total.push(s.elapsed());
        assert_eq!(r.rows.len(), 10);
        assert!(matches!(r.rows[0][0], Cell::Int(1)));
    }
    // Parts, on the same queries. Per call, everything but the query embedding is the wall time
    // minus the engine's own embed timing of that call (the model's cost varies by a few ms
    // between calls, which would swamp a difference of medians).
    let snap = db.snapshot().unwrap();
    let (mut parse, mut embed, mut search, mut fetch) = (vec![], vec![], vec![], vec![]);
    let (mut beyond_model, mut to_rows) = (vec![], vec![]);
    for q in &queries {
        let s = Instant::now();
        let stmt = query::parse(&sql(q)).unwrap().remove(0);
        let _ = query::bind(stmt, &mirante::SnapshotCatalog(&snap)).unwrap();
        parse.push(s.elapsed());
        let s = Instant::now();
        let r = db
            .collection("images")
            .unwrap()
            .search_text(q)
            .limit(10)
            .run()
            .unwrap();
        beyond_model.push(s.elapsed().saturating_sub(r.timings.embed));
        let s = Instant::now();
        let set = r.to_result_set();
        to_rows.push(s.elapsed());
        assert_eq!(set.rows.len(), 10);
        embed.push(r.timings.embed);
        search.push(r.timings.search);
        fetch.push(r.timings.fetch);
    }
    // The unavoidable parts alone: the text forward pass, and bare FAISS over the same vectors.
    let mut forward = Vec::new();
    let mut qvecs = Vec::new();
    for q in &queries {
        let s = Instant::now();
        let v = enc.embed_texts(&[q.as_str()]).unwrap().remove(0);
        forward.push(s.elapsed());
        qvecs.push(v);
    }
    let mut bare =
        faiss::index_factory(dim as u32, &a.index, faiss::MetricType::InnerProduct).unwrap();
    if !bare.is_trained() {
        bare.train(&vectors).unwrap();
    }
    bare.add(&vectors).unwrap();
    let mut faiss_t = Vec::new();
    for v in &qvecs {
        let s = Instant::now();
        let r = bare.search(v, 10 + 16).unwrap();
        faiss_t.push(s.elapsed());
        assert_eq!(r.labels.len(), 26);
    }
    let (total, forward, faiss_t) = (median(total), median(forward), median(faiss_t));
    let overhead = (median(beyond_model) + median(parse.clone()) + median(to_rows.clone()))
        .saturating_sub(faiss_t);
    println!(
        "\n## SEARCH latency (median of {} queries, LIMIT 10)\n",
        queries.len()
    );
    println!("| part | ms |\n|---|---|");
    println!(
        "| end to end, `db.sql(\"SEARCH ...\")` | {:.3} |",
        ms(total)
    );
    println!("| parse + bind | {:.3} |", ms(median(parse)));
    println!("| embed the query (engine) | {:.3} |", ms(median(embed)));
    println!(
        "| search (engine: FAISS + filter + exact re-score + merge) | {:.3} |",
        ms(median(search))
    );
    println!("| fetch 10 rows | {:.3} |", ms(median(fetch)));
    println!("| result set | {:.3} |", ms(median(to_rows)));
    println!("| model forward alone | {:.3} |", ms(forward));
    println!(
        "| bare FAISS `{}` search alone (k+16) | {:.3} |",
        a.index,
        ms(faiss_t)
    );
    println!(
        "| **engine overhead** = parse + bind + (call - its embed time) + result set - bare FAISS | **{:.3}** |",
        ms(overhead)
    );
    println!(
        "\nJSON {}",
        serde_json::json!({
            "rows": a.rows, "dim": dim, "index": a.index,
            "total_ms": ms(total), "forward_ms": ms(forward), "faiss_ms": ms(faiss_t),
            "overhead_ms": ms(overhead),
        })
    );
}

/// Writes `n` distinct 640x480 JPEGs (crops of the fixture photographs) and a metadata.jsonl.
fn jpeg_folder(dir: &Path, n: usize) {
    let sources: Vec<image::RgbImage> = ["rocket.jpg", "chelsea.png", "camera.png", "horse.png"]
        .iter()
        .map(|f| {
            image::open(repo_root().join("training/tests/fixtures/images").join(f))
                .unwrap()
                .resize_exact(900, 700, image::imageops::FilterType::Triangle)
                .to_rgb8()
        })
        .collect();
    let mut meta = String::new();
    for i in 0..n {
        let src = &sources[i % sources.len()];
        let (x, y) = ((i * 37 % 260) as u32, (i * 53 % 220) as u32);
        let crop = image::imageops::crop_imm(src, x, y, 640, 480).to_image();
        let name = format!("{i:05}.jpg");
        crop.save(dir.join(&name)).unwrap();
        meta.push_str(&format!(
            "{}\n",
            serde_json::json!({"file_name": name, "text": [format!("photo {i}"), format!("crop at {x},{y}")]})
        ));
    }
    std::fs::write(dir.join("metadata.jsonl"), meta).unwrap();
}

fn import_throughput(a: &Args, model: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("jpegs");
    std::fs::create_dir_all(&folder).unwrap();
    jpeg_folder(&folder, a.images);
    let db = Database::open(tmp.path().join("db")).unwrap();
    db.sql(&format!(
        "CREATE COLLECTION images WITH (model = '{}')",
        model.display()
    ))
    .unwrap();
    let s = Instant::now();
    db.sql(&format!("IMPORT INTO images FROM '{}'", folder.display()))
        .unwrap();
    let import = s.elapsed();

    // The parts alone, on the same files.
    let enc = DualEncoder::load(model, &default_device()).unwrap();
    let files: Vec<PathBuf> = (0..a.images)
        .map(|i| folder.join(format!("{i:05}.jpg")))
        .collect();
    let s = Instant::now();
    let pixels: Vec<Vec<f32>> = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            enc.pixels(&bytes, "bench").unwrap()
        })
        .collect();
    let decode_one_thread = s.elapsed();
    let s = Instant::now();
    let mut img_vecs = Vec::new();
    for chunk in pixels.chunks(32) {
        img_vecs.extend(enc.embed_pixels(chunk).unwrap());
    }
    let model_images = s.elapsed();
    let texts: Vec<String> = (0..a.images)
        .flat_map(|i| [format!("photo {i}"), format!("crop {i}")])
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let s = Instant::now();
    let txt_vecs =
        mirante::training::embed_texts(&enc, &refs, &PipelineOptions::default()).unwrap();
    let model_texts = s.elapsed();
    // Decode and model overlapped, as the import runs them.
    let sources: Vec<ImageSource> = files.iter().cloned().map(ImageSource::Path).collect();
    let s = Instant::now();
    mirante::training::embed_images(&enc, &sources, &PipelineOptions::default()).unwrap();
    let pipeline = s.elapsed();
    // Storage alone: the same bytes and vectors appended in one commit.
    let store = mirante::storage::Database::open(tmp.path().join("db")).unwrap();
    drop(db);
    let mut w = store.writer().unwrap();
    let snap = w.snapshot();
    let c = snap.collection("images").unwrap();
    let (img, txt) = (c.active_image.unwrap(), c.active_text.unwrap());
    let rows: Vec<NewRow> = files
        .iter()
        .enumerate()
        .map(|(i, f)| NewRow {
            image: Some(ImageData {
                bytes: std::fs::read(f).unwrap(),
                source: f.display().to_string(),
            }),
            texts: vec![texts[2 * i].clone(), texts[2 * i + 1].clone()],
            split: None,
            metadata: Vec::new(),
        })
        .collect();
    let flat_img: Vec<f32> = img_vecs.into_iter().flatten().collect();
    let flat_txt: Vec<f32> = txt_vecs.into_iter().flatten().collect();
    let s = Instant::now();
    w.append("images", rows, &[(img, &flat_img), (txt, &flat_txt)])
        .unwrap();
    let storage = s.elapsed();
    let rate = |d: Duration| a.images as f64 / d.as_secs_f64();
    println!(
        "\n## IMPORT of {} 640x480 JPEGs with 2 captions each ({} threads)\n",
        a.images,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| part | s | rows/s |\n|---|---|---|");
    println!(
        "| `IMPORT INTO` end to end | {:.2} | {:.1} |",
        import.as_secs_f64(),
        rate(import)
    );
    println!(
        "| decode + resize alone, one thread | {:.2} | {:.1} |",
        decode_one_thread.as_secs_f64(),
        rate(decode_one_thread)
    );
    println!(
        "| image model alone (batch 32) | {:.2} | {:.1} |",
        model_images.as_secs_f64(),
        rate(model_images)
    );
    println!(
        "| decode workers overlapped with the image model | {:.2} | {:.1} |",
        pipeline.as_secs_f64(),
        rate(pipeline)
    );
    println!(
        "| text model alone ({} captions) | {:.2} | {:.1} |",
        texts.len(),
        model_texts.as_secs_f64(),
        rate(model_texts)
    );
    println!(
        "| storage alone (one commit, Flat) | {:.2} | {:.1} |",
        storage.as_secs_f64(),
        rate(storage)
    );
    println!(
        "\nJSON {}",
        serde_json::json!({
            "images": a.images, "import_s": import.as_secs_f64(),
            "decode_s": decode_one_thread.as_secs_f64(), "model_images_s": model_images.as_secs_f64(),
            "pipeline_s": pipeline.as_secs_f64(), "model_texts_s": model_texts.as_secs_f64(),
            "storage_s": storage.as_secs_f64(),
        })
    );
}
