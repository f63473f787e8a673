//! The embedding pipeline: worker threads keep input order, failures are reported with their
//! source and reason while the rest proceeds.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use mirante_training::{
    Device, DualEncoder, ImageSource, PipelineOptions, embed_images, embed_texts,
};

mod common;
use common::fixtures;

#[test]
fn order_is_kept_and_failures_are_reported() {
    let enc = DualEncoder::load(&fixtures().join("clip-tiny"), &Device::Cpu).unwrap();
    let images = fixtures().join("images");
    let names = [
        "chelsea.png",
        "camera.png",
        "logo.png",
        "rocket.jpg",
        "horse.png",
        "chelsea.webp",
    ];
    let mut inputs: Vec<ImageSource> = names
        .iter()
        .map(|n| ImageSource::Path(images.join(n)))
        .collect();
    inputs.insert(
        2,
        ImageSource::Bytes {
            source: "db://row/7".into(),
            bytes: b"garbage".to_vec(),
        },
    );
    inputs.push(ImageSource::Path(images.join("missing.png")));
    for (workers, batch) in [(1, 1), (3, 2), (4, 16)] {
        let out = embed_images(
            &enc,
            &inputs,
            &PipelineOptions {
                batch_size: batch,
                workers,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(out.embeddings.len(), inputs.len());
        assert_eq!(
            out.failures.iter().map(|f| f.index).collect::<Vec<_>>(),
            vec![2, 7]
        );
        assert_eq!(out.failures[0].source, "db://row/7");
        assert!(
            out.failures[0]
                .reason
                .contains("cannot decode image db://row/7"),
            "{:?}",
            out.failures
        );
        assert!(
            out.failures[1].reason.contains("missing.png"),
            "{:?}",
            out.failures
        );
        for (i, input) in inputs.iter().enumerate() {
            match (&out.embeddings[i], input) {
                (None, _) => assert!(i == 2 || i == 7),
                (Some(e), ImageSource::Path(p)) => {
                    let bytes = std::fs::read(p).unwrap();
                    let single = enc
                        .embed_pixels(&[enc.pixels(&bytes, "x").unwrap()])
                        .unwrap();
                    let cos: f32 = e.iter().zip(&single[0]).map(|(a, b)| a * b).sum();
                    assert!(cos > 0.99999, "input {i} out of order or wrong ({cos})");
                }
                (Some(_), ImageSource::Bytes { .. }) => panic!("garbage decoded"),
            }
        }
    }
    let texts = ["one", "a photo of a cat", "três gatos"];
    let batched = embed_texts(
        &enc,
        &texts,
        &PipelineOptions {
            batch_size: 2,
            workers: 1,
            ..Default::default()
        },
    )
    .unwrap();
    // Padding to a batch's longest text changes float rounding only.
    for (a, b) in batched.iter().zip(enc.embed_texts(&texts).unwrap()) {
        let cos: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(cos > 0.99999, "{cos}");
    }
}

#[test]
fn a_raised_stop_cancels_between_batches() {
    let enc = DualEncoder::load(&fixtures().join("clip-tiny"), &Device::Cpu).unwrap();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let options = PipelineOptions {
        batch_size: 1,
        stop: mirante_training::Stop::on(flag.clone()),
        ..Default::default()
    };
    let inputs = [ImageSource::Path(fixtures().join("images/chelsea.png"))];
    assert!(matches!(
        embed_images(&enc, &inputs, &options),
        Err(mirante_training::Error::Cancelled)
    ));
    assert!(matches!(
        embed_texts(&enc, &["a cat"], &options),
        Err(mirante_training::Error::Cancelled)
    ));
    flag.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(embed_texts(&enc, &["a cat"], &options).unwrap().len(), 1);
}
