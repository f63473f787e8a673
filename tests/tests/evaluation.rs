//! `EVALUATE`: metric values against reference implementations (pytrec_eval, scikit-learn,
//! numpy, through fixtures written by `scripts/make_eval_fixtures.py`), and the statement end to
//! end: ground truth from rows, duplicates, filters, several models, the system table, reports.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use mirante::metrics::rank_metric;
use mirante::query::EvalMetric;
use mirante::ranking::{Problem, exact_ranks};
use mirante::storage::IndexSpec;
use mirante::{Cell, Database, ResultSet};
use mirante_tests::{import_fixtures, repo_root, tiny_clip};
use serde_json::Value as Json;

/// The metrics the fixtures hold, by the names Mirante gives them.
const FIXTURE_METRICS: [EvalMetric; 7] = [
    EvalMetric::Recall(1),
    EvalMetric::Recall(5),
    EvalMetric::Recall(10),
    EvalMetric::Mrr,
    EvalMetric::Ndcg(5),
    EvalMetric::Ndcg(10),
    EvalMetric::MedianRank,
];

#[test]
fn metrics_equal_pytrec_eval_and_sklearn_on_the_fixtures() {
    let path = repo_root().join("tests/fixtures/evaluation/metrics.json");
    let fixtures: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixtures["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let scores: Vec<Vec<f32>> = case["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect();
        let gold: Vec<Option<u32>> = case["gold"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_u64().map(|g| g as u32))
            .collect();
        // One-hot captions and images holding the scores: every dot product is exactly the
        // fixture's score, so ties in the fixture are ties here.
        let (n, m) = (scores.len(), scores[0].len());
        let texts: Vec<Vec<f32>> = (0..n)
            .map(|t| (0..n).map(|k| f32::from(u8::from(k == t))).collect())
            .collect();
        let images: Vec<Vec<f32>> = (0..m)
            .map(|j| (0..n).map(|t| scores[t][j]).collect())
            .collect();
        let ranks = exact_ranks(&Problem {
            texts: texts.iter().map(Vec::as_slice).collect(),
            images: images.iter().map(Vec::as_slice).collect(),
            gold,
        });
        let (t2i, i2t) = (ranks.text_queries(), ranks.image_queries());
        for (direction, queries) in [("text_to_image", &t2i), ("image_to_text", &i2t)] {
            let expected = &case[direction];
            assert_eq!(
                queries.len() as u64,
                expected["queries"].as_u64().unwrap(),
                "{name} {direction} queries"
            );
            for metric in FIXTURE_METRICS {
                let got = rank_metric(metric, queries.iter().copied()).unwrap();
                let want = expected[metric.to_string()].as_f64().unwrap();
                assert!(
                    (got - want).abs() < 1e-9,
                    "{name} {direction} {metric}: {got} vs reference {want}"
                );
            }
            for (key, got) in [
                ("mean_similarity", ranks.matching.value().unwrap()),
                (
                    "mean_similarity_nonmatching",
                    ranks.non_matching.value().unwrap(),
                ),
            ] {
                let want = expected[key].as_f64().unwrap();
                assert!(
                    (got - want).abs() < 1e-9,
                    "{name} {direction} {key}: {got} vs numpy {want}"
                );
            }
        }
    }
}

use mirante_tests::{float_at as float, one};

fn int(r: &ResultSet, row: usize, column: &str) -> i64 {
    match r.get(row, column) {
        Some(Cell::Int(v)) => *v,
        other => panic!("{column}: {other:?}"),
    }
}

/// The parquet fixture (6 photos, 9 captions, train and test splits) under the tiny CLIP.
fn collection(dir: &Path) -> Database {
    let db = Database::open(dir.join("db")).unwrap();
    one(
        &db,
        &format!(
            "CREATE COLLECTION images WITH (model = '{}')",
            tiny_clip().display()
        ),
    );
    one(
        &db,
        &format!(
            "IMPORT INTO images FROM '{}'",
            import_fixtures().join("hf_parquet").display()
        ),
    );
    db
}

