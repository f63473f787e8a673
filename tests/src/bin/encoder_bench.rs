//! Encoder throughput against transformers/PyTorch on the same full-size random-weight
//! checkpoints (CLIP ViT-B/32, SigLIP base patch16 224), fp32, batch 32, measured in one run:
//! `scripts/bench_encoders.py` writes the checkpoints and times PyTorch, then this binary loads
//! the same files and times Mirante. Also times image decode + resize against Pillow.
//!
//! `cargo run --release -p mirante-tests --bin encoder_bench`; on a GPU build,
//! `MIRANTE_DEVICE=cuda MIRANTE_BENCH_BATCH=256` times both sides on the GPU.

#![allow(clippy::unwrap_used)] // a benchmark tool: a failed unwrap is a failed run

use std::time::Instant;

use mirante::training::{DualEncoder, default_device};
use rand::{Rng, SeedableRng};

fn timeit(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() / iters as f64
}

/// With a folder argument, checkpoints and PyTorch timings are kept there and reused by later
/// runs (to iterate on Mirante's side); without one, everything is measured afresh.
fn main() {
    // SAFETY: first thing in `main`, before any other thread exists. The `mirante` binary
    // makes the same call, so the bench measures what the tool runs.
    unsafe { mirante::training::park_idle_workers() };
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    let saved = dir.join("torch.json");
    let torch: serde_json::Value = if saved.is_file() {
        eprintln!(
            "reusing PyTorch timings from {} (delete it to remeasure)",
            saved.display()
        );
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap()
    } else {
        eprintln!("writing checkpoints and timing PyTorch (a few minutes)...");
        std::fs::create_dir_all(&dir).unwrap();
        let torch = mirante_tests::python_peer("bench_encoders.py", &[dir.as_os_str()])
            .unwrap_or_else(|e| panic!("bench_encoders.py failed: {e}"));
        std::fs::write(&saved, torch.to_string()).unwrap();
        torch
    };
    let device = default_device();
    let bs = torch["batch"].as_u64().unwrap_or(32) as usize;
    println!(
        "# Encoder throughput, fp32, batch {bs}, on {:?} (PyTorch {} on {}, {} threads)\n",
        device.location(),
        torch["torch"],
        torch["device"].as_str().unwrap_or("cpu"),
        torch["threads"]
    );
    println!(
        "| model | PyTorch images/s | Mirante images/s | ratio | PyTorch texts/s | Mirante texts/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for name in ["clip-b32", "siglip-base"] {
        let enc = DualEncoder::load(&dir.join(name), &device).unwrap();
        let pixels: Vec<Vec<f32>> = (0..bs)
            .map(|_| {
                (0..3 * 224 * 224)
                    .map(|_| rng.random_range(-2.0f32..2.0))
                    .collect()
            })
            .collect();
        let seq = torch[name]["seq_len"].as_u64().unwrap() as usize;
        let ids: Vec<Vec<u32>> = (0..bs)
            .map(|_| (0..seq).map(|_| rng.random_range(0..200)).collect())
            .collect();
        let iters = if device.is_cuda() { 10 } else { 3 };
        let ti = timeit(iters, || {
            enc.embed_pixels(&pixels).unwrap();
        });
        let tt = timeit(iters, || {
            enc.embed_token_ids(&ids).unwrap();
        });
        let (pi, pt) = (
            torch[name]["images_per_s"].as_f64().unwrap(),
            torch[name]["texts_per_s"].as_f64().unwrap(),
        );
        let (mi, mt) = (bs as f64 / ti, bs as f64 / tt);
        println!(
            "| {name} | {pi:.1} | {mi:.1} | {:.2} | {pt:.1} | {mt:.1} | {:.2} |",
            mi / pi,
            mt / pt
        );
    }
    // Decode + preprocess one JPEG with the CLIP pipeline (224 shortest edge, bicubic, crop):
    // CPU work, measured by CPU runs only.
    let Some(pil) = torch["decode_preprocess"]["images_per_s"].as_f64() else {
        return;
    };
    let jpeg = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../training/tests/fixtures/images/rocket.jpg");
    let bytes = std::fs::read(&jpeg).unwrap();
    let enc = DualEncoder::load(&dir.join("clip-b32"), &device).unwrap();
    let n = 50;
    let t = timeit(2, || {
        for _ in 0..n {
            enc.pixels(&bytes, "rocket.jpg").unwrap();
        }
    });
    let ours = n as f64 / t;
    println!(
        "\n| decode + preprocess rocket.jpg (640x427 JPEG) to 224x224, one thread | Pillow + transformers | Mirante | ratio |"
    );
    println!("|---|---|---|---|");
    println!("| images/s | {pil:.1} | {ours:.1} | {:.2} |", ours / pil);
}
