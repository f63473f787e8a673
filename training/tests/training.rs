//! Training parity with PyTorch/transformers: on the committed tiny checkpoints and a fixed batch,
//! Mirante's loss, every parameter's gradient, and every parameter after one AdamW step equal
//! those `scripts/make_training_fixtures.py` recorded with transformers' own losses and
//! `torch.optim.AdamW`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use mirante_training::train::{AdamWConfig, Optimizer, Trainable};

mod common;
use common::fixtures;

/// `||a - b|| / ||b||` (or `||a||` when `b` is zero).
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    let norm = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    f64::from(if norm > 0.0 { diff / norm } else { diff })
}

struct StepFixture {
    tensors: HashMap<String, Tensor>,
    loss: f64,
    optimiser: AdamWConfig,
}

fn fixture(model: &str) -> StepFixture {
    let dir = fixtures().join(model);
    let tensors =
        candle_core::safetensors::load(dir.join("train_step.safetensors"), &Device::Cpu).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train_step.json")).unwrap())
            .unwrap();
    let o = &json["optimiser"];
    let f = |k: &str| o[k].as_f64().unwrap();
    StepFixture {
        tensors,
        loss: json["loss"].as_f64().unwrap(),
        optimiser: AdamWConfig {
            lr: f("lr"),
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        },
    }
}

/// The rows of the token embedding the fixture kept (the ones the batch uses).
fn stored_rows(name: &str, t: &Tensor, rows: &Tensor) -> Tensor {
    if name.ends_with("token_embedding.weight") {
        t.index_select(rows, 0).unwrap()
    } else {
        t.clone()
    }
}

fn one_step_matches_pytorch(model: &str) {
    let fx = fixture(model);
    let t = Trainable::load(&fixtures().join(model), &Device::Cpu).unwrap();
    let pixels = &fx.tensors["pixel_values"];
    let ids: Vec<Vec<u32>> = fx.tensors["input_ids"]
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| row.into_iter().map(|x| x as u32).collect())
        .collect();
    let rows = fx.tensors["token_rows"]
        .to_dtype(candle_core::DType::U32)
        .unwrap();

    let loss = t.batch_loss(pixels, &ids).unwrap();
    let value = f64::from(loss.to_scalar::<f32>().unwrap());
    assert!(
        (value - fx.loss).abs() <= 1e-5 * fx.loss.abs().max(1.0),
        "{model}: loss {value} vs PyTorch {}",
        fx.loss
    );

    let grads = loss.backward().unwrap();
    let vars = t.varmap.data().lock().unwrap().clone();
    let mut before = HashMap::new();
    let mut checked = 0;
    for (name, var) in &vars {
        let reference = &fx.tensors[&format!("grad.{name}")];
        let grad = match grads.get(var) {
            Some(g) => stored_rows(name, g, &rows),
            None => reference.zeros_like().unwrap(),
        };
        if name.ends_with("k_proj.bias") {
            // Zero in exact arithmetic: softmax ignores a shift shared by a query's scores. Both
            // sides hold rounding noise (PyTorch's is ~1e-8).
            let norm = relative_error(&grad, &grad.zeros_like().unwrap());
            assert!(
                norm <= 1e-6,
                "{model}: gradient of {name} is {norm:.2e}, not ~0"
            );
        } else {
            let err = relative_error(&grad, reference);
            assert!(err <= 1e-4, "{model}: gradient of {name} off by {err:.2e}");
        }
        before.insert(
            name.clone(),
            stored_rows(name, var.as_tensor(), &rows).copy().unwrap(),
        );
        checked += 1;
    }
    let expected: usize = fx.tensors.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, expected, "{model}: every parameter has a variable");

    let mut opt = Optimizer::new(&t, fx.optimiser, |_| true).unwrap();
    opt.step(&grads).unwrap();
    let mut moved = 0;
    for (name, var) in &vars {
        if name.ends_with("k_proj.bias") {
            // Its gradient is rounding noise on both sides, which AdamW divides by its own tiny
            // magnitude: the updates are noise too.
            continue;
        }
        let after = stored_rows(name, var.as_tensor(), &rows);
        let reference = &fx.tensors[&format!("after.{name}")];
        // Compare the updates, which are small against the weights.
        let ours = (&after - &before[name]).unwrap();
        let theirs = (reference - &before[name]).unwrap();
        let err = relative_error(&ours, &theirs);
        assert!(
            err <= 1e-3,
            "{model}: AdamW update of {name} off by {err:.2e}"
        );
        if relative_error(&theirs, &theirs.zeros_like().unwrap()) > 0.0 {
            moved += 1;
        }
    }
    // The references are real updates, not zeros compared with zeros.
    assert!(moved > 0, "{model}: the reference step changed nothing");
}

#[test]
fn clip_loss_gradients_and_adamw_step_match_pytorch() {
    one_step_matches_pytorch("clip-tiny");
}

#[test]
fn siglip_loss_gradients_and_adamw_step_match_pytorch() {
    one_step_matches_pytorch("siglip-tiny");
}
