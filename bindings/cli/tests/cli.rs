//! The `mirante` binary end to end: the walkthrough runs, and `info` reports what it left.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

mod common;
use common::{BIN, repo, sql};

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

#[test]
fn sql_formats_errors_and_hub_cache_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let model = repo().join("training/tests/fixtures/clip-tiny");
    // A dataset snapshot in the Hugging Face hub cache layout.
    let cache = tmp.path().join("hub");
    let snapshot = cache.join("datasets--mirante--photos/snapshots/0123abcd");
    std::fs::create_dir_all(snapshot.join("data")).unwrap();
    for split in ["train", "test"] {
        let name = format!("{split}-00000-of-00001.parquet");
        std::fs::copy(
            repo()
                .join("tests/fixtures/import/hf_parquet/data")
                .join(&name),
            snapshot.join("data").join(&name),
        )
        .unwrap();
    }
    std::fs::create_dir_all(cache.join("datasets--mirante--photos/refs")).unwrap();
    std::fs::write(
        cache.join("datasets--mirante--photos/refs/main"),
        "0123abcd",
    )
    .unwrap();
    let out = Command::new(BIN)
        .env("HF_HUB_CACHE", &cache)
        .arg("sql")
        .arg(&db)
        .arg(format!(
            "CREATE COLLECTION images WITH (model = '{}'); \
             IMPORT INTO images FROM 'hf://datasets/mirante/photos' WITH (split = 'train')",
            model.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 4 rows into images"));

    // JSON lines: one object per result row with the documented keys.
    let out = sql(
        &db,
        "SEARCH images BY TEXT 'a dog on the beach' LIMIT 3",
        "json",
    );
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["rank"], i + 1);
        for key in ["id", "score", "text", "image", "split", "year", "source"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
    }
    assert!(rows[0]["score"].as_f64() >= rows[2]["score"].as_f64());

    let out = sql(&db, "SELECT id, year FROM images LIMIT 2", "csv");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "id,year\n1,1983\n2,2010\n"
    );

    // Errors: non-zero exit, message with a caret on stderr, nothing on stdout.
    let out = sql(&db, "SELECT * FROM imagse", "table");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean 'images'?"), "{err}");
    assert!(err.contains("\n                ^"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn shell_reads_multi_line_statements_and_dot_commands() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let mut child = Command::new(BIN)
        .arg("shell")
        .arg(&db)
        .env("MIRANTE_HISTORY", tmp.path().join("history"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"CREATE COLLECTION notes\n  (topic STRING);\n.mode json\nSHOW\nCOLLECTIONS;\n.mode csv\nDESCRIBE notes;\n.bogus\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("created collection notes"), "{text}");
    assert!(
        text.contains(
            r#"{"name":"notes","rows":0,"captions":0,"segments":0,"model":"mirante-shapes-clip","index":"Flat"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("column,type,nullable\nid,i64,false\n"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown or incomplete dot command"));
}

/// A flipped byte in the newest manifest: every command says so on stderr, reads show the
/// previous version, writes fail until `RESTORE VERSION` accepts it.
#[test]
fn a_damaged_newest_manifest_is_reported_and_blocks_writes_until_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let created = sql(
        &db,
        "CREATE COLLECTION a WITH (model = NULL); CREATE COLLECTION b WITH (model = NULL)",
        "csv",
    );
    assert!(created.status.success());
    let newest = std::fs::read_dir(db.join("_versions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&newest, &bytes).unwrap();
    let shown: u64 = newest
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        - 1;

    let read = sql(&db, "SHOW COLLECTIONS", "csv");
    let (out, err) = (
        String::from_utf8_lossy(&read.stdout),
        String::from_utf8_lossy(&read.stderr),
    );
    assert!(read.status.success(), "{err}");
    assert!(out.contains('a') && !out.contains("\nb,"), "{out}");
    assert!(
        err.contains("warning:") && err.contains(&format!("RESTORE VERSION {shown}")),
        "{err}"
    );
    let info = Command::new(BIN).arg("info").arg(&db).output().unwrap();
    assert!(String::from_utf8_lossy(&info.stderr).contains("cannot be read"));

    let write = sql(&db, "DROP COLLECTION a", "csv");
    assert!(!write.status.success());
    assert!(String::from_utf8_lossy(&write.stderr).contains("Writes are refused"));
    assert!(newest.exists());

    let restore = sql(&db, &format!("RESTORE VERSION {shown}"), "csv");
    assert!(restore.status.success());
    let write = sql(&db, "DROP COLLECTION a", "csv");
    assert!(write.status.success());
    assert!(String::from_utf8_lossy(&write.stderr).is_empty());
}