#[test]
fn evaluate_agrees_with_search_results() {
    let dir = tempfile::tempdir().unwrap();
    let db = collection(dir.path());
    let r = one(
        &db,
        "EVALUATE recall@1, recall@3, mrr ON images DIRECTION text_to_image",
    );
    assert_eq!(r.rows.len(), 1);
    // The same quantities from SEARCH: for every caption, where does its row's image rank?
    let captions = one(&db, "SELECT id, text FROM images");
    let mut first = Vec::new();
    for row in &captions.rows {
        let (Cell::Int(id), Cell::List(texts)) = (&row[0], &row[1]) else {
            panic!("{row:?}");
        };
        for t in texts {
            let hits = one(
                &db,
                &format!(
                    "SEARCH images BY TEXT '{}' LIMIT 100",
                    t.replace('\'', "''")
                ),
            );
            let rank = hits
                .rows
                .iter()
                .position(|h| h[1] == Cell::Int(*id))
                .unwrap()
                + 1;
            first.push(rank as f64);
        }
    }
    let n = first.len() as f64;
    assert_eq!(int(&r, 0, "queries"), first.len() as i64);
    let recall = |k: f64| first.iter().filter(|&&r| r <= k).count() as f64 / n;
    assert!((float(&r, 0, "recall@1") - recall(1.0)).abs() < 1e-12);
    assert!((float(&r, 0, "recall@3") - recall(3.0)).abs() < 1e-12);
    let mrr = first.iter().map(|r| 1.0 / r).sum::<f64>() / n;
    assert!((float(&r, 0, "mrr") - mrr).abs() < 1e-12);
}

#[test]
fn filters_duplicates_models_and_the_system_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = collection(dir.path());
    let all = one(&db, "EVALUATE ON images");
    assert_eq!(all.rows.len(), 2);
    assert_eq!(
        all.column_names(),
        [
            "model",
            "direction",
            "queries",
            "recall@1",
            "recall@5",
            "recall@10",
            "mrr",
            "ndcg@10",
            "median_rank",
            "mean_similarity",
            "mean_similarity_nonmatching"
        ]
    );
    for row in 0..2 {
        for c in ["recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"] {
            let v = float(&all, row, c);
            assert!((0.0..=1.0).contains(&v), "{c} {v}");
        }
    }
    let captions = int(&all, 0, "queries");

    // WHERE restricts queries and gallery: fewer captions, and recall@K over a smaller gallery.
    let test = one(
        &db,
        "EVALUATE recall@1 ON images WHERE split = 'test' DIRECTION image_to_text",
    );
    let test_rows = one(&db, "SELECT count(*) FROM images WHERE split = 'test'");
    assert_eq!(
        Some(&Cell::Int(int(&test, 0, "queries"))),
        test_rows.get(0, "count")
    );

    // Two rows with byte-identical images: one gallery image, relevant to both captions.
    let photo = import_fixtures().join("photos/chelsea.png");
    one(
        &db,
        &format!(
            "INSERT INTO images (image, text) VALUES ('{p}', 'a cat'), ('{p}', 'the same cat')",
            p = photo.display()
        ),
    );
    let dup = one(&db, "EVALUATE mrr ON images");
    let images = int(&all, 1, "queries");
    assert_eq!(
        int(&dup, 0, "queries"),
        captions + 2,
        "both captions are queries"
    );
    assert_eq!(
        int(&dup, 1, "queries"),
        images + 1,
        "the copy is not a second image"
    );
    let status = dup.status.clone().unwrap();
    assert!(
        status.contains(&format!(
            "{} images and {} captions",
            images + 1,
            captions + 2
        )),
        "{status}"
    );

    // Two models side by side (the same weights under two names): zero deltas.
    let folder = tiny_clip();
    let both = one(
        &db,
        &format!(
            "EVALUATE recall@1, mrr ON images USING MODEL '{}', '{}/'",
            folder.display(),
            folder.display()
        ),
    );
    assert_eq!(both.rows.len(), 4);
    assert!(both.column_names().contains(&"delta_mrr"));
    assert_eq!(float(&both, 3, "delta_mrr"), 0.0);

    // Unknown models are named, with the collection's own.
    let err = db
        .sql("EVALUATE mrr ON images USING MODEL 'no/such-model'")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no embeddings from model no/such-model"),
        "{err}"
    );

    // Every run is in the system table, with its metrics as JSON.
    let runs = one(
        &db,
        "SELECT direction, model, metrics FROM mirante_evaluations WHERE collection = 'images'",
    );
    assert_eq!(runs.rows.len(), 2 + 1 + 2 + 4);
    let Cell::Str(metrics) = &runs.rows[0][2] else {
        panic!()
    };
    let metrics: Json = serde_json::from_str(metrics).unwrap();
    assert_eq!(
        metrics["recall@1"].as_f64().unwrap(),
        float(&all, 0, "recall@1")
    );
}

