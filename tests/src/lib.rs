//! Helpers shared by Mirante's integration tests and the crash-test worker: deterministic data
//! and brute-force references.

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

pub mod soak;

use mirante::storage::{
    ColumnDef, ColumnType, Hit, ImageData, Metric, Modality, NewRow, Schema, SegmentView, Snapshot,
    SpaceId, SpaceSpec, Value, sort_hits,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The embedding space of the tests: a fixed test model id and fingerprint.
pub fn test_space(modality: Modality, dim: usize, metric: Metric) -> SpaceSpec {
    SpaceSpec {
        model_id: "test-model".into(),
        fingerprint: "test".into(),
        modality,
        dim,
        metric,
    }
}

/// Schema used by most tests: a string, an integer, a float and a boolean column.
pub fn test_schema() -> Schema {
    Schema::new(vec![
        ColumnDef::new("label", ColumnType::String, false),
        ColumnDef::new("n", ColumnType::I64, true),
        ColumnDef::new("weight", ColumnType::F64, true),
        ColumnDef::new("flag", ColumnType::Bool, true),
    ])
    .expect("valid schema")
}

/// A row whose every field is a function of `key`, so that a reader can check it is intact.
pub fn keyed_row(key: u64) -> NewRow {
    NewRow {
        image: Some(ImageData {
            bytes: (0..(key % 97) as usize + 1)
                .map(|i| (key as usize * 31 + i) as u8)
                .collect(),
            source: format!("img/{key}.png"),
        }),
        texts: (0..key % 3 + 1)
            .map(|t| format!("row {key} caption {t}"))
            .collect(),
        split: Some(
            if key.is_multiple_of(5) {
                "test"
            } else {
                "train"
            }
            .to_string(),
        ),
        metadata: vec![
            ("label".into(), Value::String(format!("L{}", key % 7))),
            (
                "n".into(),
                if key.is_multiple_of(11) {
                    Value::Null
                } else {
                    Value::I64(key as i64)
                },
            ),
            ("weight".into(), Value::F64(key as f64 / 4.0)),
            ("flag".into(), Value::Bool(key.is_multiple_of(2))),
        ],
    }
}

/// Number of captions of `keyed_row(key)`.
pub fn keyed_texts(key: u64) -> usize {
    (key % 3 + 1) as usize
}

/// The image vectors (one per row) and caption vectors (one per caption, in row order) of the
/// keyed rows `keys` (see [`keyed_row`]), as `Writer::append` takes them.
pub fn keyed_vectors(keys: &[u64], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let images = keys.iter().flat_map(|&k| int_vector(k, 0, dim)).collect();
    let captions = keys
        .iter()
        .flat_map(|&k| (0..keyed_texts(k) as u64).flat_map(move |t| int_vector(k, t + 1, dim)))
        .collect();
    (images, captions)
}

/// A vector with small integer components derived from `key` and `item`: inner products of such
/// vectors are exact in f32 whatever the summation order, so FAISS, Mirante and a reference agree
/// to the bit, and many ties occur (which exercises the tie-break).
pub fn int_vector(key: u64, item: u64, dim: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ item);
    (0..dim)
        .map(|_| rng.random_range(-2i32..=2) as f32)
        .collect()
}

/// `n` vectors around `clusters` random centres (unit norm), the data ANN indexes are built for.
pub fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..clusters * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = rng.random_range(0..clusters);
        for d in 0..dim {
            out.push(centres[c * dim + d] + rng.random_range(-0.15f32..0.15));
        }
    }
    mirante::storage::normalize(&mut out, dim);
    out
}

