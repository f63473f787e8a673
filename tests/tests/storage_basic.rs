//! Storage engine behaviour through its public API: collections, append, get, scan, errors,
//! locking, time travel, vacuum.

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use mirante::storage::{
    Database, Error, IndexSpec, Metric, Modality, NewRow, Schema, SpaceSpec, Value,
};
use mirante_tests::{
    assert_keyed_row, int_vector, keyed_row, keyed_texts, test_schema, test_space,
};

fn space(modality: Modality, dim: usize) -> SpaceSpec {
    test_space(modality, dim, Metric::InnerProduct)
}

#[test]
fn append_get_scan_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path()).unwrap();
    let mut w = db.writer().unwrap();
    w.create_collection("images", test_schema(), IndexSpec::default())
        .unwrap();
    let img = w
        .add_space("images", space(Modality::Image, 8), true)
        .unwrap();
    let txt = w
        .add_space("images", space(Modality::Text, 8), true)
        .unwrap();
    let keys: Vec<u64> = (1..=50).collect();
    let rows: Vec<NewRow> = keys.iter().map(|&k| keyed_row(k)).collect();
    let iv: Vec<f32> = keys.iter().flat_map(|&k| int_vector(k, 0, 8)).collect();
    let tv: Vec<f32> = keys
        .iter()
        .flat_map(|&k| (0..keyed_texts(k) as u64).flat_map(move |t| int_vector(k, t + 1, 8)))
        .collect();
    let ids = w.append("images", rows, &[(img, &iv), (txt, &tv)]).unwrap();
    assert_eq!(ids, keys);
    drop(w);

    let db = Database::open(dir.path()).unwrap();
    let snap = db.snapshot().unwrap();
    assert_eq!(snap.count("images").unwrap(), 50);
    for k in [1, 17, 50] {
        let h = snap.get("images", k).unwrap().expect("row exists");
        assert_keyed_row(&h.row(), k);
    }
    assert!(snap.get("images", 51).unwrap().is_none());
    let mut seen = Vec::new();
    let only_tests = |r: &mirante::storage::RowRef<'_>| r.split() == Some("test");
    snap.scan("images", Some(&only_tests), |r| {
        seen.push(r.id());
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, (1..=50).filter(|k| k % 5 == 0).collect::<Vec<_>>());
    let c = snap.collection("images").unwrap();
    assert_eq!(c.active(Modality::Image), Some(img));
    assert_eq!(c.active(Modality::Text), Some(txt));
}

#[test]
fn bad_input_is_rejected_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path()).unwrap();
    let mut w = db.writer().unwrap();
    w.create_collection("c", test_schema(), IndexSpec::default())
        .unwrap();
    let img = w.add_space("c", space(Modality::Image, 4), true).unwrap();
    let before = w.version();

    let err = w
        .append("c", vec![keyed_row(1)], &[(img, &[1.0, 2.0, 3.0])])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DimensionMismatch {
                expected: 4,
                got: 3,
                ..
            }
        ),
        "{err}"
    );

    let mut row = keyed_row(1);
    row.metadata[1] = ("n".into(), Value::String("seven".into()));
    let err = w.append("c", vec![row], &[]).unwrap_err();
    assert!(
        err.to_string()
            .contains("column 'n' expects i64 or null, got string"),
        "{err}"
    );

    let mut row = keyed_row(1);
    row.metadata
        .push(("colour".into(), Value::String("red".into())));
    let err = w.append("c", vec![row], &[]).unwrap_err();
    assert!(
        err.to_string().contains("column 'colour' does not exist"),
        "{err}"
    );

    let mut row = keyed_row(1);
    row.metadata.retain(|(n, _)| n != "label");
    let err = w.append("c", vec![row], &[]).unwrap_err();
    assert!(err.to_string().contains("'label' is not nullable"), "{err}");

    let err = w.append("nope", vec![keyed_row(1)], &[]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: "collection",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("collections are: c"), "{err}");

    let err = w
        .append("c", vec![keyed_row(1)], &[(img, &[f32::NAN; 4])])
        .unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");

    let err = w
        .create_collection("c", Schema::default(), IndexSpec::default())
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }));
    let err = w
        .create_collection("x", Schema::default(), IndexSpec::new("NoSuchIndex"))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("index 'NoSuchIndex' is refused: 'NoSuchIndex' is not an index"),
        "{err}"
    );

    assert_eq!(w.version(), before, "no failed call may commit");
    assert_eq!(db.snapshot().unwrap().count("c").unwrap(), 0);

    let snap = db.snapshot().unwrap();
    let err = snap.search("c", img, &[1.0, 0.0], 5, None).unwrap_err();
    assert!(
        matches!(err, Error::DimensionMismatch { expected: 4, .. }),
        "{err}"
    );
}

