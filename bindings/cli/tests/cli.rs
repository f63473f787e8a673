//! The `mirante` binary end to end: the walkthrough runs, and `info` reports what it left.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mirante");

#[test]
fn walkthrough_then_info() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let out = Command::new(BIN)
        .args(["walkthrough", "--rows", "3000", "--index", "Flat", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("appended 3000 rows (ids 1..=3000)"), "{text}");
    assert!(text.contains("WHERE year >= 2020"), "{text}");
    assert!(
        text.contains("COMPACT: 1 -> 1 segments, 2 deleted rows dropped"),
        "{text}"
    );

    let out = Command::new(BIN).arg("info").arg(&db).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("collection images: 2998 live rows in 1 segments, index 'Flat'"),
        "{text}"
    );
    assert!(
        text.contains("space 1 image walkthrough-random dim 512 (active)"),
        "{text}"
    );

    // A second walkthrough into the same folder is refused with a clear error, not a panic.
    let out = Command::new(BIN)
        .args(["walkthrough", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a database already exists at"), "{err}");

    let out = Command::new(BIN)
        .arg("info")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a Mirante database"));
}

#[test]
fn embed_prints_reference_embeddings_in_input_order() {
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../training/tests/fixtures");
    let model = fixtures.join("siglip-tiny");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("reference.json")).unwrap())
            .unwrap();
    let caption = reference["captions"][2].as_str().unwrap();
    let out = Command::new(BIN)
        .args(["embed", "--model"])
        .arg(&model)
        .args(["--text", caption, "--image"])
        .arg(fixtures.join("images/camera.png"))
        .arg("--image")
        .arg(fixtures.join("images/no_such.png"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed input makes the exit status 1"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no_such.png (input 2)"), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[2].is_null());
    let cos = |a: &serde_json::Value, b: &serde_json::Value| -> f64 {
        a.as_array()
            .unwrap()
            .iter()
            .zip(b.as_array().unwrap())
            .map(|(x, y)| x.as_f64().unwrap() * y.as_f64().unwrap())
            .sum()
    };
    assert!(cos(&lines[0], &reference["text_embeddings"][2]) > 0.9999);
    assert!(cos(&lines[1], &reference["image_embeddings"][1]) > 0.9999);

    let out = Command::new(BIN)
        .args(["embed", "--model", "nobody/nothing"])
        .arg("--text")
        .arg("x")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", fixtures.join("images"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the Hugging Face cache"));
}
