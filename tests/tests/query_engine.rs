//! The engine through its public API: imports of every source format, failed imports that commit
//! nothing, end-to-end search in both directions against embeddings computed independently,
//! deletes, the builder API and HTML reports.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use mirante::training::{DualEncoder, default_device};
use mirante::{Cell, Database, Error};
use mirante_tests::{check_in_browser, import_fixtures, repo_root, tiny_clip};

/// Real photographs from the encoder fixtures, with captions.
const PHOTOS: [(&str, &[&str]); 5] = [
    ("camera.png", &["a man with a camera", "black and white"]),
    ("chelsea.png", &["a cat"]),
    ("horse.png", &["a horse", "a silhouette", "uma silhueta"]),
    ("rocket.jpg", &["a rocket"]),
    ("logo.png", &["a logo with transparency"]),
];

fn photo(name: &str) -> PathBuf {
    repo_root()
        .join("training/tests/fixtures/images")
        .join(name)
}

fn open(dir: &Path) -> Database {
    Database::open(dir.join("db")).unwrap()
}

use mirante_tests::one;

fn create(db: &Database) {
    one(
        db,
        &format!(
            "CREATE COLLECTION images WITH (model = '{}')",
            tiny_clip().display()
        ),
    );
}

/// A database whose collection `images` (tiny CLIP) holds the Hugging Face parquet fixture.
fn parquet_collection(dir: &Path) -> Database {
    let db = open(dir);
    create(&db);
    one(
        &db,
        &format!(
            "IMPORT INTO images FROM '{}'",
            import_fixtures().join("hf_parquet").display()
        ),
    );
    db
}

fn count(db: &Database) -> i64 {
    match one(db, "SELECT count(*) FROM images").rows[0][0] {
        Cell::Int(n) => n,
        ref other => panic!("{other:?}"),
    }
}

/// An imagefolder with the photos split into train/ and test/ folders, each with a metadata
/// file of the given kind.
fn imagefolder(root: &Path, csv: bool) {
    for (i, (name, captions)) in PHOTOS.iter().enumerate() {
        let split = if i < 3 { "train" } else { "test" };
        let dir = root.join(split).join("pics");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(photo(name), dir.join(name)).unwrap();
        let meta = root.join(split).join(if csv {
            "metadata.csv"
        } else {
            "metadata.jsonl"
        });
        let first = !meta.exists();
        let line = if csv {
            let header = if first { "file_name,text,rating\n" } else { "" };
            format!(
                "{header}pics/{name},\"{}\",{}\n",
                captions[0],
                i as f64 + 0.5
            )
        } else {
            format!(
                "{}\n",
                serde_json::json!({"file_name": format!("pics/{name}"), "text": captions, "rating": i})
            )
        };
        let mut text = std::fs::read_to_string(&meta).unwrap_or_default();
        text.push_str(&line);
        std::fs::write(&meta, text).unwrap();
    }
}

#[test]
fn imagefolder_with_jsonl_and_csv_metadata() {
    for csv in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        imagefolder(&data, csv);
        let db = open(tmp.path());
        create(&db);
        let r = one(
            &db,
            &format!("IMPORT INTO images FROM '{}'", data.display()),
        );
        assert_eq!(r.status.as_deref(), Some("imported 5 rows into images"));
        let rows = one(&db, "SELECT id, text, split, rating, image FROM images");
        assert_eq!(rows.rows.len(), 5);
        // Splits come from the folders, captions and ratings from the metadata file.
        let horse = rows
            .rows
            .iter()
            .find(|r| matches!(&r[4], Cell::Str(s) if s.ends_with("horse.png")))
            .unwrap();
        assert_eq!(horse[2], Cell::Str("train".into()));
        if csv {
            assert_eq!(horse[1], Cell::List(vec!["a horse".into()]));
            assert_eq!(horse[3], Cell::Float(2.5));
        } else {
            assert_eq!(
                horse[1],
                Cell::List(vec![
                    "a horse".into(),
                    "a silhouette".into(),
                    "uma silhueta".into()
                ])
            );
            assert_eq!(horse[3], Cell::Int(2));
        }
        // The split option picks one split.
        one(&db, "DELETE FROM images");
        one(
            &db,
            &format!(
                "IMPORT INTO images FROM '{}' WITH (split = 'test')",
                data.display()
            ),
        );
        assert_eq!(count(&db), 2);
    }
}