#[test]
fn evaluation_report_shows_metrics_charts_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let db = collection(dir.path());
    let path = dir.path().join("eval.html");
    let r = one(
        &db,
        &format!("EVALUATE ON images INTO '{}'", path.display()),
    );
    assert!(r.status.unwrap().contains("wrote report"));
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.contains("<table class=\"metrics\">"));
    assert_eq!(html.matches("<div class=\"chart\">").count(), 8);
    assert!(html.contains("Worst text_to_image queries"));
    assert!(html.matches("data:image/jpeg;base64,").count() >= 6);
}

#[test]
fn evaluate_without_embeddings_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("db")).unwrap();
    one(&db, "CREATE COLLECTION bare WITH (model = NULL)");
    let err = db.sql("EVALUATE ON bare").unwrap_err().to_string();
    assert!(err.contains("EMBED bare USING MODEL"), "{err}");
    let err = db
        .sql("EVALUATE recall@10 ON nope")
        .unwrap_err()
        .to_string();
    assert!(err.contains("collection 'nope' does not exist"), "{err}");
}

#[test]
fn precomputed_embeddings_are_imported_compared_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("db")).unwrap();
    one(&db, "CREATE COLLECTION vecs WITH (model = NULL)");
    // Parquet: images as a fixed-size list column, captions as a list of lists (8-d).
    let r = one(
        &db,
        &format!(
            "IMPORT INTO vecs FROM '{}' WITH (image_embedding = 'img_emb', \
             text_embedding = 'txt_emb', embedding_model = 'elsewhere/clip')",
            import_fixtures().join("vectors.parquet").display()
        ),
    );
    assert_eq!(r.status.as_deref(), Some("imported 6 rows into vecs"));
    let models = one(&db, "SHOW MODELS");
    assert_eq!(
        models.get(0, "model"),
        Some(&Cell::Str("elsewhere/clip".into()))
    );
    assert_eq!(models.get(0, "dim"), Some(&Cell::Int(8)));
    // Each caption is its image's vector plus a little noise: perfect retrieval both ways.
    for sql in [
        "EVALUATE recall@1, mrr ON vecs",
        "EVALUATE recall@1, mrr ON vecs USING MODEL 'elsewhere/clip'",
    ] {
        let e = one(&db, sql);
        for row in 0..2 {
            assert_eq!(float(&e, row, "recall@1"), 1.0, "{sql}");
            assert_eq!(float(&e, row, "mrr"), 1.0, "{sql}");
        }
    }
    // Stored vectors serve searches by row without any model (the row itself left out).
    let hits = one(&db, "SEARCH vecs BY ROW 1 LIMIT 2");
    assert_eq!(hits.rows.len(), 2);
    assert!(hits.rows.iter().all(|h| h[1] != Cell::Int(1)));

    // JSONL: a single caption may carry one flat vector; a wrong dimension is named.
    let photo = |n: &str| {
        import_fixtures()
            .join("photos")
            .join(n)
            .display()
            .to_string()
    };
    let jsonl = dir.path().join("more.jsonl");
    std::fs::write(
        &jsonl,
        format!(
            "{{\"image\": \"{}\", \"text\": \"a cup\", \"img\": [1,0,0,0,0,0,0,0], \"txt\": [1,0,0,0,0,0,0,0]}}\n\
             {{\"image\": \"{}\", \"text\": [\"a cat\", \"a pet\"], \"img\": [0,1,0,0,0,0,0,0], \"txt\": [[0,1,0,0,0,0,0,0],[0,1,0,0,0,0,0,0.1]]}}\n\
             {{\"image\": \"{}\", \"text\": \"a horse\", \"img\": [0,0,1,0], \"txt\": [0,0,1,0]}}\n",
            photo("coffee.jpg"),
            photo("chelsea.png"),
            photo("horse.png")
        ),
    )
    .unwrap();
    let import = format!(
        "IMPORT INTO vecs FROM '{}' WITH (image_embedding = 'img', text_embedding = 'txt', \
         embedding_model = 'elsewhere/clip')",
        jsonl.display()
    );
    let err = db.sql(&import).unwrap_err().to_string();
    assert!(
        err.contains("more.jsonl line 3")
            && err.contains("image embedding has 4 values")
            && err.contains("have 8"),
        "{err}"
    );
    let r = one(&db, &format!("{import} ON ERROR SKIP"));
    assert!(r.status.unwrap().starts_with("imported 2 rows"));
    assert!(float(&one(&db, "EVALUATE mrr ON vecs"), 0, "mrr") > 0.0);

    // The three options go together.
    let err = db
        .sql(&format!(
            "IMPORT INTO vecs FROM '{}' WITH (image_embedding = 'img')",
            jsonl.display()
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("need all three options"), "{err}");

    // A Mirante model next to the precomputed vectors: side by side, deltas against the first.
    one(
        &db,
        &format!("EMBED vecs USING MODEL '{}'", tiny_clip().display()),
    );
    let both = one(
        &db,
        &format!(
            "EVALUATE recall@1 ON vecs USING MODEL 'elsewhere/clip', '{}'",
            tiny_clip().display()
        ),
    );
    assert_eq!(both.rows.len(), 4);
    let delta = float(&both, 2, "delta_recall@1");
    assert!((delta - (float(&both, 2, "recall@1") - float(&both, 0, "recall@1"))).abs() < 1e-12);

    // A collection with its own model refuses vectors from another.
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = collection(dir2.path());
    let err = db2
        .sql(&format!(
            "IMPORT INTO images FROM '{}' WITH (image_embedding = 'img_emb', \
             text_embedding = 'txt_emb', embedding_model = 'elsewhere/clip')",
            import_fixtures().join("vectors.parquet").display()
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("embeds with model"), "{err}");
}

/// A collection of `n` rows with one caption each, stored with vectors through the storage API:
/// clustered image vectors, captions near their images, distinct image bytes per row.
fn vector_collection(dir: &Path, n: usize, index: mirante::storage::IndexSpec) -> Database {
    use mirante::storage::{ImageData, Metric, Modality, NewRow, Schema};
    let dim = 32;
    let images = mirante_tests::clustered(n, dim, n, 3);
    let noise = mirante_tests::clustered(n, dim, 1, 4);
    let texts: Vec<f32> = images
        .iter()
        .zip(&noise)
        .map(|(x, e)| x + 0.3 * e)
        .collect();
    let store = mirante::storage::Database::create(dir.join("db")).unwrap();
    let mut w = store.writer().unwrap();
    w.create_collection("vecs", Schema::default(), index)
        .unwrap();
    let space = |m| mirante_tests::test_space(m, dim, Metric::Cosine);
    let image_space = w.add_space("vecs", space(Modality::Image), true).unwrap();
    let text_space = w.add_space("vecs", space(Modality::Text), true).unwrap();
    let rows = (0..n)
        .map(|i| NewRow {
            image: Some(ImageData {
                bytes: (i as u64).to_le_bytes().to_vec(),
                source: format!("{i}.jpg"),
            }),
            texts: vec![format!("caption {i}")],
            ..Default::default()
        })
        .collect();
    w.append(
        "vecs",
        rows,
        &[(image_space, &images), (text_space, &texts)],
    )
    .unwrap();
    drop(w);
    drop(store);
    Database::open(dir.join("db")).unwrap()
}

#[test]
fn using_index_ranks_through_the_search_and_reports_its_recall() {
    // A flat index returns the exact results: every number equals the exact evaluation.
    let dir = tempfile::tempdir().unwrap();
    let db = vector_collection(dir.path(), 1500, IndexSpec::new("Flat"));
    let exact = one(&db, "EVALUATE recall@1, recall@10, mrr, ndcg@10 ON vecs");
    let flat = one(
        &db,
        "EVALUATE recall@1, recall@10, mrr, ndcg@10 ON vecs USING INDEX",
    );
    assert!(flat.status.as_ref().unwrap().contains("top 100 per query"));
    for row in 0..2 {
        assert_eq!(float(&flat, row, "index_recall@10"), 1.0);
        for m in ["recall@1", "recall@10", "mrr", "ndcg@10"] {
            assert!(
                (float(&flat, row, m) - float(&exact, row, m)).abs() < 1e-12,
                "{m}: {} vs {}",
                float(&flat, row, m),
                float(&exact, row, m)
            );
        }
    }

    // IVF probing two lists of 16 misses neighbours: recall against exact drops, and the
    // metrics cannot rise above the exact ones.
    let dir = tempfile::tempdir().unwrap();
    let ivf = IndexSpec {
        factory: "IVF16,Flat".into(),
        params: "nprobe=2".into(),
    };
    let db = vector_collection(dir.path(), 2000, ivf);
    let exact = one(&db, "EVALUATE recall@10, mrr ON vecs");
    let ivf = one(&db, "EVALUATE recall@10, mrr ON vecs USING INDEX");
    for row in 0..2 {
        let share = float(&ivf, row, "index_recall@10");
        assert!(share > 0.0 && share < 1.0, "index_recall@10 {share}");
        assert!(float(&ivf, row, "recall@10") <= float(&exact, row, "recall@10") + 1e-12);
    }
    let runs = one(&db, "SELECT ranking FROM mirante_evaluations");
    assert_eq!(runs.rows[0][0], Cell::Str("exact".into()));
    assert_eq!(runs.rows[2][0], Cell::Str("index top 100".into()));
}

#[test]
fn finetune_registers_a_model_that_beats_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let db = collection(dir.path());
    let base = tiny_clip().display().to_string();
    let r = one(
        &db,
        &format!(
            "FINETUNE MODEL '{base}' ON images WHERE split = 'train' \
             VALIDATE WHERE split = 'train' \
             WITH (epochs = 30, lr = 0.003, batch_size = 4, weight_decay = 0, warmup_steps = 2, \
                   patience = 30, seed = 3) AS 'clip-photos'"
        ),
    );
    assert_eq!(r.columns, ["epoch", "loss", "recall@1", "samples_per_s"]);
    let status = r.status.clone().unwrap();
    assert!(status.contains("as 'clip-photos'"), "{status}");
    let registered = dir.path().join("db/models/clip-photos");
    assert!(registered.join("model.safetensors").is_file());
    assert!(registered.join("mirante_model.json").is_file());
    // The error of a FINETUNE with these options.
    let refused = |options: &str| {
        db.sql(&format!(
            "FINETUNE MODEL '{base}' ON images WITH ({options}) AS 'x'"
        ))
        .unwrap_err()
        .to_string()
    };
    let lineage_of = |name: &str| -> Json {
        let path = dir
            .path()
            .join("db/models")
            .join(name)
            .join("mirante_model.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };

    // The registry: listed with its lineage, usable by name, exported in Hugging Face layout.
    let models = one(&db, "SHOW MODELS");
    let row = models
        .rows
        .iter()
        .find(|r| matches!(&r[0], Cell::Str(m) if m.ends_with("clip-photos")))
        .unwrap();
    let column = |name: &str| {
        &row[models
            .column_names()
            .iter()
            .position(|c| *c == name)
            .unwrap()]
    };
    assert_eq!(column("base"), &Cell::Str(base.clone()));
    assert_eq!(column("family"), &Cell::Str("clip".into()));
    assert!(matches!(column("trained_on"), Cell::Str(t) if t.starts_with("images version")));
    assert!(matches!(column("hyperparameters"), Cell::Str(h) if h.contains("epochs=")));
    assert!(matches!(column("best_validation"), Cell::Str(v) if v.starts_with("recall@1 ")));
    one(&db, "EMBED images USING MODEL 'clip-photos'");
    let both = one(
        &db,
        &format!(
            "EVALUATE recall@1 ON images WHERE split = 'train' DIRECTION text_to_image \
             USING MODEL '{base}', 'clip-photos'"
        ),
    );
    let (before, after) = (float(&both, 0, "recall@1"), float(&both, 1, "recall@1"));
    assert!(after > before, "recall@1 {before} -> {after}");
    let export = dir.path().join("exported");
    one(
        &db,
        &format!("EXPORT MODEL 'clip-photos' TO '{}'", export.display()),
    );
    mirante::training::DualEncoder::load(&export, &mirante::training::Device::Cpu).unwrap();

    // Hard negatives: batches pair images that are each other's nearest neighbour.
    let hard = one(
        &db,
        &format!(
            "FINETUNE MODEL '{base}' ON images WITH (epochs = 2, batch_size = 2, \
             hard_negatives = true) AS 'clip-hard'"
        ),
    );
    assert_eq!(hard.rows.len(), 2);
    let lineage = lineage_of("clip-hard");
    // Six photos: at least one mutual nearest pair exists (the closest two images). The
    // collection embeds with the base model, so its own index found them.
    assert!(
        lineage["hard_negative_pairs"].as_u64().unwrap() >= 1,
        "{lineage}"
    );
    assert_eq!(lineage["hard_negative_mining"], "index");
    // Embedding with another model, the base model's neighbours are computed: the same pairs.
    one(&db, "ALTER COLLECTION images SET MODEL 'clip-photos'");
    one(
        &db,
        &format!(
            "FINETUNE MODEL '{base}' ON images WITH (epochs = 1, batch_size = 2, \
             hard_negatives = true) AS 'clip-hard-exact'"
        ),
    );
    let exact = lineage_of("clip-hard-exact");
    assert_eq!(exact["hard_negative_mining"], "exact");
    assert_eq!(exact["hard_negative_pairs"], lineage["hard_negative_pairs"]);
    assert!(exact["hard_negative_pairs_remined"].is_null(), "{exact}");
    // Re-mined before each later epoch with the weights being trained: the closest two images
    // are always each other's nearest, so every mining finds a pair.
    one(
        &db,
        &format!(
            "FINETUNE MODEL '{base}' ON images WITH (epochs = 3, batch_size = 2, \
             hard_negatives = 'epoch', patience = 3) AS 'clip-hard-epoch'"
        ),
    );
    let remined = lineage_of("clip-hard-epoch");
    assert_eq!(remined["hard_negative_pairs"], exact["hard_negative_pairs"]);
    let per_epoch = remined["hard_negative_pairs_remined"].as_array().unwrap();
    assert_eq!(per_epoch.len(), 2, "{remined}");
    assert!(
        per_epoch.iter().all(|n| n.as_u64().unwrap() >= 1),
        "{remined}"
    );
    let mode = refused("hard_negatives = 'always'");
    assert!(
        mode.contains("hard_negatives: expects true") && mode.contains("'epoch'"),
        "{mode}"
    );
    one(&db, &format!("ALTER COLLECTION images SET MODEL '{base}'"));

    // Word-swapped captions as negative texts: every caption of two or more swappable words
    // gets some, and training with them runs.
    one(
        &db,
        &format!(
            "FINETUNE MODEL '{base}' ON images WITH (epochs = 1, batch_size = 4, \
             text_negatives = true) AS 'clip-swaps'"
        ),
    );
    let swaps = lineage_of("clip-swaps");
    assert!(
        swaps["text_negative_captions"].as_u64().unwrap() >= 6,
        "{swaps}"
    );
    assert!(lineage["text_negative_captions"].is_null(), "{lineage}");
    let flag = refused("text_negatives = 'yes'");
    assert!(
        flag.contains("text_negatives: expects true or false"),
        "{flag}"
    );

    // Names are unique; a model can be dropped while no collection embeds with it.
    let again = db
        .sql(&format!(
            "FINETUNE MODEL '{base}' ON images WITH (epochs = 1) AS 'clip-photos'"
        ))
        .unwrap_err()
        .to_string();
    assert!(again.contains("already exists"), "{again}");
    let bad = refused("epochs = 0");
    assert!(bad.contains("epochs"), "{bad}");
    one(&db, "DROP MODEL 'clip-photos'");
    assert!(!registered.exists());
}
