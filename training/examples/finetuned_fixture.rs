//! Writes `training/tests/fixtures/siglip-tiny-finetuned/`: the tiny SigLIP checkpoint after a
//! few fine-tuning steps in Mirante, saved by `save_checkpoint`. `scripts/make_training_fixtures.py`
//! then loads it with transformers and records reference embeddings, and `tests/parity.rs`
//! checks that Mirante and transformers read the saved checkpoint the same way.
//!
//! `cargo run -p mirante-training --example finetuned_fixture`

#![allow(clippy::unwrap_used)] // a fixture generator: a failed unwrap is a failed run

use std::path::Path;

use mirante_training::Device;
use mirante_training::finetune::{FinetuneConfig, PairData, TrainImage, finetune};
use mirante_training::train::{AdamWConfig, Trainable};

fn main() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let t = Trainable::load(&fixtures.join("siglip-tiny"), &Device::Cpu).unwrap();
    let photos = [
        ("chelsea.png", "a cat"),
        ("camera.png", "a man with a camera"),
        ("rocket.jpg", "a rocket"),
        ("horse.png", "a horse"),
    ];
    let mut data = PairData::default();
    for (i, (file, caption)) in photos.iter().enumerate() {
        let bytes = std::fs::read(fixtures.join("images").join(file)).unwrap();
        data.images
            .push(TrainImage::Pixels(t.encoder.pixels(&bytes, file).unwrap()));
        data.captions
            .push(t.encoder.tokenizer.encode(caption).unwrap().ids);
        data.pairs.push(vec![i]);
    }
    let out = fixtures.join("siglip-tiny-finetuned");
    let config = FinetuneConfig {
        epochs: 5,
        batch_size: 4,
        optimiser: AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        },
        ..FinetuneConfig::default()
    };
    let report = finetune(
        &t,
        &data,
        &config,
        &out,
        |_| Ok(None),
        |_| Ok::<_, mirante_training::Error>(None),
    )
    .unwrap();
    // Only the saved checkpoint matters; the fine-tuning inputs are not part of the fixture.
    for extra in [
        "train_step.json",
        "train_step.safetensors",
        "reference.json",
        "reference_pixels.f32",
    ] {
        let _ = std::fs::remove_file(out.join(extra));
    }
    println!(
        "wrote {} after {} epochs (last loss {:.4})",
        out.display(),
        report.epochs.len(),
        report.epochs.last().map_or(0.0, |e| e.mean_loss)
    );
}