#[test]
fn csv_and_jsonl_files_naming_images() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = import_fixtures().join("photos");
    let csv = tmp.path().join("pairs.csv");
    std::fs::write(
        &csv,
        format!(
            "path,caption,split,year\n{0}/coffee.jpg,a cup of coffee,train,2009\n{0}/rocket.jpg,a rocket,test,1969\n",
            photos.display()
        ),
    )
    .unwrap();
    let jsonl = tmp.path().join("pairs.jsonl");
    std::fs::write(
        &jsonl,
        format!(
            "{}\n{}\n",
            serde_json::json!({"image": format!("{}/horse.png", photos.display()), "captions": ["a horse", "cavalo"], "score": 0.5}),
            serde_json::json!({"image": format!("{}/camera.png", photos.display()), "captions": "a camera", "score": 1}),
        ),
    )
    .unwrap();
    let db = open(tmp.path());
    create(&db);
    one(
        &db,
        &format!(
            "IMPORT INTO images FROM '{}' WITH (image_column = 'path', text_column = 'caption')",
            csv.display()
        ),
    );
    one(
        &db,
        &format!("IMPORT INTO images FROM '{}'", jsonl.display()),
    );
    let r = one(&db, "SELECT id, text, split, year, score FROM images");
    assert_eq!(
        r.rows,
        vec![
            vec![
                Cell::Int(1),
                Cell::List(vec!["a cup of coffee".into()]),
                Cell::Str("train".into()),
                Cell::Int(2009),
                Cell::Null
            ],
            vec![
                Cell::Int(2),
                Cell::List(vec!["a rocket".into()]),
                Cell::Str("test".into()),
                Cell::Int(1969),
                Cell::Null
            ],
            vec![
                Cell::Int(3),
                Cell::List(vec!["a horse".into(), "cavalo".into()]),
                Cell::Null,
                Cell::Null,
                Cell::Float(0.5)
            ],
            vec![
                Cell::Int(4),
                Cell::List(vec!["a camera".into()]),
                Cell::Null,
                Cell::Null,
                Cell::Float(1.0)
            ],
        ]
    );
}

#[test]
fn hugging_face_parquet_file_and_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    create(&db);
    let data = import_fixtures().join("hf_parquet");
    // One shard file, with the split taken from its name.
    one(
        &db,
        &format!(
            "IMPORT INTO images FROM '{}'",
            data.join("data/train-00000-of-00001.parquet").display()
        ),
    );
    let r = one(&db, "SELECT split, year, source, text FROM images LIMIT 1");
    assert_eq!(
        r.rows[0],
        vec![
            Cell::Str("train".into()),
            Cell::Int(1983),
            Cell::Str("skimage.astronaut".into()),
            Cell::List(vec![
                "an astronaut in a white suit".into(),
                "a woman posing with a flag".into()
            ])
        ]
    );
    // The dataset folder with a split filter.
    one(
        &db,
        &format!(
            "IMPORT INTO images FROM '{}' WITH (split = 'test', columns = 'year')",
            data.display()
        ),
    );
    assert_eq!(count(&db), 6);
    let r = one(&db, "SELECT count(*) FROM images WHERE split = 'test'");
    assert_eq!(r.rows[0][0], Cell::Int(2));
    // The stored image is the struct's bytes, decodable, named by the struct's path.
    let snap = db.snapshot().unwrap();
    let row = snap.get("images", 1).unwrap().unwrap();
    assert_eq!(row.row().image_source(), Some("astronaut.jpg"));
    assert!(image::load_from_memory(row.row().image_bytes().unwrap()).is_ok());
}

#[test]
fn a_bad_row_fails_the_import_and_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    imagefolder(&data, false);
    std::fs::write(data.join("train/pics/broken.jpg"), b"not a jpeg at all").unwrap();
    let meta = data.join("train/metadata.jsonl");
    let mut text = std::fs::read_to_string(&meta).unwrap();
    text.push_str("{\"file_name\": \"pics/broken.jpg\", \"text\": \"broken\"}\n");
    text.push_str("{\"file_name\": \"pics/missing.jpg\", \"text\": \"missing\"}\n");
    text.push_str("{\"text\": \"no file name\"}\n");
    std::fs::write(&meta, text).unwrap();

    let db = open(tmp.path());
    create(&db);
    let before = db.storage().versions().unwrap();
    let sql = format!("IMPORT INTO images FROM '{}'", data.display());
    let err = db.sql(&sql).unwrap_err();
    let Error::RowsFailed { failures, .. } = &err else {
        panic!("{err}")
    };
    let reasons: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    assert_eq!(failures.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("missing.jpg): image file not found"))
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("missing value in image column 'file_name'"))
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("broken.jpg") && r.contains("decode")),
        "{reasons:?}"
    );
    // Nothing was committed: no new version, no rows, no new columns.
    assert_eq!(db.storage().versions().unwrap(), before);
    assert_eq!(count(&db), 0);
    assert!(db.sql("SELECT rating FROM images").is_err());

    // A missing text column named in the options fails before reading anything.
    let err = db
        .sql(&format!(
            "IMPORT INTO images FROM '{}' WITH (text_column = 'caption')",
            data.join("train/metadata.jsonl").display()
        ))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("text column 'caption' is not in the file"),
        "{err}"
    );

    // ON ERROR SKIP imports the rest and reports the skipped rows with their reasons.
    let r = one(&db, &format!("{sql} ON ERROR SKIP"));
    assert_eq!(
        r.status.as_deref(),
        Some("imported 5 rows into images, skipped 3")
    );
    assert_eq!(r.columns, ["skipped", "image", "reason"]);
    assert_eq!(r.rows.len(), 3);
    assert_eq!(count(&db), 5);
}

