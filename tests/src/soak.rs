//! The statement crash soak's world, shared by its worker (`statement_crash_worker`) and its
//! driver (`tests/tests/statement_crash.rs`): a work folder holding the database `db/`, sixteen
//! square images with captions, and two folders of one tiny CLIP (`model-a`, `model-b`: equal
//! weights under two names, so a REEMBED between them changes the model without changing a
//! vector, and every stored vector can be checked against a fresh embedding).
//!
//! Rows carry a `key`: row `key` shows image `key % 16` with the caption
//! `"<that image's caption> number <key>"`.

use std::path::{Path, PathBuf};

/// The collection the soak writes.
pub const COLLECTION: &str = "images";
/// The two model folders REEMBED alternates between.
pub const MODELS: [&str; 2] = ["model-a", "model-b"];

/// Creates the work folder's images, models and database with an empty collection on
/// `model-a`.
pub fn setup(work: &Path) {
    let images = work.join("images");
    crate::write_square_images(&images);
    let captions = captions(work);
    let tokenizer = mirante::training::scratch::train_clip_tokenizer(&captions, 300).unwrap();
    let a = work.join(MODELS[0]);
    mirante::training::scratch::initialize_clip(&a, &crate::tiny_architecture(), &tokenizer, 7)
        .unwrap();
    crate::copy_model(&a, &work.join(MODELS[1]));
    let db = mirante::Database::open(work.join("db")).unwrap();
    crate::one(
        &db,
        &format!(
            "CREATE COLLECTION {COLLECTION} (key INT) WITH (model = '{}')",
            quote(&a)
        ),
    );
}

/// The sixteen images' captions, in the order of their keys modulo 16.
pub fn captions(work: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(work.join("images/metadata.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The image file of row `key`.
pub fn image(work: &Path, key: u64) -> PathBuf {
    let i = key % 16;
    work.join("images").join(format!("{}{}.png", i / 4, i % 4))
}

/// The caption of row `key`.
pub fn caption(captions: &[String], key: u64) -> String {
    format!("{} number {key}", captions[(key % 16) as usize])
}

/// A path as a single-quoted SQL string's contents.
pub fn quote(path: &Path) -> String {
    path.display().to_string().replace('\'', "''")
}
