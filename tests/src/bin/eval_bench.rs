//! Evaluation benchmark: `EVALUATE`'s exact ranking pass (both directions) on a COCO-5k-sized
//! problem (5,000 images, 5 captions each, 512-d) against the numpy evaluation most scripts use
//! (similarity matrix, argsort, ranks; `scripts/bench_eval_peer.py`) on the same vectors in the
//! same run, and against the time of the matrix product alone (numpy/OpenBLAS). The metrics of
//! both are printed so a disagreement shows.
//!
//! `cargo run --release -p mirante-tests --bin eval_bench -- [images] [captions_per_image]`

#![allow(clippy::unwrap_used)] // test tools: a failed unwrap is a failed run

use std::time::{Duration, Instant};

use mirante::metrics::rank_metric;
use mirante::query::EvalMetric;
use mirante::ranking::{Problem, exact_ranks};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 512;
/// Caption noise: a caption is its image's vector plus this much Gaussian noise per coordinate,
/// normalised, which puts text-to-image recall@1 in the range real models reach.
const NOISE: f32 = 0.25;

fn gaussian(rng: &mut StdRng) -> f32 {
    // Box-Muller.
    let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

fn best_of(reps: usize, mut f: impl FnMut()) -> Duration {
    (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_images = args.first().copied().unwrap_or(5000);
    let per_image = args.get(1).copied().unwrap_or(5);
    let n_texts = n_images * per_image;
    let mut rng = StdRng::seed_from_u64(5);
    let mut images: Vec<f32> = (0..n_images * DIM).map(|_| gaussian(&mut rng)).collect();
    mirante::storage::normalize(&mut images, DIM);
    let gold: Vec<u32> = (0..n_texts).map(|t| (t / per_image) as u32).collect();
    let mut texts: Vec<f32> = Vec::with_capacity(n_texts * DIM);
    for &g in &gold {
        let image = &images[g as usize * DIM..][..DIM];
        texts.extend(image.iter().map(|x| x + NOISE * gaussian(&mut rng)));
    }
    mirante::storage::normalize(&mut texts, DIM);
    println!(
        "# Mirante evaluation benchmark: {n_images} images x {n_texts} captions, {DIM}-d, {} threads\n",
        rayon::current_num_threads()
    );

    let problem = Problem {
        texts: texts.chunks_exact(DIM).collect(),
        images: images.chunks_exact(DIM).collect(),
        gold: gold.iter().map(|&g| Some(g)).collect(),
    };
    let mut ranks = None;
    let ours = best_of(3, || ranks = Some(exact_ranks(&problem)));
    let ranks = ranks.unwrap();
    // The scoring alone, same tiles and threads, no counting: the floor of this design.
    let scoring = best_of(3, || {
        use rayon::prelude::*;
        let total: f32 = problem
            .texts
            .par_chunks(48)
            .map(|strip| {
                let mut tile = vec![0f32; 48 * 48];
                let mut s = 0f32;
                for images in problem.images.chunks(48) {
                    let out = &mut tile[..strip.len() * images.len()];
                    mirante::storage::dot_block(strip, images, out);
                    s += out[0];
                }
                s
            })
            .sum();
        std::hint::black_box(total);
    });

    let (t2i, i2t) = (ranks.text_queries(), ranks.image_queries());
    let metrics = [
        EvalMetric::Recall(1),
        EvalMetric::Recall(5),
        EvalMetric::Recall(10),
        EvalMetric::Mrr,
        EvalMetric::MedianRank,
    ];

    let statement = statement_time(&texts, &images, per_image);
    let peer = numpy_peer(&texts, &images, &gold);
    println!("| metric | direction | Mirante | numpy |");
    println!("|---|---|---|---|");
    for (direction, queries) in [("text_to_image", &t2i), ("image_to_text", &i2t)] {
        for m in metrics {
            let ours = rank_metric(m, queries.iter().copied()).unwrap();
            let theirs = peer
                .as_ref()
                .ok()
                .and_then(|p| p["metrics"][direction][m.to_string()].as_f64());
            println!(
                "| {m} | {direction} | {ours:.4} | {} |",
                theirs.map_or("-".into(), |v| format!("{v:.4}"))
            );
        }
    }
    println!();
    println!("| step | time (s) | ratio |");
    println!("|---|---|---|");
    println!(
        "| Mirante exact ranks, both directions | {:.3} | 1.00 |",
        ours.as_secs_f64()
    );
    println!(
        "| Mirante scoring tiles alone (no counting) | {:.3} | {:.2} |",
        scoring.as_secs_f64(),
        scoring.as_secs_f64() / ours.as_secs_f64()
    );
    println!(
        "| `EVALUATE` statement on a database of these vectors (gallery, ranks, metrics, record) | {:.3} | {:.2} |",
        statement.as_secs_f64(),
        statement.as_secs_f64() / ours.as_secs_f64()
    );
    match &peer {
        Ok(p) => {
            let matmul = p["matmul_s"].as_f64().unwrap();
            let full = p["evaluate_s"].as_f64().unwrap();
            println!(
                "| numpy {} matrix product alone | {matmul:.3} | {:.2} |",
                p["numpy"].as_str().unwrap_or("?"),
                matmul / ours.as_secs_f64()
            );
            println!(
                "| numpy evaluation (matrix, argsort, ranks) | {full:.3} | {:.2} |",
                full / ours.as_secs_f64()
            );
            println!(
                "\nMirante is {:.1}x faster than the numpy evaluation and takes {:.2}x the time of \
                 numpy's matrix product alone.",
                full / ours.as_secs_f64(),
                ours.as_secs_f64() / matmul
            );
        }
        Err(e) => println!("| numpy peer | - | not run: {e} |"),
    }
}

/// The whole statement on a database holding the same vectors (one row per image with its
/// captions): gallery collection with duplicate detection, ranking, metrics, the record.
fn statement_time(texts: &[f32], images: &[f32], per_image: usize) -> Duration {
    use mirante::storage::{ImageData, IndexSpec, Metric, Modality, NewRow, Schema};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = mirante::storage::Database::create(&path).unwrap();
    let mut w = store.writer().unwrap();
    w.create_collection("coco", Schema::default(), IndexSpec::new("Flat"))
        .unwrap();
    let image_space = w
        .add_space(
            "coco",
            mirante_tests::test_space(Modality::Image, DIM, Metric::Cosine),
            true,
        )
        .unwrap();
    let text_space = w
        .add_space(
            "coco",
            mirante_tests::test_space(Modality::Text, DIM, Metric::Cosine),
            true,
        )
        .unwrap();
    let rows: Vec<NewRow> = (0..images.len() / DIM)
        .map(|i| NewRow {
            // Distinct bytes per image, the size of a small JPEG.
            image: Some(ImageData {
                bytes: (i as u64)
                    .to_le_bytes()
                    .into_iter()
                    .chain((0..16 * 1024).map(|b| (b % 251) as u8))
                    .collect(),
                source: format!("{i}.jpg"),
            }),
            texts: (0..per_image)
                .map(|k| format!("caption {k} of {i}"))
                .collect(),
            split: Some("test".into()),
            metadata: Vec::new(),
        })
        .collect();
    w.append("coco", rows, &[(image_space, images), (text_space, texts)])
        .unwrap();
    drop(w);
    drop(store);
    let db = mirante::Database::open(&path).unwrap();
    best_of(2, || {
        db.sql(
            "EVALUATE recall@1, recall@5, recall@10, mrr, median_rank ON coco WHERE split = 'test'",
        )
        .unwrap();
    })
}

/// Runs `scripts/bench_eval_peer.py` on the same vectors; returns its JSON.
fn numpy_peer(texts: &[f32], images: &[f32], gold: &[u32]) -> Result<serde_json::Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    std::fs::write(dir.path().join("texts.f32"), bytes(texts)).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("images.f32"), bytes(images)).map_err(|e| e.to_string())?;
    let gold: Vec<u8> = gold.iter().flat_map(|g| g.to_le_bytes()).collect();
    std::fs::write(dir.path().join("gold.u32"), gold).map_err(|e| e.to_string())?;
    let dim = DIM.to_string();
    mirante_tests::python_peer(
        "bench_eval_peer.py",
        &[dir.path().as_os_str(), dim.as_ref()],
    )
}
