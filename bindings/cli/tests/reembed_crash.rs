//! `REEMBED` killed with SIGKILL half-way: the collection stays on one model (never a mix of
//! image vectors from one model and text vectors from another), the next run resumes from the
//! segments already committed, and the result equals the old model's when the weights are equal.
//! `MIRANTE_REEMBED_KILLS` sets how many kills (default 3).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::{BIN, repo, sql as sql_as};

fn sql(db: &Path, statements: &str) -> Output {
    sql_as(db, statements, "json")
}

fn ok(db: &Path, statements: &str) -> String {
    let out = sql(db, statements);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{statements}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The model paths of the collection's active image and text spaces, from `DESCRIBE`'s status
/// line ("embedding spaces: image <model> (dim 24, active); text <model> (dim 24, active); ...").
fn active_models(db: &Path) -> Vec<String> {
    let out = sql_as(db, "DESCRIBE images", "table");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &err;
    let spaces = text
        .split("embedding spaces: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no spaces in {text}"));
    spaces
        .lines()
        .next()
        .unwrap()
        .split("; ")
        .filter(|s| s.contains(", active)"))
        .map(|s| {
            let s = s.split_once(' ').unwrap().1;
            s[..s.rfind(" (dim").unwrap()].to_string()
        })
        .collect()
}

/// Committed versions of the database (one manifest each).
/// Committed versions: the manifests in `_versions/`, not a commit's temporary file (written
/// there before its rename, and left behind by a killed commit).
fn versions(db: &Path) -> usize {
    std::fs::read_dir(db.join("_versions")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    })
}

#[test]
fn reembed_killed_half_way_keeps_one_model_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let base = repo().join("training/tests/fixtures/clip-tiny");
    // The same weights in another folder: another model name, equal embeddings.
    let copy = tmp.path().join("clip-copy");
    mirante_tests::copy_model(&base, &copy);
    // 4 imports of 300 rows (full-size photographs repeated): 4 segments to re-embed, a few
    // seconds of decoding, so that the kills land before, during and after the job.
    let rows = tmp.path().join("rows.csv");
    mirante_tests::photo_rows_csv(&rows, 300);
    let import = format!("IMPORT INTO images FROM '{}';", rows.display());
    ok(
        &db,
        &format!(
            "CREATE COLLECTION images WITH (model = '{}'); {}",
            base.display(),
            import.repeat(4)
        ),
    );
    let base_key = base.canonicalize().unwrap().display().to_string();
    let copy_key = copy.canonicalize().unwrap().display().to_string();
    assert_eq!(active_models(&db), [base_key.clone(), base_key.clone()]);
    let evaluate = "EVALUATE recall@1, mrr ON images DIRECTION image_to_text";
    let metrics = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["recall@1"].as_f64().unwrap(), v["mrr"].as_f64().unwrap())
            })
            .collect()
    };
    let before = metrics(&ok(&db, evaluate));

    let reembed = format!("REEMBED images USING MODEL '{}'", copy.display());
    let kills = mirante_tests::env_count("MIRANTE_REEMBED_KILLS", 3);
    let mut switched = false;
    for k in 0..kills {
        let mut child = Command::new(BIN)
            .arg("sql")
            .arg(&db)
            .arg(&reembed)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed right after the run's third commit: a run may commit its two space
        // registrations (image, then text) besides one commit per segment column, so three
        // commits leave at least one column behind, however slow the machine.
        let start = versions(&db);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while versions(&db) < start + 3 && std::time::Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let active = active_models(&db);
        assert_eq!(active.len(), 2);
        assert_eq!(
            active[0], active[1],
            "image and text spaces from different models"
        );
        switched = active[0] == copy_key;
        eprintln!("kill {k}: active model {}", active[0]);
        if switched {
            break;
        }
        assert_eq!(active[0], base_key);
    }
    // The rerun finishes; segments committed before the kills are not embedded again. Readers
    // run searches meanwhile: with equal weights every answer must be the same, whichever
    // model is active when it runs.
    let search = "SEARCH images BY TEXT 'a photo of a cat' LIMIT 5";
    let baseline = ok(&db, search);
    let mut child = Command::new(BIN)
        .arg("sql")
        .arg(&db)
        .arg(&reembed)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reads = 0;
    while child.try_wait().unwrap().is_none() {
        assert_eq!(ok(&db, search), baseline, "a reader saw other results");
        reads += 1;
    }
    let finished = child.wait_with_output().unwrap();
    eprintln!("{reads} searches ran during the re-embed");
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let out = String::from_utf8_lossy(&finished.stdout).to_string();
    let done: usize = out
        .split("embedded ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    eprintln!("the rerun embedded {done} of 8 segment columns");
    assert!(done <= 8 - kills.min(8), "{out}");
    if switched {
        assert_eq!(done, 0, "{out}");
    }
    assert_eq!(active_models(&db), [copy_key.clone(), copy_key]);
    // Equal weights, equal metrics: nothing was lost or mixed.
    assert_eq!(metrics(&ok(&db, evaluate)), before);
    // Switching back is one statement.
    ok(
        &db,
        &format!("ALTER COLLECTION images SET MODEL '{}'", base.display()),
    );
    assert_eq!(active_models(&db), [base_key.clone(), base_key]);
}
