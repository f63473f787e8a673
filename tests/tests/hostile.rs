//! Hostile input through the whole engine: images that cost far more than their bytes
//! (extreme aspect ratios, pixel counts above the limit, truncated JPEGs) and paths that are not
//! image files (devices, FIFOs, directory loops). Each must end in a clear error or a bounded
//! success, never an abort, a hang or unbounded memory.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use mirante::training::ImageLimits;
use mirante::{Database, Options};
use mirante_tests::{error, one, tiny_clip};

fn collection(dir: &Path, options: Options) -> Database {
    let db = Database::open_with(dir.join("db"), options).unwrap();
    one(
        &db,
        &format!(
            "CREATE COLLECTION images WITH (model = '{}')",
            tiny_clip().display()
        ),
    );
    db
}

/// Collection `images` (tiny CLIP) holding the sixteen square images.
fn squares_collection(dir: &Path) -> Database {
    let folder = dir.join("squares");
    mirante_tests::write_square_images(&folder);
    let db = collection(dir, Options::default());
    one(
        &db,
        &format!("IMPORT INTO images FROM '{}'", folder.display()),
    );
    db
}

fn png(path: &Path, width: u32, height: u32) -> PathBuf {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8])
    })
    .save(path)
    .unwrap();
    path.to_path_buf()
}

/// Runs `work` on its own thread and fails the test if it takes over a minute (a hang).
fn within_a_minute<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(work()));
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the statement hung")
}

fn count(db: &Database) -> i64 {
    match one(db, "SELECT count(*) FROM images").rows[0][0] {
        mirante::Cell::Int(n) => n,
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn an_image_a_million_pixels_by_one_is_imported_and_searched() {
    let dir = tempfile::tempdir().unwrap();
    let db = collection(dir.path(), Options::default());
    // Resized whole by the shortest edge it would be 224 million pixels wide (150 GB).
    let line = png(&dir.path().join("line.png"), 1_000_000, 1);
    let column = png(&dir.path().join("column.png"), 1, 1_000_000);
    one(
        &db,
        &format!(
            "INSERT INTO images (image, text) VALUES ('{}', 'a line'), ('{}', 'a column')",
            line.display(),
            column.display()
        ),
    );
    let hits = one(
        &db,
        &format!("SEARCH images BY IMAGE '{}' LIMIT 2", line.display()),
    );
    assert_eq!(hits.rows.len(), 2);
}

#[test]
fn images_beyond_the_limits_fail_their_rows_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    png(&folder.join("small.png"), 32, 32);
    png(&folder.join("large.png"), 400, 300);
    // A JPEG cut inside its scan, as a failed download leaves it.
    let jpeg = std::fs::read(png(&folder.join("whole.png"), 128, 128)).unwrap();
    let mut encoded = std::io::Cursor::new(Vec::new());
    image::load_from_memory(&jpeg)
        .unwrap()
        .write_to(&mut encoded, image::ImageFormat::Jpeg)
        .unwrap();
    std::fs::remove_file(folder.join("whole.png")).unwrap();
    let jpeg = encoded.into_inner();
    std::fs::write(folder.join("cut.jpg"), &jpeg[..jpeg.len() * 3 / 4]).unwrap();
    let db = collection(
        dir.path(),
        Options {
            image_limits: ImageLimits {
                max_pixels: 100_000,
                ..ImageLimits::default()
            },
            ..Options::default()
        },
    );
    let import = format!("IMPORT INTO images FROM '{}'", folder.display());
    let err = error(&db, &import);
    assert!(
        err.contains("large.png")
            && err.contains("400 x 300 = 120000 pixels is above the limit of 100000")
            && err.contains("cut.jpg")
            && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(count(&db), 0, "a failed import commits nothing");
    one(&db, &format!("{import} ON ERROR SKIP"));
    assert_eq!(count(&db), 1);
    let err = error(
        &db,
        &format!(
            "SEARCH images BY IMAGE '{}'",
            folder.join("large.png").display()
        ),
    );
    assert!(err.contains("is above the limit"), "{err}");
}

#[test]
fn paths_that_are_not_image_files_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let db = collection(dir.path(), Options::default());
    let err = within_a_minute({
        let db = Database::open(dir.path().join("db")).unwrap();
        move || error(&db, "SEARCH images BY IMAGE '/dev/zero'")
    });
    assert!(err.contains("not a regular file (a device)"), "{err}");

    // A FIFO named like an image in an image folder: nobody ever writes to it.
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    png(&folder.join("a.png"), 16, 16);
    assert!(
        std::process::Command::new("mkfifo")
            .arg(folder.join("x.png"))
            .status()
            .unwrap()
            .success()
    );
    let import = format!("IMPORT INTO images FROM '{}'", folder.display());
    let err = within_a_minute({
        let db = Database::open(dir.path().join("db")).unwrap();
        let import = import.clone();
        move || error(&db, &import)
    });
    assert!(
        err.contains("x.png") && err.contains("not a regular file (a FIFO)"),
        "{err}"
    );
    one(&db, &format!("{import} ON ERROR SKIP"));
    assert_eq!(count(&db), 1);
}

#[cfg(unix)]
#[test]
fn a_directory_symlink_loop_imports_each_image_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = collection(dir.path(), Options::default());
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(folder.join("cats")).unwrap();
    png(&folder.join("cats/a.png"), 16, 16);
    png(&folder.join("cats/b.png"), 16, 16);
    // A link back to the root, and a second way into `cats`.
    std::os::unix::fs::symlink(&folder, folder.join("cats/loop")).unwrap();
    std::os::unix::fs::symlink(folder.join("cats"), folder.join("again")).unwrap();
    within_a_minute({
        let db = Database::open(dir.path().join("db")).unwrap();
        let sql = format!("IMPORT INTO images FROM '{}'", folder.display());
        move || one(&db, &sql)
    });
    assert_eq!(count(&db), 2);
}

