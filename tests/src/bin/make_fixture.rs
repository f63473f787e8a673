//! Writes the format compatibility fixture `tests/fixtures/db-format-v<N>/`: a small database
//! with every file kind (rows, blob, columns of both modalities, a deletion vector, a FAISS index)
//! and several versions. Committed fixtures must keep opening after format changes.
//!
//! `cargo run -p mirante-tests --bin make_fixture` (run once per format version).

#![allow(clippy::unwrap_used)] // a test tool: a failed unwrap is a failed generation

use mirante::storage::{
    Database, FORMAT_VERSION, IndexSpec, Metric, Modality, SpaceSpec, WriterOptions,
};
use mirante_tests::{int_vector, keyed_row, keyed_texts, test_schema};

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("db-format-v{FORMAT_VERSION}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let db = Database::create(&dir).unwrap();
    let mut w = db.writer().unwrap();
    w.set_options(WriterOptions {
        auto_compact: false,
        ..Default::default()
    });
    w.create_collection("fixture", test_schema(), IndexSpec::default())
        .unwrap();
    let mut spaces = Vec::new();
    for m in [Modality::Image, Modality::Text] {
        let spec = SpaceSpec {
            model_id: "fixture-model".into(),
            fingerprint: "v1".into(),
            modality: m,
            dim: 8,
            metric: Metric::InnerProduct,
        };
        spaces.push(w.add_space("fixture", spec, true).unwrap());
    }
    for range in [1..=1100u64, 1101..=1130] {
        let keys: Vec<u64> = range.collect();
        let iv: Vec<f32> = keys.iter().flat_map(|&k| int_vector(k, 0, 8)).collect();
        let tv: Vec<f32> = keys
            .iter()
            .flat_map(|&k| (0..keyed_texts(k) as u64).flat_map(move |t| int_vector(k, t + 1, 8)))
            .collect();
        w.append(
            "fixture",
            keys.iter().map(|&k| keyed_row(k)).collect(),
            &[(spaces[0], &iv), (spaces[1], &tv)],
        )
        .unwrap();
    }
    w.delete("fixture", &[7, 1105]).unwrap();
    drop(w);
    std::fs::remove_file(dir.join("LOCK")).unwrap();
    println!("wrote {}", dir.display());
}