/// Cosine of two L2-normalised vectors.
fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn search_both_directions_matches_independent_embeddings_then_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    create(&db);
    let values: Vec<String> = PHOTOS
        .iter()
        .map(|(name, captions)| {
            let list: Vec<String> = captions.iter().map(|c| format!("'{c}'")).collect();
            format!("('{}', ARRAY[{}])", photo(name).display(), list.join(", "))
        })
        .collect();
    one(
        &db,
        &format!(
            "INSERT INTO images (image, text) VALUES {}",
            values.join(", ")
        ),
    );

    // Reference embeddings straight from the encoder.
    let enc = DualEncoder::load(&tiny_clip(), &default_device()).unwrap();
    let image_vec = |name: &str| {
        let bytes = std::fs::read(photo(name)).unwrap();
        let px = enc.pixels(&bytes, name).unwrap();
        enc.embed_pixels(&[px]).unwrap().remove(0)
    };
    let images: Vec<Vec<f32>> = PHOTOS.iter().map(|(n, _)| image_vec(n)).collect();

    // Text -> image: every image ranked, scores are the cosines, in order.
    let query = "a photograph of an animal";
    let q = enc.embed_texts(&[query]).unwrap().remove(0);
    let hits = db
        .collection("images")
        .unwrap()
        .search_text(query)
        .limit(10)
        .run()
        .unwrap()
        .hits;
    assert_eq!(hits.len(), 5);
    let mut expected: Vec<(u64, f32)> = images
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64 + 1, cos(&q, v)))
        .collect();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for (h, (id, score)) in hits.iter().zip(&expected) {
        assert_eq!(h.id, *id);
        assert!((h.score - score).abs() < 1e-5, "{} vs {score}", h.score);
    }
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    // Image -> text: captions ranked, each hit names its caption.
    let r = one(
        &db,
        &format!(
            "SEARCH images BY IMAGE '{}' LIMIT 20",
            photo("horse.png").display()
        ),
    );
    assert_eq!(r.rows.len(), 8, "one hit per caption");
    let captions: Vec<(u64, &str)> = PHOTOS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, cs))| cs.iter().map(move |c| (i as u64 + 1, *c)))
        .collect();
    let texts: Vec<&str> = captions.iter().map(|c| c.1).collect();
    let text_vecs = enc.embed_texts(&texts).unwrap();
    let hq = &images[2];
    for row in 0..r.rows.len() {
        let Some(Cell::Str(matched)) = r.get(row, "matched_text") else {
            panic!()
        };
        let k = texts.iter().position(|t| t == matched).unwrap();
        let Some(Cell::Float(score)) = r.get(row, "score") else {
            panic!()
        };
        assert!((*score as f32 - cos(hq, &text_vecs[k])).abs() < 1e-5);
        assert_eq!(r.get(row, "id"), Some(&Cell::Int(captions[k].0 as i64)));
    }

    // Image -> image finds the image itself first.
    let r = one(
        &db,
        &format!(
            "SEARCH images BY IMAGE '{}' MATCH IMAGES LIMIT 1",
            photo("rocket.jpg").display()
        ),
    );
    assert_eq!(r.get(0, "id"), Some(&Cell::Int(4)));
    let Some(Cell::Float(s)) = r.get(0, "score") else {
        panic!()
    };
    assert!(*s > 0.9999);

    // Delete the best text->image hit: it disappears, the others keep their order.
    let top = hits[0].id;
    one(&db, &format!("DELETE FROM images WHERE id = {top}"));
    let after = db
        .collection("images")
        .unwrap()
        .search_text(query)
        .limit(10)
        .run()
        .unwrap()
        .hits;
    let ids: Vec<u64> = after.iter().map(|h| h.id).collect();
    let expected_ids: Vec<u64> = hits.iter().skip(1).map(|h| h.id).collect();
    assert_eq!(ids, expected_ids);
    assert_eq!(after[0].rank, 1);
}

