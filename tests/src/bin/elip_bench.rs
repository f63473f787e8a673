//! ELIP benchmark on the default model (CLIP, 64 px, 4 layers x 128) with a 10-prompt mapper:
//! re-ranking latency per query against K (10, 50, 100 candidates, each encoded under the
//! query's prompts) and training samples/s (B x B prompted passes, InfoNCE, backward into the
//! mapper, clipping, AdamW), Mirante against the same computation in PyTorch/transformers
//! (`scripts/bench_elip.py`) on the same weights and inputs, in the same run. The two losses of
//! the batch are printed side by side as a check that both compute the same thing.
//!
//! `cargo run --release -p mirante-tests --bin elip_bench` (needs torch and transformers)

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::collections::HashMap;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor};
use mirante::training::elip::{ElipConfig, ElipMapper, backbone_logits, batch_loss, rerank_scores};
use mirante::training::train::{AdamWConfig, Optimizer};
use mirante::{DEFAULT_MODEL, Models};
use rand::{Rng, SeedableRng};

const KS: [usize; 3] = [10, 50, 100];
const BATCH: usize = 8;
const PROMPTS: usize = 10;
const STEPS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn normalised(rng: &mut rand::rngs::StdRng, d: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn main() {
    mirante_tests::keep_freed_memory();
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { mirante::training::park_idle_workers() };
    let backbone = Models::new(Device::Cpu).load(DEFAULT_MODEL).unwrap();
    let enc = &backbone.encoder;
    let (width, _) = enc.model.vision_shape();
    let config = ElipConfig::for_model(&enc.model, PROMPTS, width, false).unwrap();
    let mapper = ElipMapper::new(config, 0, &Device::Cpu).unwrap();
    let work = tempfile::tempdir().unwrap();
    mapper.save(&work.path().join("mapper")).unwrap();

    let s = enc.model.image_size();
    let d = enc.model.embedding_dim();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut pixels = |n: usize| -> Vec<f32> {
        (0..n * 3 * s * s)
            .map(|_| rng.random_range(-1.5f32..1.5))
            .collect()
    };
    let candidates = pixels(KS[2]);
    let batch = pixels(BATCH);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let query = normalised(&mut rng, d);
    let texts: Vec<f32> = (0..BATCH).flat_map(|_| normalised(&mut rng, d)).collect();
    let cpu = Device::Cpu;
    let tensors: HashMap<String, Tensor> = [
        (
            "candidates",
            Tensor::from_slice(&candidates, (KS[2], 3, s, s), &cpu),
        ),
        ("query", Tensor::from_slice(&query, (1, d), &cpu)),
        ("pixels", Tensor::from_slice(&batch, (BATCH, 3, s, s), &cpu)),
        ("texts", Tensor::from_slice(&texts, (BATCH, d), &cpu)),
    ]
    .into_iter()
    .map(|(k, t)| (k.to_string(), t.unwrap()))
    .collect();
    candle_core::safetensors::save(&tensors, work.path().join("inputs.safetensors")).unwrap();

    eprintln!("timing PyTorch...");
    let torch = mirante_tests::python_peer(
        "bench_elip.py",
        &[enc.folder().as_os_str(), work.path().as_os_str()],
    )
    .unwrap_or_else(|e| panic!("bench_elip.py failed: {e}"));

    let per = 3 * s * s;
    let candidate_rows: Vec<Vec<f32>> = candidates.chunks(per).map(<[f32]>::to_vec).collect();
    println!(
        "# ELIP on the default model ({PROMPTS} prompts), CPU, PyTorch {} with {} threads\n",
        torch["torch"].as_str().unwrap_or("?"),
        torch["threads"]
    );
    println!("| re-rank one query | PyTorch ms | Mirante ms | speed ratio |");
    println!("|---|---|---|---|");
    for k in KS {
        let rows = &candidate_rows[..k];
        rerank_scores(enc, &mapper, &query, rows, 64).unwrap();
        let times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                rerank_scores(enc, &mapper, &query, rows, 64).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        let ours = median(times);
        let theirs = torch["rerank_seconds"][k.to_string()].as_f64().unwrap();
        println!(
            "| K = {k} | {:.1} | {:.1} | {:.2} |",
            theirs * 1e3,
            ours * 1e3,
            theirs / ours
        );
    }

    let px = &tensors["pixels"];
    let tx = &tensors["texts"];
    let logits = backbone_logits(enc).unwrap();
    let loss = batch_loss(&enc.model, &mapper, px, tx, logits, None).unwrap();
    let ours_loss = f64::from(loss.to_scalar::<f32>().unwrap());
    let mut opt = Optimizer::over(
        &mapper.varmap,
        AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
        |_| true,
        false,
    )
    .unwrap();
    let mut step = || {
        let loss = batch_loss(&enc.model, &mapper, px, tx, logits, None).unwrap();
        let grads = loss.backward().unwrap();
        let norm = opt.gradient_norm(&grads).unwrap();
        let scale = if norm > 1.0 { 1.0 / (norm + 1e-6) } else { 1.0 };
        opt.step_scaled(&grads, scale).unwrap();
    };
    step();
    let t = Instant::now();
    for _ in 0..STEPS {
        step();
    }
    let ours = (STEPS * BATCH) as f64 / t.elapsed().as_secs_f64();
    let theirs = torch["samples_per_second"].as_f64().unwrap();
    println!(
        "\n| training, batch {BATCH} ({} prompted passes per step) | samples/s | ratio |",
        BATCH * BATCH
    );
    println!("|---|---|---|");
    println!("| PyTorch (AdamW, clip 1.0) | {theirs:.1} | 1.00 |");
    println!("| Mirante | {ours:.1} | {:.2} |", ours / theirs);
    println!(
        "\n(batch loss before training: Mirante {ours_loss:.6}, PyTorch {:.6})",
        torch["loss"].as_f64().unwrap()
    );
}
