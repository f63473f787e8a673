//! Writes `tests/fixtures/db-registry-<label>/`: a small database whose collection searches with
//! a model of its own registry (a tiny CLIP made from scratch, `FINETUNE`d on the collection,
//! `REEMBED`ded with, and an ELIP re-ranker trained over it). Committed fixtures pin how each
//! engine release stores references to registry models, so later releases keep opening them:
//! `db-registry-absolute` was written by commit 622041c, which stored registry models as absolute
//! paths (moving such a database lost its models; opening now migrates them to `registry:`
//! keys, `tests/tests/relocation.rs`).
//!
//! `cargo run -p mirante-tests --bin make_registry_fixture -- <label>`

#![allow(clippy::unwrap_used)] // a test tool: a failed unwrap is a failed generation

use std::path::Path;

use mirante::Database;
use mirante::training::scratch::{ClipArchitecture, initialize_clip, train_clip_tokenizer};

/// Colours and shapes of the fixture's images and captions.
const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 60]),
    ("blue", [40, 60, 220]),
    ("yellow", [230, 220, 40]),
];

fn main() {
    let label = std::env::args()
        .nth(1)
        .expect("usage: make_registry_fixture <label>");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let dir = root.join(format!("db-registry-{label}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let (images, captions) = write_images(&work.path().join("images"));
    let base = work.path().join("base-model");
    let arch = ClipArchitecture {
        image_size: 16,
        patch_size: 8,
        vision_width: 16,
        vision_layers: 1,
        vision_heads: 2,
        text_width: 16,
        text_layers: 1,
        text_heads: 2,
        max_positions: 16,
        projection_dim: 16,
        mlp_ratio: 2,
    };
    let tokenizer = train_clip_tokenizer(&captions, 300).unwrap();
    initialize_clip(&base, &arch, &tokenizer, 7).unwrap();
    let db = Database::open(&dir).unwrap();
    let quote = |p: &Path| p.display().to_string().replace('\'', "''");
    for sql in [
        "CREATE COLLECTION shapes WITH (model = NULL)".to_string(),
        format!("IMPORT INTO shapes FROM '{}'", quote(&images)),
        format!(
            "FINETUNE MODEL '{}' ON shapes WITH (epochs = 1, batch_size = 4, seed = 0) AS 'ft'",
            quote(&base)
        ),
        "REEMBED shapes USING MODEL 'ft'".to_string(),
        "TRAIN ELIP ON shapes WITH (epochs = 1, batch_size = 4, prompts = 2, hidden = 16, \
         seed = 0) AS 'elip'"
            .to_string(),
    ] {
        db.sql(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    println!("wrote {}", dir.display());
}

/// Sixteen 16x16 PNGs (a coloured square on grey, in one of four places) with a
/// `metadata.jsonl` of captions; returns the folder and every caption.
fn write_images(folder: &Path) -> (std::path::PathBuf, Vec<String>) {
    std::fs::create_dir_all(folder).unwrap();
    let places = [("top left", 0, 0), ("top right", 8, 0), ("bottom left", 0, 8), ("bottom right", 8, 8)];
    let mut lines = Vec::new();
    let mut captions = Vec::new();
    for (c, (colour, rgb)) in COLOURS.iter().enumerate() {
        for (p, (place, x0, y0)) in places.iter().enumerate() {
            let img = image::RgbImage::from_fn(16, 16, |x, y| {
                let inside = (*x0..x0 + 8).contains(&x) && (*y0..y0 + 8).contains(&y);
                image::Rgb(if inside { *rgb } else { [128, 128, 128] })
            });
            let name = format!("{c}{p}.png");
            img.save(folder.join(&name)).unwrap();
            let text = format!("a {colour} square at the {place}");
            lines.push(serde_json::json!({"file_name": name, "text": text}).to_string());
            captions.push(text);
        }
    }
    std::fs::write(folder.join("metadata.jsonl"), lines.join("\n") + "\n").unwrap();
    (folder.to_path_buf(), captions)
}