#[test]
fn a_second_writer_waits_for_the_first_and_is_refused_with_the_holder_named_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path()).unwrap();
    let w = db.writer().unwrap();
    let other = Database::open(dir.path()).unwrap();
    other.set_busy_timeout(std::time::Duration::ZERO);
    let err = other.writer().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Locked { .. }));
    assert!(
        msg.contains(&format!("pid {}", std::process::id())) && msg.contains("busy timeout"),
        "{msg}"
    );
    // With the default busy timeout, the second writer waits until the first is dropped.
    other.set_busy_timeout(mirante::storage::DEFAULT_BUSY_TIMEOUT);
    let first = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(w);
    });
    other
        .writer()
        .expect("the lock is taken once the first writer is gone");
    first.join().unwrap();
}

#[test]
fn time_travel_and_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path()).unwrap();
    let mut w = db.writer().unwrap();
    w.create_collection("c", test_schema(), IndexSpec::default())
        .unwrap();
    w.append("c", (1..=3).map(keyed_row).collect(), &[])
        .unwrap();
    let v1 = w.version();
    w.append("c", (4..=5).map(keyed_row).collect(), &[])
        .unwrap();
    let deleted = w.delete("c", &[1, 2, 99]).unwrap();
    assert_eq!(deleted, 2);
    let old = db.snapshot_at(v1).unwrap();
    assert_eq!(old.count("c").unwrap(), 3);
    assert_keyed_row(&old.get("c", 1).unwrap().unwrap().row(), 1);
    let now = db.snapshot().unwrap();
    assert_eq!(now.count("c").unwrap(), 3);
    assert!(now.get("c", 1).unwrap().is_none());

    let compacted = w.compact("c", true).unwrap();
    assert_eq!(
        (compacted.segments_before, compacted.segments_after),
        (2, 1)
    );
    assert_eq!(compacted.rows_dropped, 2);
    // Live snapshots keep their versions, and every file those read, through a vacuum.
    let report = w.vacuum(1).unwrap();
    assert_eq!(report.versions_in_use, 2);
    assert_eq!(report.files_removed, 0);
    assert_keyed_row(&old.get("c", 1).unwrap().unwrap().row(), 1);
    assert_keyed_row(&now.get("c", 4).unwrap().unwrap().row(), 4);
    drop((old, now));
    let report = w.vacuum(1).unwrap();
    assert!(report.versions_removed >= 2);
    assert_eq!(report.versions_in_use, 0);
    // Both old segments (rows + blob each) and the deletion vector are gone.
    assert_eq!(report.files_removed, 5);
    assert!(matches!(
        db.snapshot_at(v1),
        Err(Error::NotFound {
            kind: "version",
            ..
        })
    ));
    let reopened = Database::open(dir.path()).unwrap().snapshot().unwrap();
    assert_eq!(reopened.count("c").unwrap(), 3);
    for k in 3..=5 {
        assert_keyed_row(&reopened.get("c", k).unwrap().unwrap().row(), k);
    }
}

#[test]
fn opening_garbage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Database::open(dir.path()),
        Err(Error::NotADatabase { .. })
    ));
    Database::create(dir.path()).unwrap();
    assert!(matches!(
        Database::create(dir.path()),
        Err(Error::DatabaseExists { .. })
    ));
}