#[test]
fn builder_api_filters_and_returns_rag_context() {
    let tmp = tempfile::tempdir().unwrap();
    let db = parquet_collection(tmp.path());
    let results = db
        .collection("images")
        .unwrap()
        .search_text("a rocket")
        .filter("split = 'train' AND year < 2000")
        .with_image_bytes()
        .limit(10)
        .run()
        .unwrap();
    assert_eq!(results.hits.len(), 2);
    for h in &results.hits {
        assert_eq!(h.split.as_deref(), Some("train"));
        let year = h.metadata.iter().find(|(k, _)| k == "year").unwrap();
        assert!(matches!(year.1, mirante::storage::Value::I64(y) if y < 2000));
        assert!(image::load_from_memory(h.image_bytes.as_ref().unwrap()).is_ok());
        assert!(!h.texts.is_empty());
    }
    // Errors in the filter name the problem.
    let err = db
        .collection("images")
        .unwrap()
        .search_text("x")
        .filter("yeer > 3")
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("did you mean 'year'?"), "{err}");
    // Unknown collections are refused up front.
    assert!(db.collection("imagse").is_err());
}

#[test]
fn embed_fills_a_collection_imported_without_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    one(&db, "CREATE COLLECTION images WITH (model = NULL)");
    let r = one(
        &db,
        &format!(
            "IMPORT INTO images FROM '{}'",
            import_fixtures().join("hf_parquet").display()
        ),
    );
    assert!(r.status.unwrap().contains("without embeddings"));
    assert!(db.sql("SEARCH images BY TEXT 'x'").is_err());
    one(
        &db,
        &format!("EMBED images USING MODEL '{}'", tiny_clip().display()),
    );
    let r = one(&db, "SEARCH images BY TEXT 'a horse' LIMIT 6");
    assert_eq!(r.rows.len(), 6);
    // A second model's spaces: searched with USING MODEL, the first model stays active.
    let siglip = repo_root().join("training/tests/fixtures/siglip-tiny");
    one(
        &db,
        &format!("EMBED images USING MODEL '{}'", siglip.display()),
    );
    let models = one(&db, "SHOW MODELS");
    assert_eq!(models.rows.len(), 2);
    let r = one(
        &db,
        &format!(
            "SEARCH images BY TEXT 'a horse' USING MODEL '{}' LIMIT 2",
            siglip.display()
        ),
    );
    assert_eq!(r.rows.len(), 2);
    let default = one(&db, "SEARCH images BY TEXT 'a horse' LIMIT 6");
    assert_ne!(
        r.rows[0][2], default.rows[0][2],
        "different spaces, different scores"
    );
    let enc = DualEncoder::load(&siglip, &default_device()).unwrap();
    let q = enc.embed_texts(&["a horse"]).unwrap().remove(0);
    let Cell::Int(id) = r.rows[0][1] else {
        panic!()
    };
    let snap = db.snapshot().unwrap();
    let c = snap.collection("images").unwrap();
    let space = c
        .spaces
        .iter()
        .find(|s| {
            s.spec.modality == mirante::storage::Modality::Image
                && s.spec.model_id.ends_with("siglip-tiny")
        })
        .unwrap();
    let v = snap
        .vector_of("images", space.id, id as u64, 0)
        .unwrap()
        .unwrap();
    let Cell::Float(score) = r.rows[0][2] else {
        panic!()
    };
    assert!((score as f32 - cos(&q, &v)).abs() < 1e-5);
    // EMBED again has nothing left to do.
    let r = one(&db, "EMBED images");
    assert_eq!(
        r.status.as_deref(),
        Some(
            format!(
                "embedded 0 segment columns of images with {}",
                tiny_clip().canonicalize().unwrap().display()
            )
            .as_str()
        )
    );
}

#[test]
fn search_into_writes_an_html_report() {
    let tmp = tempfile::tempdir().unwrap();
    let db = parquet_collection(tmp.path());
    let report = tmp.path().join("report.html");
    let r = one(
        &db,
        &format!(
            "SEARCH images BY TEXT 'a <cat> & a dog' LIMIT 4 INTO '{}'",
            report.display()
        ),
    );
    assert_eq!(r.rows.len(), 4);
    let html = std::fs::read_to_string(&report).unwrap();
    assert_eq!(html.matches("class=\"hit\"").count(), 4);
    assert_eq!(html.matches("src=\"data:image/jpeg;base64,").count(), 4);
    assert!(html.contains("a &lt;cat&gt; &amp; a dog"));
    check_in_browser(&report, 4);
}

