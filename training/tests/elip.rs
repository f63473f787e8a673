//! ELIP parity with a PyTorch reference built on transformers' vision models
//! (`scripts/make_elip_fixtures.py`): prompted image embeddings, the batch loss and the mapper's
//! gradients, for CLIP and SigLIP, input-only and deep prompts.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use candle_core::{D, Device, Tensor};
use mirante_training::DualEncoder;
use mirante_training::elip::{
    ElipConfig, ElipMapper, backbone_logits, batch_loss, candidate_loss, prompted_image_features,
    rerank_scores,
};

mod common;
use common::fixtures;

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let norm = |t: &Tensor| -> f64 {
        f64::from(
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
        .sqrt()
    };
    norm(&(a - b).unwrap()) / norm(b).max(1e-12)
}

/// Row-wise cosine of two `[N, d]` matrices.
fn cosines(a: &Tensor, b: &Tensor) -> Vec<f32> {
    let dot = (a * b).unwrap().sum(D::Minus1).unwrap();
    let na = a.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap();
    let nb = b.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap();
    (dot / (na * nb).unwrap()).unwrap().to_vec1().unwrap()
}

fn matches_pytorch(backbone: &str, fixture: &str) {
    let enc = DualEncoder::load(&fixtures().join(backbone), &Device::Cpu).unwrap();
    let mapper = ElipMapper::load(&fixtures().join(fixture), &Device::Cpu).unwrap();
    mapper.config.check_backbone(&enc.model).unwrap();
    let dir = fixtures().join(fixture);
    let r =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let (pixels, texts) = (&r["pixel_values"], &r["texts"]);

    let ours = prompted_image_features(&enc.model, &mapper, pixels, texts).unwrap();
    for (i, c) in cosines(&ours, &r["aligned"]).into_iter().enumerate() {
        assert!(c >= 0.9999, "{fixture}: image {i} cosine {c} with PyTorch");
    }
    // The prompts matter: the plain embeddings are further from the prompted ones than the
    // tolerance above (the tiny random CLIP's class token moves least: cosine ~0.998).
    let plain = cosines(&r["plain"], &r["aligned"]);
    assert!(
        plain.iter().all(|&c| c < 0.9995),
        "{fixture}: prompted embeddings equal the plain ones ({plain:?})"
    );
    let unprompted = enc.model.image_features_prompted(pixels, &[]).unwrap();
    assert!(
        cosines(&unprompted, &r["plain"])
            .iter()
            .all(|&c| c >= 0.9999)
    );

    let loss = batch_loss(
        &enc.model,
        &mapper,
        pixels,
        texts,
        backbone_logits(&enc).unwrap(),
        None,
    )
    .unwrap();
    let value = f64::from(loss.to_scalar::<f32>().unwrap());
    let reference = json["loss"].as_f64().unwrap();
    assert!(
        (value - reference).abs() <= 1e-4 * reference.abs().max(1.0),
        "{fixture}: loss {value} vs PyTorch {reference}"
    );
    // The same batch as candidate lists, each text's in reverse order with its own image
    // marked where it landed: the loss is the batch loss.
    let b = pixels.dim(0).unwrap() as u32;
    let reversed: Vec<Vec<u32>> = (0..b).map(|_| (0..b).rev().collect()).collect();
    let positions: Vec<u32> = (0..b).map(|t| b - 1 - t).collect();
    let listed = candidate_loss(
        &enc.model,
        &mapper,
        (pixels, &reversed, &positions),
        texts,
        backbone_logits(&enc).unwrap(),
        None,
    )
    .unwrap();
    let listed = f64::from(listed.to_scalar::<f32>().unwrap());
    assert!(
        (listed - value).abs() <= 1e-5 * value.abs().max(1.0),
        "{fixture}: loss over reordered candidates {listed} vs {value}"
    );
    let grads = loss.backward().unwrap();
    let vars = mapper.varmap.data().lock().unwrap().clone();
    assert!(vars.len() >= 6);
    for (name, var) in &vars {
        let g = grads.get(var).unwrap();
        let err = relative_error(g, &r[&format!("grad.{name}")]);
        assert!(
            err <= 1e-3,
            "{fixture}: gradient of {name} off by {err:.2e}"
        );
    }

    // Re-ranking one query scores each candidate as the aligned pair does.
    let s = enc.model.image_size();
    let flat: Vec<f32> = pixels.flatten_all().unwrap().to_vec1().unwrap();
    let candidates: Vec<Vec<f32>> = flat.chunks(3 * s * s).map(<[f32]>::to_vec).collect();
    let query: Vec<f32> = texts.get(0).unwrap().to_vec1().unwrap();
    let scores = rerank_scores(&enc, &mapper, &query, &candidates, 3).unwrap();
    let expected: f32 = (r["aligned"].get(0).unwrap() * texts.get(0).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(scores.len(), candidates.len());
    assert!(
        (scores[0] - expected).abs() < 1e-4,
        "{fixture}: {} vs {expected}",
        scores[0]
    );
}

#[test]
fn clip_prompted_encoder_loss_and_gradients_match_pytorch() {
    matches_pytorch("clip-tiny", "elip-clip-tiny");
}

#[test]
fn clip_deep_prompts_match_pytorch() {
    matches_pytorch("clip-tiny", "elip-clip-tiny-deep");
}

#[test]
fn siglip_prompted_encoder_loss_and_gradients_match_pytorch() {
    matches_pytorch("siglip-tiny", "elip-siglip-tiny");
}

#[test]
fn siglip_deep_prompts_match_pytorch() {
    matches_pytorch("siglip-tiny", "elip-siglip-tiny-deep");
}

#[test]
fn a_saved_mapper_reloads_and_refuses_another_backbone() {
    let clip = DualEncoder::load(&fixtures().join("clip-tiny"), &Device::Cpu).unwrap();
    let siglip = DualEncoder::load(&fixtures().join("siglip-tiny"), &Device::Cpu).unwrap();
    let config = ElipConfig::for_model(&clip.model, 4, 6, true).unwrap();
    let mapper = ElipMapper::new(config.clone(), 7, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    mapper.save(dir.path()).unwrap();
    let again = ElipMapper::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(again.config, config);
    let texts = Tensor::randn(0f32, 1.0, (2, config.embedding_dim), &Device::Cpu).unwrap();
    let (a, b) = (
        mapper.prompts(&texts, None).unwrap(),
        again.prompts(&texts, None).unwrap(),
    );
    assert_eq!(
        a.len(),
        config.vision_layers,
        "deep: one prompt set per layer"
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.dims(), [2, 4, config.vision_width]);
        assert_eq!(relative_error(x, y), 0.0);
    }
    // The same seed gives the same mapper.
    let twin = ElipMapper::new(config, 7, &Device::Cpu).unwrap();
    assert_eq!(
        relative_error(&twin.prompts(&texts, None).unwrap()[0], &a[0]),
        0.0
    );
    let e = mapper.config.check_backbone(&siglip.model).unwrap_err();
    assert!(e.to_string().contains("made for a clip backbone"), "{e}");
    assert!(ElipConfig::for_model(&clip.model, 0, 6, false).is_err());
}

#[test]
fn training_the_mapper_lowers_the_loss_and_moves_its_pairs_up() {
    train_and_check_ranks(false);
}

#[test]
fn training_on_retrieved_negatives_lowers_the_loss_and_moves_its_pairs_up() {
    train_and_check_ranks(true);
}

/// Trains a mapper on the tiny fixture's pairs, each caption against the whole batch or
/// (`retrieved`) against two other images of its own, and checks the loss and the ranks.
fn train_and_check_ranks(retrieved: bool) {
    use mirante_training::elip::Negatives;
    use mirante_training::finetune::{FinetuneConfig, PairData, TrainImage};
    use mirante_training::train::AdamWConfig;
    let enc = DualEncoder::load(&fixtures().join("clip-tiny"), &Device::Cpu).unwrap();
    let r = candle_core::safetensors::load(
        fixtures().join("elip-clip-tiny/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let step = candle_core::safetensors::load(
        fixtures().join("clip-tiny/train_step.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let s = enc.model.image_size();
    let flat: Vec<f32> = r["pixel_values"].flatten_all().unwrap().to_vec1().unwrap();
    let images: Vec<Vec<f32>> = flat.chunks(3 * s * s).map(<[f32]>::to_vec).collect();
    let ids: Vec<Vec<u32>> = step["input_ids"]
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| row.into_iter().map(|x| x as u32).collect())
        .collect();
    let n = images.len();
    let data = PairData {
        images: images.iter().cloned().map(TrainImage::Pixels).collect(),
        captions: ids,
        pairs: (0..n).map(|i| vec![i]).collect(),
        ..PairData::default()
    };
    let config = mirante_training::elip::ElipConfig::for_model(&enc.model, 4, 16, false).unwrap();
    let mapper = ElipMapper::new(config, 0, &Device::Cpu).unwrap();
    let texts: Vec<Vec<f32>> = r["texts"].to_vec2().unwrap();
    let rank_of_own = |m: &ElipMapper| -> Vec<usize> {
        (0..n)
            .map(|t| {
                let scores = rerank_scores(&enc, m, &texts[t], &images, 8).unwrap();
                scores.iter().filter(|&&x| x > scores[t]).count()
            })
            .collect()
    };
    let before: usize = rank_of_own(&mapper).iter().sum();
    let out = tempfile::tempdir().unwrap();
    let mut validations = 0;
    let lists: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + 1) % n, (i + 2) % n]).collect();
    let negatives = if retrieved {
        Negatives::Retrieved(&lists)
    } else {
        Negatives::InBatch
    };
    let report = mirante_training::elip::train(
        &enc,
        &mapper,
        (&data, negatives),
        &FinetuneConfig {
            epochs: 100,
            batch_size: n,
            optimiser: AdamWConfig {
                lr: 1e-2,
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
            patience: usize::MAX,
            ..FinetuneConfig::default()
        },
        out.path(),
        |_| {
            validations += 1;
            Ok::<_, mirante_training::Error>(None)
        },
    )
    .unwrap();
    assert_eq!(
        validations, 101,
        "once before training and after each epoch"
    );
    let first = report.epochs[0].mean_loss;
    let last = report.epochs.last().unwrap().mean_loss;
    // The retrieved negatives are batch images too: each counts twice among a caption's
    // candidates, which raises the loss's floor.
    let drop = if retrieved { 0.7 } else { 0.6 };
    assert!(last < drop * first, "loss {first} -> {last}");
    // Re-ranking the training pairs improves: their images move up (the tiny random CLIP's
    // class token barely responds to prompts, so not all reach the top).
    let after = rank_of_own(&mapper);
    assert!(
        after.iter().sum::<usize>() < before,
        "ranks of the own images: {before} before, {after:?} after"
    );
    // The saved mapper is the trained one.
    let saved = ElipMapper::load(out.path(), &Device::Cpu).unwrap();
    assert_eq!(rank_of_own(&saved), after);
}

/// `anchor_prompts` starts every prompt at the mean patch token of the layer it enters (the
/// input layer, or each layer for deep prompts), whatever the query.
fn anchored_prompts_start_at_the_mean_patch_token(backbone: &str, fixture: &str, deep: bool) {
    use mirante_training::finetune::{PairData, TrainImage};
    let enc = DualEncoder::load(&fixtures().join(backbone), &Device::Cpu).unwrap();
    let r = candle_core::safetensors::load(
        fixtures().join(fixture).join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let pixels = &r["pixel_values"];
    let s = enc.model.image_size();
    let flat: Vec<f32> = pixels.flatten_all().unwrap().to_vec1().unwrap();
    let data = PairData {
        images: flat
            .chunks(3 * s * s)
            .map(|c| TrainImage::Pixels(c.to_vec()))
            .collect(),
        ..PairData::default()
    };
    let config = ElipConfig::for_model(&enc.model, 3, 8, deep).unwrap();
    let mapper = ElipMapper::new(config.clone(), 0, &Device::Cpu).unwrap();
    let texts = &r["texts"];
    let before = mapper.prompts(texts, None).unwrap();
    mapper.anchor_prompts(&enc, &data).unwrap();
    let after = mapper.prompts(texts, None).unwrap();
    let means = enc
        .model
        .vision_token_means(pixels, config.vision_layers)
        .unwrap();
    assert_eq!(after.len(), if deep { config.vision_layers } else { 1 });
    for (layer, (p, p0)) in after.iter().zip(&before).enumerate() {
        let b = p.dim(0).unwrap();
        let mean = means[layer]
            .reshape((1, 1, config.vision_width))
            .unwrap()
            .broadcast_as((b, 3, config.vision_width))
            .unwrap();
        // The mapper's own output on top of the bias is small at initialisation.
        let err = relative_error(p, &mean);
        assert!(err < 0.05, "{fixture} layer {layer}: {err}");
        assert!(
            relative_error(p0, &mean) > 0.9,
            "the plain start is near zero"
        );
    }
}

#[test]
fn clip_prompts_can_start_at_the_mean_patch_token() {
    anchored_prompts_start_at_the_mean_patch_token("clip-tiny", "elip-clip-tiny", false);
    anchored_prompts_start_at_the_mean_patch_token("clip-tiny", "elip-clip-tiny-deep", true);
}

#[test]
fn siglip_prompts_can_start_at_the_mean_patch_token() {
    anchored_prompts_start_at_the_mean_patch_token("siglip-tiny", "elip-siglip-tiny", false);
}
