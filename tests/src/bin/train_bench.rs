//! Training benchmark: optimisation steps (forward with the CLIP loss, backward, gradient
//! clipping, AdamW) on a small CLIP model, Mirante against PyTorch/transformers on the same
//! checkpoint and the same batch of 32 pairs in the same run (`scripts/bench_training.py` writes
//! both and times PyTorch).
//!
//! `cargo run --release -p mirante-tests --bin train_bench` (needs torch and transformers); on a
//! GPU build `MIRANTE_DEVICE=cuda MIRANTE_PRECISION=bf16 MIRANTE_BENCH_BATCH=256` runs both
//! sides on the GPU in bf16 mixed precision.

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::time::Instant;

// Training allocates and frees parameter-sized buffers at every step; glibc's allocator maps and
// unmaps them each time (page faults, zeroing, TLB shootdowns). mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use mirante::training::default_device;
use mirante::training::finetune::{FinetuneConfig, PairData, Precision, TrainImage, finetune};
use mirante::training::train::{AdamWConfig, Trainable};

fn main() {
    mirante_tests::keep_freed_memory();
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { mirante::training::park_idle_workers() };
    let dir = tempfile::tempdir().unwrap();
    eprintln!("writing the checkpoint and timing PyTorch...");
    let torch = mirante_tests::python_peer("bench_training.py", &[dir.path().as_os_str()])
        .unwrap_or_else(|e| panic!("bench_training.py failed: {e}"));
    let batch = candle_core_batch(dir.path());
    let device = default_device();
    let model = Trainable::load(dir.path(), &device).unwrap();
    let precision = std::env::var("MIRANTE_PRECISION")
        .ok()
        .map(|p| Precision::parse(&p).unwrap_or_else(|| panic!("MIRANTE_PRECISION={p}?")));
    let steps = torch["steps"].as_u64().unwrap() as usize;
    let n = batch.images.len();
    // One epoch is one step of the whole batch (one caption per image).
    let config = FinetuneConfig {
        epochs: steps + 1,
        batch_size: n,
        optimiser: AdamWConfig::default(),
        patience: usize::MAX,
        precision,
        ..FinetuneConfig::default()
    };
    let out = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let report = finetune(
        &model,
        &batch,
        &config,
        out.path(),
        |_| Ok(None),
        |_| Ok::<_, mirante::training::Error>(None),
    )
    .unwrap();
    let total = start.elapsed().as_secs_f64();
    // The first epoch is the warm-up, as in the peer; each epoch also saves a checkpoint, which
    // is not part of a step: take the fastest epochs' own throughput.
    let mut rates: Vec<f64> = report.epochs[1..]
        .iter()
        .map(|e| e.samples_per_second)
        .collect();
    rates.sort_by(f64::total_cmp);
    let ours = rates[rates.len() / 2];
    let theirs = torch["samples_per_second"].as_f64().unwrap();
    println!(
        "# Training steps, small CLIP (4+4 layers x 256, 96 px), batch {n}, {} on {:?} \
         (PyTorch {} on {}), {} threads\n",
        report.precision.name(),
        device.location(),
        torch["precision"].as_str().unwrap_or("fp32"),
        torch["device"].as_str().unwrap_or("cpu"),
        torch["threads"]
    );
    println!("| | samples/s | ratio |");
    println!("|---|---|---|");
    println!(
        "| PyTorch {} + transformers (AdamW, clip 1.0) | {theirs:.1} | 1.00 |",
        torch["torch"].as_str().unwrap_or("?")
    );
    println!(
        "| Mirante `finetune` (median epoch) | {ours:.1} | {:.2} |",
        ours / theirs
    );
    println!(
        "\n(Mirante's {} epochs took {total:.1} s with checkpoint saves.)",
        steps + 1
    );
}

/// The peer's batch as pairs (pixels already preprocessed, one caption per image).
fn candle_core_batch(dir: &std::path::Path) -> PairData {
    let tensors =
        candle_core::safetensors::load(dir.join("batch.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let pixels = &tensors["pixel_values"];
    let ids = &tensors["input_ids"];
    let n = pixels.dims()[0];
    let flat: Vec<f32> = pixels.flatten_all().unwrap().to_vec1().unwrap();
    let per = flat.len() / n;
    let ids: Vec<Vec<i64>> = ids.to_vec2().unwrap();
    PairData {
        images: flat
            .chunks(per)
            .map(|p| TrainImage::Pixels(p.to_vec()))
            .collect(),
        captions: ids
            .into_iter()
            .map(|r| r.into_iter().map(|x| x as u32).collect())
            .collect(),
        pairs: (0..n).map(|i| vec![i]).collect(),
        ..PairData::default()
    }
}
