//! Checkpoint loading: the Hugging Face cache layout (offline), sharded weights, and clear
//! errors for missing files, unknown model types and mismatched tensor shapes.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use mirante_training::{Device, DualEncoder, Error, resolve_model};

mod common;
use common::copy_checkpoint;

fn fixture(name: &str) -> PathBuf {
    common::fixtures().join(name)
}

fn load_err(folder: &Path) -> Error {
    DualEncoder::load(folder, &Device::Cpu).unwrap_err()
}

#[test]
fn hub_cache_layout_sharded_weights_and_errors() {
    // One test owns the process environment (HF_HUB_CACHE, HF_HUB_OFFLINE).
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--mirante-test--clip-tiny");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    copy_checkpoint(&fixture("clip-tiny"), &repo.join("snapshots").join(commit));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", cache.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let folder = resolve_model("mirante-test/clip-tiny").unwrap();
    assert_eq!(folder, repo.join("snapshots").join(commit));
    assert_eq!(
        resolve_model(&format!("mirante-test/clip-tiny@{commit}")).unwrap(),
        folder
    );
    let from_cache = DualEncoder::load(&folder, &Device::Cpu).unwrap();
    let direct = DualEncoder::load(&fixture("clip-tiny"), &Device::Cpu).unwrap();
    assert_eq!(
        from_cache.embed_texts(&["a photo of a cat"]).unwrap(),
        direct.embed_texts(&["a photo of a cat"]).unwrap()
    );
    let err = resolve_model("mirante-test/not-there")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("models--mirante-test--not-there") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    let err = resolve_model("./no/such/folder").unwrap_err().to_string();
    assert!(
        err.contains("not a folder, nor a Hugging Face Hub id"),
        "{err}"
    );

    // A sharded checkpoint (index + shard) loads the same weights.
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("sharded");
    copy_checkpoint(&fixture("clip-tiny"), &sharded);
    std::fs::rename(
        sharded.join("model.safetensors"),
        sharded.join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    let bytes = std::fs::read(sharded.join("model-00001-of-00001.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), "model-00001-of-00001.safetensors".into()))
        .collect();
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let from_shards = DualEncoder::load(&sharded, &Device::Cpu).unwrap();
    assert_eq!(
        from_shards.embed_texts(&["a photo of a cat"]).unwrap(),
        direct.embed_texts(&["a photo of a cat"]).unwrap()
    );
    // A shard listed but absent is named.
    std::fs::remove_file(sharded.join("model-00001-of-00001.safetensors")).unwrap();
    let err = load_err(&sharded).to_string();
    assert!(
        err.contains("model-00001-of-00001.safetensors is missing"),
        "{err}"
    );

    // Missing config, unknown model type, NaFlex SigLIP 2, wrong shapes, missing tokenizer.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = load_err(&empty).to_string();
    assert!(err.contains("config.json is missing"), "{err}");

    let broken = tmp.path().join("broken");
    copy_checkpoint(&fixture("clip-tiny"), &broken);
    let config_text = std::fs::read_to_string(broken.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config_text).unwrap();
    for (model_type, expect) in [
        ("bert", "unsupported model type 'bert'"),
        ("siglip2", "NaFlex"),
    ] {
        config["model_type"] = model_type.into();
        std::fs::write(broken.join("config.json"), config.to_string()).unwrap();
        let err = load_err(&broken);
        assert!(matches!(err, Error::UnsupportedModel { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(expect) && msg.contains("supported: clip, siglip"),
            "{msg}"
        );
    }
    config["model_type"] = "clip".into();
    config["vision_config"]["hidden_size"] = 40.into();
    config["vision_config"]["num_attention_heads"] = 4.into();
    std::fs::write(broken.join("config.json"), config.to_string()).unwrap();
    let err = load_err(&broken);
    let msg = err.to_string();
    assert!(matches!(err, Error::Weights { .. }), "{msg}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("shape"),
        "{msg}"
    );

    std::fs::write(broken.join("config.json"), &config_text).unwrap();
    std::fs::remove_file(broken.join("tokenizer.json")).unwrap();
    let err = load_err(&broken).to_string();
    assert!(err.contains("tokenizer.json is missing"), "{err}");

    // An image that does not decode is reported with its name.
    let err = direct
        .pixels(b"not an image", "photos/broken.jpg")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot decode image photos/broken.jpg"),
        "{err}"
    );
}