/// The photos as an Arrow batch the way Hugging Face datasets lay an image dataset out: an
/// `image` struct {bytes, path}, a list of captions, a split and a year; `garbage` makes the
/// last image undecodable.
fn photos_batch(garbage: bool) -> arrow_array::RecordBatch {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, StructArray};
    use arrow_schema::{DataType, Field};
    let mut bytes: Vec<Vec<u8>> = PHOTOS
        .iter()
        .map(|(n, _)| std::fs::read(photo(n)).unwrap())
        .collect();
    if garbage {
        *bytes.last_mut().unwrap() = b"not an image".to_vec();
    }
    let image = StructArray::from(vec![
        (
            Arc::new(Field::new("bytes", DataType::Binary, true)),
            Arc::new(BinaryArray::from_iter_values(bytes.iter())) as ArrayRef,
        ),
        (
            Arc::new(Field::new("path", DataType::Utf8, true)),
            Arc::new(StringArray::from_iter_values(
                PHOTOS.iter().map(|(n, _)| *n),
            )) as ArrayRef,
        ),
    ]);
    let mut texts = ListBuilder::new(StringBuilder::new());
    for (_, captions) in PHOTOS {
        for c in captions {
            texts.values().append_value(c);
        }
        texts.append(true);
    }
    RecordBatch::try_from_iter(vec![
        ("image", Arc::new(image) as ArrayRef),
        ("text", Arc::new(texts.finish()) as ArrayRef),
        (
            "split",
            Arc::new(StringArray::from(vec![
                "train", "train", "test", "test", "train",
            ])) as ArrayRef,
        ),
        (
            "year",
            Arc::new(Int64Array::from(vec![1990, 2010, 2000, 1969, 2020])) as ArrayRef,
        ),
    ])
    .unwrap()
}

