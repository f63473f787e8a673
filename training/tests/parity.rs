//! Parity with transformers: token ids, pixel values and embeddings of the committed tiny
//! checkpoints equal the reference outputs that `scripts/make_encoder_fixtures.py` computed with
//! transformers on real photographs and English/Portuguese captions.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use mirante_training::{Device, DualEncoder};

mod common;
use common::{copy_checkpoint, fixtures};

struct Reference {
    images: Vec<String>,
    captions: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    pixels: Vec<Vec<f32>>,
    image_embeddings: Vec<Vec<f32>>,
    text_embeddings: Vec<Vec<f32>>,
}

fn reference(dir: &std::path::Path) -> Reference {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let matrix = |k: &str| -> Vec<Vec<f32>> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    };
    let shape: Vec<usize> = v["pixel_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let raw = std::fs::read(dir.join("reference_pixels.f32")).unwrap();
    let all: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let per = shape[1] * shape[2] * shape[3];
    Reference {
        images: strings("images"),
        captions: strings("captions"),
        input_ids: v["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect(),
        pixels: all.chunks(per).map(<[f32]>::to_vec).collect(),
        image_embeddings: matrix("image_embeddings"),
        text_embeddings: matrix("text_embeddings"),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// PNG, GIF and WebP decode to the same 8-bit values here as in Pillow, so pixels match to float
/// rounding. JPEG decoders (libjpeg-turbo in Pillow, zune-jpeg here) round the IDCT differently:
/// a unit in a few 8-bit values, which normalisation turns into at most 1/255/0.26 = 0.015.
fn pixel_tolerance(name: &str) -> f32 {
    if name.ends_with(".jpg") { 0.016 } else { 1e-5 }
}

fn check_family(model: &str) {
    check_checkpoint(model, &fixtures().join(model), &fixtures().join(model));
}

/// The checkpoint in `folder` gives the outputs transformers recorded in `reference_dir`.
fn check_checkpoint(model: &str, folder: &std::path::Path, reference_dir: &std::path::Path) {
    let r = reference(reference_dir);
    let enc = DualEncoder::load(folder, &Device::Cpu).unwrap();
    for (caption, want) in r.captions.iter().zip(&r.input_ids) {
        assert_eq!(
            &enc.tokenizer.encode(caption).unwrap().ids,
            want,
            "{model}: tokens of {caption:?}"
        );
    }
    let mut ours = Vec::new();
    for (name, want) in r.images.iter().zip(&r.pixels) {
        let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
        let got = enc.pixels(&bytes, name).unwrap();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= pixel_tolerance(name),
            "{model}: {name} pixels differ by up to {worst}"
        );
        ours.push(got);
    }
    // Embeddings of the reference pixels isolate the model; of our pixels, the whole pipeline.
    let from_ref = enc.embed_pixels(&r.pixels).unwrap();
    let from_ours = enc.embed_pixels(&ours).unwrap();
    for (i, want) in r.image_embeddings.iter().enumerate() {
        let c = cosine(&from_ref[i], want);
        assert!(
            c >= 0.9999,
            "{model}: image {} embedding cosine {c}",
            r.images[i]
        );
        let c = cosine(&from_ours[i], want);
        let min = if pixel_tolerance(&r.images[i]) > 1e-5 {
            0.999
        } else {
            0.9999
        };
        assert!(
            c >= min,
            "{model}: image {} end-to-end cosine {c}",
            r.images[i]
        );
    }
    let texts: Vec<&str> = r.captions.iter().map(String::as_str).collect();
    let got = enc.embed_texts(&texts).unwrap();
    for (i, want) in r.text_embeddings.iter().enumerate() {
        let c = cosine(&got[i], want);
        assert!(
            c >= 0.9999,
            "{model}: text {:?} embedding cosine {c}",
            r.captions[i]
        );
    }
}

#[test]
fn clip_matches_transformers() {
    check_family("clip-tiny");
}

#[test]
fn siglip_matches_transformers() {
    check_family("siglip-tiny");
}

/// A checkpoint that Mirante fine-tuned and saved (`examples/finetuned_fixture.rs`), read by
/// transformers (`scripts/make_training_fixtures.py`): both give the same embeddings.
#[test]
fn checkpoint_saved_by_mirante_reads_the_same_in_transformers() {
    check_family("siglip-tiny-finetuned");
}

/// Mirante's default model (trained from scratch by Mirante, tokenizer included, stored in f16)
/// reads the same in transformers: `scripts/make_training_fixtures.py` recorded its outputs.
#[test]
fn default_model_reads_the_same_in_transformers() {
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/assets/mirante-shapes-clip");
    check_checkpoint(
        "mirante-shapes-clip",
        &assets,
        &fixtures().join("mirante-shapes-clip-reference"),
    );
}

#[test]
fn siglip2_fixed_resolution_matches_transformers() {
    check_family("siglip2-tiny");
}

/// Old CLIP configs (openai/clip-vit-base-patch32) say `eos_token_id: 2` and pool at the highest
/// token id (the original argmax), which is the end-of-text token: same embeddings.
#[test]
fn legacy_clip_eos_pooling_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join("legacy");
    copy_checkpoint(&fixtures().join("clip-tiny"), &legacy);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(legacy.join("config.json")).unwrap())
            .unwrap();
    config["text_config"]["eos_token_id"] = 2.into();
    std::fs::write(legacy.join("config.json"), config.to_string()).unwrap();
    let texts = ["A cat sitting on a wooden floor.", "", "um gato"];
    let old = DualEncoder::load(&legacy, &Device::Cpu)
        .unwrap()
        .embed_texts(&texts)
        .unwrap();
    let new = DualEncoder::load(&fixtures().join("clip-tiny"), &Device::Cpu)
        .unwrap()
        .embed_texts(&texts)
        .unwrap();
    assert_eq!(old, new);
}