#[test]
fn embedding_resumes_after_a_failure_and_activation_needs_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path()).unwrap();
    let mut w = db.writer().unwrap();
    w.create_collection("c", test_schema(), IndexSpec::default())
        .unwrap();
    for range in [1..=3u64, 4..=6] {
        w.append("c", range.map(keyed_row).collect(), &[]).unwrap();
    }
    let segments = db
        .snapshot()
        .unwrap()
        .collection("c")
        .unwrap()
        .segments
        .len();
    assert_eq!(segments, 2);
    let space = w.add_space("c", space(Modality::Image, 4), false).unwrap();
    let vectors = |seg: &mirante::storage::SegmentView<'_>| -> mirante::storage::Result<Vec<f32>> {
        Ok((0..seg.len())
            .flat_map(|i| int_vector(seg.row(i).id(), 7, 4))
            .collect())
    };
    // The job dies on the second segment: the first one's vectors are committed, and the
    // caller gets its own error back, not a string of storage's.
    #[derive(Debug)]
    enum JobError {
        Killed,
        Storage(#[allow(dead_code)] Error),
    }
    impl From<Error> for JobError {
        fn from(e: Error) -> Self {
            JobError::Storage(e)
        }
    }
    let mut calls = 0;
    let err = w
        .embed("c", space, true, |seg| {
            calls += 1;
            if calls == 2 {
                return Err(JobError::Killed);
            }
            Ok(vectors(seg)?)
        })
        .unwrap_err();
    assert!(matches!(err, JobError::Killed), "{err:?}");
    let snap = db.snapshot().unwrap();
    let c = snap.collection("c").unwrap();
    assert_eq!(
        c.segments
            .iter()
            .filter(|s| s.column(space).is_some())
            .count(),
        1
    );
    assert_eq!(c.active(Modality::Image), None, "not switched half-way");
    // Activating now would mix embedded and unembedded segments: refused.
    assert!(w.activate_spaces("c", &[space]).is_err());
    // The rerun embeds only the segment left, then switches.
    let mut rerun = 0;
    let done = w
        .embed("c", space, true, |seg| {
            rerun += 1;
            vectors(seg)
        })
        .unwrap();
    assert_eq!((done, rerun), (1, 1));
    let snap = db.snapshot().unwrap();
    assert_eq!(
        snap.collection("c").unwrap().active(Modality::Image),
        Some(space)
    );
    // Both segments answer in the new space.
    let q = int_vector(5, 7, 4);
    assert_eq!(snap.search("c", space, &q, 10, None).unwrap()[0].len(), 6);
}

#[test]
fn embed_new_space_switch_active_reindex_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path()).unwrap();
    let mut w = db.writer().unwrap();
    w.create_collection("c", test_schema(), IndexSpec::default())
        .unwrap();
    let old = w.add_space("c", space(Modality::Text, 4), true).unwrap();
    let tv: Vec<f32> = (1..=6u64)
        .flat_map(|k| (0..keyed_texts(k) as u64).flat_map(move |t| int_vector(k, t + 1, 4)))
        .collect();
    w.append("c", (1..=6).map(keyed_row).collect(), &[(old, &tv)])
        .unwrap();
    // Rows appended without vectors for the new space are "unembedded" until embed().
    let mut spec = space(Modality::Text, 4);
    spec.fingerprint = "fine-tuned".into();
    let new = w.add_space("c", spec, false).unwrap();
    assert_ne!(new, old);
    let before = w.version();
    let segments = w
        .embed("c", new, true, |seg| {
            let mut out = Vec::new();
            for i in 0..seg.len() {
                let row = seg.row(i);
                for t in 0..row.text_count() {
                    out.extend(int_vector(row.id(), 100 + t as u64, 4));
                }
            }
            Ok::<_, Error>(out)
        })
        .unwrap();
    assert!(segments >= 1);
    assert_eq!(
        w.version(),
        before + segments as u64 + 1,
        "one commit per segment (so a killed job resumes), then the switch"
    );
    let snap = db.snapshot().unwrap();
    assert_eq!(
        snap.collection("c").unwrap().active(Modality::Text),
        Some(new)
    );
    let q = int_vector(3, 101, 4);
    let hits = snap.search("c", new, &q, 1, None).unwrap();
    assert_eq!(hits[0][0].score, q.iter().map(|x| x * x).sum::<f32>());
    // The old space still answers on the old version and on the new one.
    assert!(
        !db.snapshot_at(before)
            .unwrap()
            .search("c", old, &q, 3, None)
            .unwrap()[0]
            .is_empty()
    );
    // A wrong vector count from the embedding callback is rejected, nothing committed.
    let third = w.add_space("c", space(Modality::Image, 4), false).unwrap();
    let v = w.version();
    let err = w
        .embed("c", third, false, |_| Ok::<_, Error>(vec![0.0; 3]))
        .unwrap_err();
    assert!(matches!(err, Error::DimensionMismatch { .. }), "{err}");
    assert_eq!(w.version(), v);
    // Re-indexing with another FAISS factory keeps results, dropping removes the collection.
    w.set_index("c", IndexSpec::new("HNSW16")).unwrap();
    assert_eq!(
        db.snapshot()
            .unwrap()
            .search("c", new, &q, 1, None)
            .unwrap(),
        hits
    );
    w.drop_collection("c").unwrap();
    assert!(matches!(
        db.snapshot().unwrap().collection("c"),
        Err(Error::NotFound { .. })
    ));
}