/// Every live item of `collection` in `space` that passes `filter`, scored against `query` with
/// a plain f64 loop, best first with the engine's tie-break (score desc, row id, caption).
pub fn brute_force(
    snap: &Snapshot,
    collection: &str,
    space: SpaceId,
    query: &[f32],
    k: usize,
    filter: &dyn Fn(&mirante::storage::RowRef<'_>) -> bool,
) -> Vec<Hit> {
    let c = snap.collection(collection).expect("collection");
    let modality = c.space(space).expect("space").spec.modality;
    let mut hits = Vec::new();
    for seg in snap.segments(c).expect("segments") {
        let Some(v) = seg.vectors(c, space).expect("vectors") else {
            continue;
        };
        for (local, row) in seg.live_rows() {
            if !filter(&row) {
                continue;
            }
            for (t, item) in items_of(&seg, modality, local).enumerate() {
                let score: f64 = v
                    .get(item)
                    .iter()
                    .zip(query)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                hits.push(Hit {
                    row_id: row.id(),
                    text_index: if modality == Modality::Text {
                        t as u32
                    } else {
                        0
                    },
                    score: score as f32,
                });
            }
        }
    }
    sort_hits(&mut hits);
    hits.truncate(k);
    hits
}

fn items_of(seg: &SegmentView<'_>, modality: Modality, local: usize) -> std::ops::Range<usize> {
    match modality {
        Modality::Image => local..local + 1,
        Modality::Text => {
            let start = seg.text_start(local);
            start..start + seg.row(local).text_count()
        }
    }
}

/// The key of a stored keyed row (see [`keyed_row`]: its weight is key / 4), for rows whose
/// ids are not their keys.
pub fn key_of(row: &mirante::storage::RowRef<'_>) -> u64 {
    match row.to_new_row().metadata[2].1 {
        Value::F64(w) => (w * 4.0) as u64,
        ref other => panic!("weight is {other:?}"),
    }
}

/// Creates collection `name` with the test schema and active image and text test spaces of
/// `dim` (inner product); returns the spaces.
pub fn keyed_collection(
    w: &mut mirante::storage::Writer,
    name: &str,
    dim: usize,
) -> (SpaceId, SpaceId) {
    w.create_collection(name, test_schema(), mirante::storage::IndexSpec::default())
        .unwrap();
    let [img, txt] = [Modality::Image, Modality::Text].map(|m| {
        w.add_space(name, test_space(m, dim, Metric::InnerProduct), true)
            .unwrap()
    });
    (img, txt)
}

/// Checks that a stored row equals `keyed_row(key)`.
pub fn assert_keyed_row(row: &mirante::storage::RowRef<'_>, key: u64) {
    let expected = keyed_row(key);
    assert_eq!(row.to_new_row(), expected, "row {} differs", row.id());
}

/// The repository's root directory.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `scripts/<script>` with `args` under python3 and parses the JSON it prints: the peers
/// of the benchmarks, measured in the same run. The error is the script's last stderr line.
pub fn python_peer(script: &str, args: &[&std::ffi::OsStr]) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Copies the files of checkpoint folder `from` into `to`: the same weights under another name.
pub fn copy_model(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Writes a CSV (`image,text`) of `rows` rows cycling through the full-size fixture photographs
/// (decoding them takes real time), one caption each.
pub fn photo_rows_csv(path: &std::path::Path, rows: usize) {
    let photos = repo_root().join("training/tests/fixtures/images");
    let names = [
        "camera.png",
        "chelsea.png",
        "horse.png",
        "logo.png",
        "rocket.jpg",
    ];
    let mut csv = String::from("image,text\n");
    for i in 0..rows {
        let name = names[i % names.len()];
        csv.push_str(&format!(
            "{},photo {i} of {name}\n",
            photos.join(name).display()
        ));
    }
    std::fs::write(path, csv).unwrap();
}

/// The tiny random-weight CLIP checkpoint the encoder parity tests use (24-d embeddings).
pub fn tiny_clip() -> std::path::PathBuf {
    repo_root().join("training/tests/fixtures/clip-tiny")
}

/// The import fixtures written by `scripts/make_import_fixtures.py`.
pub fn import_fixtures() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/import")
}

/// Loads the page in headless Chromium and checks every thumbnail decoded. Chromium is
/// installed by `.ci/run`; elsewhere the check is skipped with a note unless
/// `MIRANTE_REQUIRE_BROWSER` is set.
pub fn check_in_browser(page: &std::path::Path, images: usize) {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(browser) = browser else {
        assert!(
            std::env::var_os("MIRANTE_REQUIRE_BROWSER").is_none(),
            "MIRANTE_REQUIRE_BROWSER is set but no chromium is installed"
        );
        eprintln!("note: chromium not found; the HTML report was not checked in a browser");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(&format!("data-images-loaded=\"{images}\"")),
        "the browser did not load {images} thumbnails: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dom.chars().take(500).collect::<String>()
    );
}

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h, which the bindings
/// leave unnamed).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Lets mimalloc keep freed memory for 10 s (instead of its default 1 s) before returning it to
/// the system. A training step frees and reallocates the same large buffers (activations,
/// gradients such as a 50 MB token-embedding gradient) a few hundred milliseconds apart; with
/// the default every step faulted them in again and the kernel zeroed them (a sixth of a
/// fine-tuning step's time, docs/benchmarks.md).
pub fn keep_freed_memory() {
    // SAFETY: sets a process-wide option; benchmarks call it first thing in `main`.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) }
}

/// The output of the last statement of `sql`, as a table; panics with the rendered error.
pub fn one(db: &mirante::Database, sql: &str) -> mirante::ResultSet {
    let mut r = db.sql(sql).unwrap_or_else(|e| panic!("{}", e.render(sql)));
    r.pop()
        .unwrap_or_else(|| panic!("{sql}: no output"))
        .into_result_set()
}

/// The error `sql` fails with; panics when it succeeds.
pub fn error(db: &mirante::Database, sql: &str) -> String {
    match db.sql(sql) {
        Ok(r) => panic!("{sql} succeeded: {r:?}"),
        Err(e) => e.to_string(),
    }
}

/// The float in `column` of row `row`.
pub fn float_at(r: &mirante::ResultSet, row: usize, column: &str) -> f64 {
    match r.get(row, column) {
        Some(mirante::Cell::Float(v)) => *v,
        other => panic!("{column}: {other:?}"),
    }
}

/// Sixteen 16x16 PNGs (a coloured square on grey in one of four places) with a
/// `metadata.jsonl` of captions, in `folder`; returns every caption.
pub fn write_square_images(folder: &std::path::Path) -> Vec<String> {
    const COLOURS: [(&str, [u8; 3]); 4] = [
        ("red", [220, 30, 30]),
        ("green", [30, 200, 60]),
        ("blue", [40, 60, 220]),
        ("yellow", [230, 220, 40]),
    ];
    const PLACES: [(&str, u32, u32); 4] = [
        ("top left", 0, 0),
        ("top right", 8, 0),
        ("bottom left", 0, 8),
        ("bottom right", 8, 8),
    ];
    std::fs::create_dir_all(folder).unwrap();
    let mut lines = Vec::new();
    let mut captions = Vec::new();
    for (c, (colour, rgb)) in COLOURS.iter().enumerate() {
        for (p, (place, x0, y0)) in PLACES.iter().enumerate() {
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
    captions
}

/// Fills `db` with a collection `shapes` of [`write_square_images`] that searches with a
/// model of its own registry: a tiny CLIP made from scratch in `work`, fine-tuned as `ft`,
/// re-embedded with, and an ELIP re-ranker `elip` trained over it (seconds on a CPU).
pub fn registry_models(db: &mirante::Database, work: &std::path::Path) {
    use mirante::training::scratch::{initialize_clip, train_clip_tokenizer};
    let images = work.join("images");
    let captions = write_square_images(&images);
    let base = work.join("base-model");
    let tokenizer = train_clip_tokenizer(&captions, 300).unwrap();
    initialize_clip(&base, &tiny_architecture(), &tokenizer, 7).unwrap();
    let quote = |p: &std::path::Path| p.display().to_string().replace('\'', "''");
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
        one(db, &sql);
    }
}

/// The whole number in environment variable `name` (how long a soak runs), else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A CLIP small enough to train in seconds on a CPU, for [`write_square_images`]'s 16x16
/// images: 16-wide towers of one layer, 16-d embeddings.
pub fn tiny_architecture() -> mirante::training::scratch::ClipArchitecture {
    mirante::training::scratch::ClipArchitecture {
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
    }
}

/// Copies a folder and everything below it.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