#[test]
fn arrow_input_and_api_queries_match_the_statements() {
    use mirante::ExecOptions;
    use mirante::query::options::ImportOptions;
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    create(&db);
    let images = db.collection("images").unwrap();
    let exec = ExecOptions::default();
    let source = |garbage: bool| {
        let batch = photos_batch(garbage);
        mirante::ingest::from_arrow(
            &batch.schema(),
            vec![Ok(batch)].into_iter(),
            &ImportOptions::default(),
        )
        .unwrap()
    };
    // One undecodable image fails the whole add; skipping keeps the others.
    let err = images
        .add(source(true), &ImportOptions::default(), false, &exec)
        .unwrap_err();
    assert!(matches!(err, Error::RowsFailed { .. }), "{err}");
    assert_eq!(count(&db), 0);
    let added = images
        .add(source(false), &ImportOptions::default(), false, &exec)
        .unwrap();
    assert_eq!(added.ids, [1, 2, 3, 4, 5]);
    assert!(added.embedded && added.skipped.is_empty());
    let skipped = images
        .add(source(true), &ImportOptions::default(), true, &exec)
        .unwrap();
    assert_eq!((skipped.ids.len(), skipped.skipped.len()), (4, 1));
    let years = one(
        &db,
        "SELECT year FROM images WHERE split = 'test' AND id <= 5",
    );
    assert_eq!(years.rows, [[Cell::Int(2000)], [Cell::Int(1969)]]);

    // An image given as bytes ranks as the same file; a vector as the text it embeds.
    let ranked = |s: mirante::Search<'_>| -> Vec<(u64, String)> {
        s.limit(6)
            .run()
            .unwrap()
            .hits
            .iter()
            .map(|h| (h.id, format!("{:.5}", h.score)))
            .collect()
    };
    let chelsea = std::fs::read(photo("chelsea.png")).unwrap();
    assert_eq!(
        ranked(images.search_image_bytes(chelsea)),
        ranked(images.search_image(photo("chelsea.png").to_str().unwrap()))
    );
    let model = tiny_clip().display().to_string();
    let cat = db.embed_texts(&["a cat"], Some(&model), &exec).unwrap();
    assert_eq!(cat[0].len(), 24);
    assert_eq!(
        ranked(images.search_vector(cat[0].clone())),
        ranked(images.search_text("a cat"))
    );
    let e = images.search_vector(vec![1.0; 3]).run().unwrap_err();
    assert!(e.to_string().contains("holds 24-d vectors"), "{e}");
    let photos = db
        .embed_images(
            &[mirante::training::ImageSource::Path(photo("horse.png"))],
            Some(&model),
            &exec,
        )
        .unwrap();
    assert_eq!(photos.len(), 1);
    let bad = db
        .embed_images(
            &[mirante::training::ImageSource::Bytes {
                source: "x".into(),
                bytes: b"no".to_vec(),
            }],
            Some(&model),
            &exec,
        )
        .unwrap_err();
    assert!(
        bad.to_string().contains("1 of 1 images cannot be embedded"),
        "{bad}"
    );

    // Stored vectors: gathered across segments, then the mapped column itself once compacted.
    let stored = images
        .embeddings(None, mirante::storage::Modality::Image)
        .unwrap();
    assert_eq!(stored.ids.len(), 9);
    let snap = db.snapshot().unwrap();
    let active = snap.collection("images").unwrap().active_image.unwrap();
    let first = snap
        .vector_of("images", active, stored.ids[0], 0)
        .unwrap()
        .unwrap();
    assert_eq!(&stored.as_slice()[..24], &first[..]);
    one(&db, "DELETE FROM images WHERE id = 2");
    one(&db, "COMPACT images");
    let compacted = images
        .embeddings(None, mirante::storage::Modality::Text)
        .unwrap();
    assert!(matches!(
        compacted.vectors,
        mirante::EmbeddingVectors::Mapped(_)
    ));
    assert_eq!(
        compacted.ids.len(),
        compacted.captions.as_ref().unwrap().len()
    );
    assert!(!compacted.ids.contains(&2));
    assert_eq!(compacted.as_slice().len(), compacted.ids.len() * 24);

    // Outputs as Arrow: typed by the catalog, image bytes when asked for.
    let out = db.sql("SELECT id, text, year FROM images LIMIT 2").unwrap();
    let batch = out[0].to_arrow().unwrap();
    assert_eq!(batch.num_rows(), 2);
    let schema = batch.schema();
    assert_eq!(schema.field(0).data_type(), &arrow_schema::DataType::Int64);
    assert!(matches!(
        schema.field(1).data_type(),
        arrow_schema::DataType::List(_)
    ));
    assert!(schema.field(2).is_nullable());
    let mut searched = None;
    db.sql_each(
        "SEARCH images BY TEXT 'a cat' LIMIT 3",
        &ExecOptions {
            image_bytes: true,
            ..ExecOptions::default()
        },
        |o| searched = Some(o),
    )
    .unwrap();
    let hits = searched.unwrap().to_arrow().unwrap();
    assert_eq!(hits.num_rows(), 3);
    assert!(hits.schema().field_with_name("image_bytes").is_ok());
}