#[test]
fn a_diverging_finetune_stops_with_an_error_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = squares_collection(dir.path());
    let err = error(
        &db,
        &format!(
            "FINETUNE MODEL '{}' ON images WITH (epochs = 3, batch_size = 8, lr = 1e30) AS 'ft'",
            tiny_clip().display()
        ),
    );
    assert!(
        err.contains("training diverged at epoch 1") && err.contains("lower the learning rate"),
        "{err}"
    );
    assert!(db.registry().names().unwrap().is_empty());
    assert!(!dir.path().join("db/models/ft").exists());
}

/// Runs `work` on a thread with the 2 MiB stack a library host's threads get (the main thread's
/// 8 MiB would hide an overflow); an overflow aborts the test process.
fn on_a_small_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(work)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_and_long_statements_run_or_fail_clearly_on_a_small_stack() {
    let dir = tempfile::tempdir().unwrap();
    let db = squares_collection(dir.path());
    let db = std::sync::Arc::new(db);
    let ors = |n: usize| {
        (0..n)
            .map(|i| format!("id = {i}"))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    // At the limit (1,000 operators) every kind of statement runs.
    let at_limit = ors(1001);
    for sql in [
        format!("SELECT count(*) FROM images WHERE {at_limit}"),
        format!("SEARCH images BY TEXT 'red' WHERE {at_limit} LIMIT 3"),
        format!("EVALUATE recall@1 ON images WHERE {at_limit}"),
        format!("DELETE FROM images WHERE id > 100 AND ({})", ors(1000)),
    ] {
        let db = std::sync::Arc::clone(&db);
        on_a_small_stack(move || {
            db.sql(&sql)
                .unwrap_or_else(|e| panic!("{}", e.render(&sql)));
        });
    }
    // Beyond it, and far beyond, a clear error with a position.
    for n in [1002, 100_000] {
        let sql = format!("SELECT * FROM images WHERE {}", ors(n));
        let db = std::sync::Arc::clone(&db);
        let err = on_a_small_stack(move || error(&db, &sql));
        assert!(err.contains("more than 1000 AND / OR operators"), "{err}");
    }
    let filter = ors(100_000);
    let db2 = std::sync::Arc::clone(&db);
    let err = on_a_small_stack(move || {
        let c = db2.collection("images").unwrap();
        c.search_text("red")
            .filter(&filter)
            .run()
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("more than 1000"), "{err}");
    for sql in [
        format!("{}SELECT 1", "EXPLAIN ".repeat(100_000)),
        format!(
            "SELECT * FROM images WHERE {}id = 1{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        ),
        format!(
            "SELECT * FROM images WHERE {}id = 1",
            "NOT ".repeat(100_000)
        ),
        format!(
            "SEARCH images BY TEXT 'red' WHERE {}id = 1{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        ),
    ] {
        let db = std::sync::Arc::clone(&db);
        let err = on_a_small_stack(move || error(&db, &sql));
        assert!(
            err.contains("EXPLAIN EXPLAIN")
                || err.contains("nested too deeply")
                || err.contains("syntax error at line 1, column 216"),
            "{err}"
        );
    }
    // A long IN list parses in linear time in SEARCH as in SELECT (a hang detector, not a
    // timing test: quadratic parsing took minutes here).
    let list: Vec<String> = (0..200_000).map(|i| i.to_string()).collect();
    let list = list.join(", ");
    let db2 = std::sync::Arc::clone(&db);
    let hits = within_a_minute(move || {
        one(
            &db2,
            &format!("SEARCH images BY TEXT 'red' WHERE id IN ({list}) LIMIT 3"),
        )
    });
    assert_eq!(hits.rows.len(), 3);
}

#[test]
fn malformed_and_non_utf8_metadata_lines_fail_their_rows_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    for (file, contents) in [
        (
            "metadata.jsonl",
            b"{\"file_name\": \"a.png\", \"text\": \"first\"}\n{\"file_name\": \"b.png\", \"te\n\
              {\"file_name\": \"c.png\", \"text\": \"caf\xe9\"}\n[1, 2]\n\
              {\"file_name\": \"d.png\", \"text\": \"last\"}\n"
                .to_vec(),
        ),
        (
            "metadata.csv",
            b"file_name,text\na.png,first\nb.png,caf\xe9\nc.png,one,too many\nd.png,last\n"
                .to_vec(),
        ),
    ] {
        let folder = dir.path().join(file.replace('.', "-"));
        std::fs::create_dir_all(&folder).unwrap();
        for name in ["a.png", "b.png", "c.png", "d.png"] {
            png(&folder.join(name), 16, 16);
        }
        std::fs::write(folder.join(file), contents).unwrap();
        let db = collection(&folder, Options::default());
        let import = format!("IMPORT INTO images FROM '{}'", folder.display());
        let err = error(&db, &import);
        let expected: &[&str] = if file.ends_with("jsonl") {
            &[
                "metadata.jsonl line 2: not valid JSON",
                "metadata.jsonl line 3: not UTF-8",
                "metadata.jsonl line 4: expected a JSON object",
            ]
        } else {
            &[
                "metadata.csv line 3: not UTF-8",
                "metadata.csv line 4: has 3 fields where the header has 2",
            ]
        };
        for e in expected {
            assert!(err.contains(e), "{file}: {e}: {err}");
        }
        assert_eq!(count(&db), 0, "a failed import commits nothing");
        let skipped = one(&db, &format!("{import} ON ERROR SKIP"));
        assert_eq!(skipped.rows.len(), expected.len(), "{skipped:?}");
        assert_eq!(count(&db), 2, "{file}: the good lines are imported");
    }
}

#[test]
fn index_specs_are_checked_where_they_are_given() {
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(squares_collection(dir.path()));
    // Specs FAISS accepts but that crash it, cost memory without bound, cannot be trained on
    // the segments they would meet, or do not fit the collection's vectors: each refused with
    // the reason, at CREATE INDEX and at CREATE COLLECTION.
    for (spec, why) in [
        ("HNSW0", "accepts 2 to 128"),
        ("HNSW100000", "accepts 2 to 128"),
        ("IVF0,Flat", "accepts 1 to 65536"),
        ("IVF16_HNSW0,Flat", "accepts 2 to 128"),
        ("PQ8x24", "accepts 1 to 12"),
        ("PQ7", "must divide"),
        ("PCA48,Flat", "outputs 48 dimensions from 24"),
        ("IDMap,Flat", "not an index Mirante accepts"),
        ("IVF16", "needs a storage"),
    ] {
        let err = error(&db, &format!("CREATE INDEX ON images USING '{spec}'"));
        assert!(err.contains(why), "{spec}: {err}");
        let err = error(
            &db,
            &format!(
                "CREATE COLLECTION other WITH (model = '{}', index = '{spec}')",
                tiny_clip().display()
            ),
        );
        assert!(err.contains(why), "{spec}: {err}");
    }
    let long = format!("{}Flat", "PCA8,".repeat(10_000));
    let err = on_a_small_stack({
        let db = db.clone();
        move || error(&db, &format!("CREATE INDEX ON images USING '{long}'"))
    });
    assert!(err.contains("the limit is 256"), "{err}");
    // Specs within the bounds build, and the collection answers as before.
    for spec in ["HNSW16", "IVF4,Flat", "PCA16,IVF2,SQ8,RFlat", "L2norm,Flat"] {
        one(&db, &format!("CREATE INDEX ON images USING '{spec}'"));
    }
    assert_eq!(count(&db), 16);
}

#[test]
fn reports_and_exports_never_replace_files_silently_nor_write_through_links() {
    let dir = tempfile::tempdir().unwrap();
    let db = squares_collection(dir.path());
    let report = dir.path().join("r.html");
    std::fs::write(&report, "keep me").unwrap();
    let search = |into: &str| format!("SEARCH images BY TEXT 'a red square' INTO {into}");
    let err = error(&db, &search(&format!("'{}'", report.display())));
    assert!(err.contains("already exists; add OVERWRITE"), "{err}");
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "keep me");
    one(&db, &search(&format!("'{}' OVERWRITE", report.display())));
    assert!(std::fs::read_to_string(&report).unwrap().contains("<html"));
    // A link where the report goes is never written through, even with OVERWRITE.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "untouched").unwrap();
    let link = dir.path().join("link.html");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let err = error(&db, &search(&format!("'{}' OVERWRITE", link.display())));
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");

    one(
        &db,
        &format!(
            "FINETUNE MODEL '{}' ON images WITH (epochs = 1, batch_size = 4, seed = 0) AS 'ft'",
            tiny_clip().display()
        ),
    );
    let out = dir.path().join("exported");
    one(&db, &format!("EXPORT MODEL 'ft' TO '{}'", out.display()));
    let err = error(&db, &format!("EXPORT MODEL 'ft' TO '{}'", out.display()));
    assert!(err.contains("already exists; add OVERWRITE"), "{err}");
    // A file of the folder swapped for a link: OVERWRITE replaces files, never link targets.
    std::fs::remove_file(out.join("config.json")).unwrap();
    std::os::unix::fs::symlink(&victim, out.join("config.json")).unwrap();
    let err = error(
        &db,
        &format!("EXPORT MODEL 'ft' TO '{}' OVERWRITE", out.display()),
    );
    assert!(err.contains("config.json"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
}

#[test]
fn a_confined_database_reads_and_writes_only_under_its_folders() {
    let dir = tempfile::tempdir().unwrap();
    let (allowed, outside) = (dir.path().join("allowed"), dir.path().join("outside"));
    for d in [&allowed, &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    let model = allowed.join("model");
    mirante_tests::copy_model(&tiny_clip(), &model);
    let inside_images = allowed.join("images");
    mirante_tests::write_square_images(&inside_images);
    let outside_images = outside.join("images");
    mirante_tests::write_square_images(&outside_images);
    let db = Database::open_with(
        dir.path().join("db"),
        Options {
            access: mirante::Access::confined([&allowed]).unwrap(),
            ..Options::default()
        },
    )
    .unwrap();
    one(
        &db,
        &format!(
            "CREATE COLLECTION images WITH (model = '{}')",
            model.display()
        ),
    );
    one(
        &db,
        &format!("IMPORT INTO images FROM '{}'", inside_images.display()),
    );
    let outside_file = std::fs::read_dir(&outside_images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .unwrap();
    // Each way out is refused with the reason: an import source, an image path in a
    // metadata file, a link inside an allowed folder, a query image, a model folder, a report,
    // and a Hub id that would download.
    let refused = "outside the folders statements may use";
    for statement in [
        format!("IMPORT INTO images FROM '{}'", outside_images.display()),
        format!("SEARCH images BY IMAGE '{}'", outside_file.display()),
        format!(
            "CREATE COLLECTION other WITH (model = '{}')",
            tiny_clip().display()
        ),
        format!(
            "SEARCH images BY TEXT 'x' INTO '{}'",
            outside.join("r.html").display()
        ),
    ] {
        let err = error(&db, &statement);
        assert!(err.contains(refused), "{statement}: {err}");
    }
    let listed = allowed.join("listed");
    std::fs::create_dir_all(&listed).unwrap();
    png(&listed.join("inside.png"), 16, 16);
    std::fs::write(
        listed.join("metadata.jsonl"),
        format!(
            "{{\"file_name\": \"inside.png\", \"text\": \"ok\"}}\n\
             {{\"file_name\": \"{}\", \"text\": \"stolen\"}}\n",
            outside_file.display()
        ),
    )
    .unwrap();
    let err = error(
        &db,
        &format!("IMPORT INTO images FROM '{}'", listed.display()),
    );
    assert!(err.contains(refused) && err.contains("line 2"), "{err}");
    let plain = allowed.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    png(&plain.join("inside.png"), 16, 16);
    std::os::unix::fs::symlink(&outside_file, plain.join("zz-link.png")).unwrap();
    let err = error(
        &db,
        &format!("IMPORT INTO images FROM '{}'", plain.display()),
    );
    assert!(
        err.contains(refused) && err.contains("zz-link.png"),
        "{err}"
    );
    let err = error(
        &db,
        "CREATE COLLECTION hub WITH (model = 'mirante-test/not-in-any-cache')",
    );
    assert!(err.contains("downloads are turned off"), "{err}");
    let err = error(
        &db,
        "CREATE COLLECTION hub WITH (model = 'org/name@../../../../tmp/x')",
    );
    assert!(err.contains("not a valid Hugging Face Hub id"), "{err}");
    // The database's own folder is readable, never writable.
    let err = error(
        &db,
        &format!(
            "SEARCH images BY TEXT 'x' INTO '{}'",
            dir.path().join("db/files/r.html").display()
        ),
    );
    assert!(err.contains("statements do not write to"), "{err}");
    one(
        &db,
        &format!(
            "SEARCH images BY TEXT 'x' INTO '{}'",
            allowed.join("r.html").display()
        ),
    );
    assert_eq!(count(&db), 16);
}

#[test]
fn a_read_only_database_runs_reads_and_refuses_every_write() {
    let dir = tempfile::tempdir().unwrap();
    drop(squares_collection(dir.path()));
    let path = dir.path().join("db");
    let versions = || std::fs::read_dir(path.join("_versions")).unwrap().count();
    let before = versions();
    let db = Database::open_with(
        &path,
        Options {
            read_only: true,
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(count(&db), 16);
    one(&db, "SEARCH images BY TEXT 'a red square' LIMIT 3");
    one(&db, "SHOW COLLECTIONS");
    one(&db, "DESCRIBE images");
    one(&db, "EXPLAIN DELETE FROM images");
    let evaluated = one(&db, "EVALUATE recall@1 ON images");
    assert!(
        evaluated
            .status
            .as_deref()
            .unwrap_or("")
            .contains("read-only"),
        "{evaluated:?}"
    );
    let report = dir.path().join("r.html");
    for statement in [
        "DELETE FROM images".to_string(),
        format!(
            "IMPORT INTO images FROM '{}'",
            dir.path().join("squares").display()
        ),
        "COMPACT images".into(),
        "VACUUM".into(),
        "CREATE INDEX ON images USING 'HNSW8'".into(),
        "CREATE COLLECTION other".into(),
        "DROP COLLECTION images".into(),
        "RESTORE VERSION 1".into(),
        format!("SEARCH images BY TEXT 'x' INTO '{}'", report.display()),
        "FINETUNE MODEL 'x' ON images AS 'y'".into(),
    ] {
        let err = error(&db, &statement);
        assert!(err.contains("open read-only"), "{statement}: {err}");
    }
    assert_eq!(count(&db), 16);
    assert_eq!(versions(), before, "nothing was committed");
    assert!(!report.exists() && !path.join("models").exists());
    // A read-only open never creates a database.
    let missing = dir.path().join("missing");
    assert!(
        Database::open_with(
            &missing,
            Options {
                read_only: true,
                ..Options::default()
            }
        )
        .is_err()
    );
    assert!(!missing.exists());
}