/// Rows that bring their own vectors (LangChain documents): three 4-d documents, the second
/// without an image, each a caption whose vector is its row's; `key` names them.
fn documents_batch(keys: &[&str], vectors: &[[f32; 4]]) -> arrow_array::RecordBatch {
    use std::sync::Arc;

    use arrow_array::builder::{Float32Builder, ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    let mut images = StringBuilder::new();
    let mut texts = ListBuilder::new(StringBuilder::new());
    let mut row_vectors = ListBuilder::new(Float32Builder::new());
    let mut caption_vectors = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
    for (i, (key, v)) in keys.iter().zip(vectors).enumerate() {
        if i == 1 {
            images.append_null();
        } else {
            images.append_value(photo("chelsea.png").display().to_string());
        }
        texts.values().append_value(format!("document {key}"));
        texts.append(true);
        row_vectors.values().append_slice(v);
        row_vectors.append(true);
        caption_vectors.values().values().append_slice(v);
        caption_vectors.values().append(true);
        caption_vectors.append(true);
    }
    RecordBatch::try_from_iter(vec![
        ("image", Arc::new(images.finish()) as ArrayRef),
        ("text", Arc::new(texts.finish()) as ArrayRef),
        (
            "key",
            Arc::new(StringArray::from(keys.to_vec())) as ArrayRef,
        ),
        ("vec", Arc::new(row_vectors.finish()) as ArrayRef),
        (
            "caption_vecs",
            Arc::new(caption_vectors.finish()) as ArrayRef,
        ),
    ])
    .unwrap()
}

#[test]
fn rows_with_their_own_vectors_may_lack_images_and_replace_rows_in_one_commit() {
    use mirante::ExecOptions;
    use mirante::query::options::{EmbeddingColumns, ImportOptions};
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    one(&db, "CREATE COLLECTION docs WITH (model = NULL)");
    let docs = db.collection("docs").unwrap();
    let exec = ExecOptions::default();
    let with_vectors = ImportOptions {
        embeddings: Some(EmbeddingColumns {
            image: "vec".into(),
            text: "caption_vecs".into(),
            model: "outside".into(),
        }),
        ..ImportOptions::default()
    };
    let source = |batch: arrow_array::RecordBatch, options: &ImportOptions| {
        mirante::ingest::from_arrow(&batch.schema(), vec![Ok(batch)].into_iter(), options).unwrap()
    };
    let axes = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ];
    // Without vectors, a row without an image is refused.
    let err = docs
        .add(
            source(
                documents_batch(&["a", "b", "c"], &axes),
                &ImportOptions::default(),
            ),
            &ImportOptions::default(),
            false,
            &exec,
        )
        .unwrap_err();
    assert!(err.to_string().contains("the image is null"), "{err}");
    let added = docs
        .add(
            source(documents_batch(&["a", "b", "c"], &axes), &with_vectors),
            &with_vectors,
            false,
            &exec,
        )
        .unwrap();
    assert_eq!(added.ids, [1, 2, 3]);
    let images = one(&db, "SELECT id FROM docs WHERE image IS NULL");
    assert_eq!(images.rows, [[Cell::Int(2)]]);
    // The text-only row is found by its vector, in the row space and the caption space.
    let top = |s: mirante::Search<'_>| s.limit(1).run().unwrap().hits[0].id;
    assert_eq!(top(docs.search_vector(vec![0.0, 2.0, 0.1, 0.0])), 2);
    assert_eq!(
        top(docs.search_vector(vec![0.0, 2.0, 0.1, 0.0]).match_texts()),
        2
    );

    // Replacing b and c: the old rows go in the same commit as the new ones arrive.
    let version = db.snapshot().unwrap().version();
    let moved = [
        [0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0, 1.0],
        [1.0, 1.0, 0.0, 0.0],
    ];
    let replaced = docs
        .add_replacing(
            source(documents_batch(&["b", "c", "d"], &moved), &with_vectors),
            &with_vectors,
            false,
            Some("key IN ('b', 'c')"),
            &exec,
        )
        .unwrap();
    assert_eq!((replaced.ids.len(), replaced.replaced), (3, 2));
    // One version holds both halves (a merge of small segments may commit after it).
    let live = |v: u64| {
        let snap = db.storage().snapshot_at(v).unwrap();
        let c = snap.collection("docs").unwrap();
        c.segments.iter().map(|s| s.live_rows()).sum::<u64>()
    };
    assert_eq!((live(version), live(version + 1)), (3, 4));
    let keys = one(&db, "SELECT key FROM docs");
    let keys: Vec<_> = keys.rows.iter().map(|r| r[0].clone()).collect();
    assert_eq!(
        keys,
        ["a", "b", "c", "d"].map(|k| Cell::Str(k.into())).to_vec()
    );
    let after = db.snapshot().unwrap().version();
    // A model cannot embed rows that have no image: EMBED says which.
    let err = db
        .sql(&format!(
            "EMBED docs USING MODEL '{}'",
            tiny_clip().display()
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no image"), "{err}");
    // A predicate that names no column fails before anything is written.
    let err = docs
        .add_replacing(
            source(documents_batch(&["e"], &axes[..1]), &with_vectors),
            &with_vectors,
            false,
            Some("nope = 1"),
            &exec,
        )
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(db.snapshot().unwrap().version(), after);
}

/// Two-phase import: two threads build segments of halves of a source without the writer lock,
/// one commit publishes them; searches then answer as after a plain IMPORT of the whole source.
#[test]
fn segments_built_in_parallel_then_published_search_like_one_import() {
    use mirante::ExecOptions;
    use mirante::query::options::ImportOptions;
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    let model = tiny_clip().display().to_string();
    for c in ["whole", "parts"] {
        one(
            &db,
            &format!("CREATE COLLECTION {c} WITH (model = '{model}')"),
        );
    }
    let all = tmp.path().join("all.csv");
    mirante_tests::photo_rows_csv(&all, 24);
    one(&db, &format!("IMPORT INTO whole FROM '{}'", all.display()));
    let lines: Vec<String> = std::fs::read_to_string(&all)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let halves: Vec<PathBuf> = lines[1..]
        .chunks(12)
        .enumerate()
        .map(|(i, part)| {
            let path = tmp.path().join(format!("part{i}.csv"));
            std::fs::write(&path, format!("{}\n{}\n", lines[0], part.join("\n"))).unwrap();
            path
        })
        .collect();
    let options = ImportOptions::default();
    let access = mirante::Access::default();
    let reports: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = halves
            .iter()
            .map(|path| {
                let (db, options, access) = (&db, &options, &access);
                s.spawn(move || {
                    let source =
                        mirante::ingest::open(&path.display().to_string(), options, access)
                            .unwrap();
                    db.collection("parts")
                        .unwrap()
                        .build_segments(source, options, false, 12, &ExecOptions::default())
                        .unwrap()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(
        one(&db, "SELECT count(*) FROM parts").rows[0][0],
        Cell::Int(0)
    );
    let ids: Vec<u64> = reports.iter().flat_map(|r| r.ids.clone()).collect();
    let built: Vec<_> = reports.into_iter().map(|r| r.built).collect();
    let published = db.publish(&built).unwrap();
    assert_eq!(published.rows, 24);
    let stored = one(&db, "SELECT id FROM parts");
    let mut stored: Vec<u64> = stored
        .rows
        .iter()
        .map(|r| match r[0] {
            Cell::Int(id) => id as u64,
            ref other => panic!("{other:?}"),
        })
        .collect();
    stored.sort_unstable();
    let mut expected = ids.clone();
    expected.sort_unstable();
    assert_eq!(stored, expected);
    // Every row scores as after the single import.
    same_scores_by_caption(&db, "parts", "whole", 24);
    // A second publication of the same segments is refused.
    let again = db.publish(&built).unwrap_err().to_string();
    assert!(again.contains("published before"), "{again}");
}

/// Distributed REEMBED: the driver prepares, two threads embed halves of the segments without
/// the writer lock, one commit attaches the columns and switches; searches then answer as after
/// a plain REEMBED.
#[test]
fn segments_embedded_in_parallel_then_published_search_like_reembed() {
    use mirante::ExecOptions;
    let tmp = tempfile::tempdir().unwrap();
    let db = open(tmp.path());
    let model = tiny_clip().display().to_string();
    let csv = tmp.path().join("rows.csv");
    mirante_tests::photo_rows_csv(&csv, 10);
    for c in ["plain", "parallel"] {
        one(&db, &format!("CREATE COLLECTION {c}"));
        for _ in 0..3 {
            one(&db, &format!("IMPORT INTO {c} FROM '{}'", csv.display()));
        }
    }
    one(&db, &format!("REEMBED plain USING MODEL '{model}'"));
    let parallel = db.collection("parallel").unwrap();
    let segments = parallel.prepare_embedding(&model).unwrap();
    assert_eq!(segments.len(), 3);
    let built: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = [&segments[..1], &segments[1..]]
            .into_iter()
            .map(|part| {
                let (parallel, model) = (&parallel, &model);
                s.spawn(move || {
                    parallel
                        .embed_segments(model, part, &ExecOptions::default())
                        .unwrap()
                })
            })
            .flat_map(|w| w.join().unwrap())
            .collect();
        workers
    });
    // Nothing switched yet: the collection still searches with its first model.
    assert_eq!(
        parallel.model().unwrap().as_deref(),
        Some(mirante::DEFAULT_MODEL)
    );
    let status = parallel
        .publish_embedding(&model, &built, true, &ExecOptions::default())
        .unwrap();
    assert!(
        status.starts_with("published 6 segment columns"),
        "{status}"
    );
    assert!(status.contains("embedded 0 segment columns"), "{status}");
    assert_eq!(parallel.model().unwrap().as_deref(), Some(model.as_str()));
    same_scores_by_caption(&db, "parallel", "plain", 30);
    // Publishing the same columns again attaches nothing.
    let again = parallel
        .publish_embedding(&model, &built, true, &ExecOptions::default())
        .unwrap();
    assert!(again.starts_with("published 0 segment columns"), "{again}");
}

/// Collections `a` and `b` score every row (`rows` of them) alike for a text query, both ways.
/// The fixture photographs repeat, so equal scores are ordered by id, which may differ between
/// the two: hits are compared by caption.
fn same_scores_by_caption(db: &Database, a: &str, b: &str, rows: usize) {
    for (text, target) in [("photo 3 of horse.png", ""), ("a rocket", " MATCH TEXTS")] {
        let hits = |c: &str| {
            let query = format!("SEARCH {c} BY TEXT '{text}' LIMIT {rows}{target}");
            let mut found = one(db, &query).project(&["text", "score"]).json_rows();
            found.sort_by_key(|r| r.to_string());
            found
        };
        assert_eq!(hits(a), hits(b), "{text}{target}");
    }
}
