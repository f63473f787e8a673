//! Two-phase writes: segments built in parallel without the writer lock, published by one
//! commit, checked against the collection as it is at publishing, and vacuumed when orphaned.

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use mirante::storage::{
    BuiltSegments, ColumnDef, ColumnType, Database, IndexSpec, Metric, Modality, SegmentBuilder,
    SpaceId, SpaceSpec, Stage, WriterOptions,
};
use mirante_tests::{
    assert_keyed_row, brute_force, key_of, keyed_collection, keyed_row, keyed_vectors, test_schema,
    test_space,
};

const DIM: usize = 8;

/// A collection (FAISS indexes its columns of at least 1024 vectors) and its two active spaces.
fn setup(path: &std::path::Path) -> (Database, SpaceId, SpaceId) {
    let db = Database::create(path).unwrap();
    let (img, txt) = keyed_collection(&mut db.writer().unwrap(), "c", DIM);
    (db, img, txt)
}

/// Builds the keyed rows `keys` in chunks of `chunk` rows, as a worker would.
fn build(db: &Database, keys: &[u64], chunk: usize, spaces: (SpaceId, SpaceId)) -> BuiltSegments {
    let mut b = SegmentBuilder::new(db, "c", keys.len() as u64).unwrap();
    for part in keys.chunks(chunk) {
        let (iv, tv) = keyed_vectors(part, DIM);
        b.append(
            "c",
            part.iter().map(|&k| keyed_row(k)).collect(),
            &[(spaces.0, &iv), (spaces.1, &tv)],
        )
        .unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn segments_built_in_parallel_are_published_by_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (db, img, txt) = setup(dir.path());
    let keys: Vec<u64> = (1..=680).collect();
    // Three workers build at once (one segment large enough for a FAISS index, two in
    // chunks); meanwhile the writer appends rows of its own.
    let shared = &db;
    let built: Vec<BuiltSegments> = std::thread::scope(|s| {
        let workers: Vec<_> = [
            (&keys[..600], 600),
            (&keys[600..640], 25),
            (&keys[640..], 25),
        ]
        .into_iter()
        .map(|(part, chunk)| s.spawn(move || build(shared, part, chunk, (img, txt))))
        .collect();
        let (iv, tv) = keyed_vectors(&[900, 901], DIM);
        db.writer()
            .unwrap()
            .append(
                "c",
                vec![keyed_row(900), keyed_row(901)],
                &[(img, &iv), (txt, &tv)],
            )
            .unwrap();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    // Nothing is visible before the publishing commit.
    assert_eq!(db.snapshot().unwrap().count("c").unwrap(), 2);
    // Descriptions travel as bytes.
    let built: Vec<BuiltSegments> = built
        .iter()
        .map(|b| BuiltSegments::from_bytes(&b.to_bytes()).unwrap())
        .collect();
    assert_eq!(built.iter().map(BuiltSegments::rows).sum::<u64>(), 680);
    let mut w = db.writer().unwrap();
    let before = w.version();
    let version = w.publish(&built).unwrap();
    assert_eq!(version, before + 1);

    let snap = db.snapshot().unwrap();
    assert_eq!(snap.count("c").unwrap(), 682);
    let c = snap.collection("c").unwrap();
    // Segments stay in id order, ids are unique, and every row is intact.
    let ranges: Vec<(u64, u64)> = c
        .segments
        .iter()
        .map(|s| (s.min_row_id, s.max_row_id))
        .collect();
    assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "{ranges:?}");
    let mut seen = Vec::new();
    snap.scan("c", None, |row| {
        assert_keyed_row(&row, key_of(&row));
        seen.push(key_of(&row));
        Ok(())
    })
    .unwrap();
    seen.sort_unstable();
    let mut expected = keys.clone();
    expected.extend([900, 901]);
    assert_eq!(seen, expected);
    // FAISS-indexed and scanned segments answer as a brute-force reference.
    assert!(
        c.segments
            .iter()
            .any(|s| s.columns.iter().any(|col| col.index.is_some()))
    );
    for key in [3, 77, 900] {
        for space in [img, txt] {
            let query = mirante_tests::int_vector(key, 1, DIM);
            let got = snap.search("c", space, &query, 10, None).unwrap().remove(0);
            let want = brute_force(&snap, "c", space, &query, 10, &|_| true);
            assert_eq!(got, want, "key {key}, space {space}");
        }
    }

    // Publishing again is refused: the rows are already there.
    let again = w.publish(&built[..1]).unwrap_err().to_string();
    assert!(again.contains("published before"), "{again}");
    // Merging published segments keeps every row.
    w.set_options(WriterOptions {
        auto_compact: false,
        ..WriterOptions::default()
    });
    w.compact("c", true).unwrap();
    // Merged away, the segments' files are no longer referenced; their closed reservation
    // still refuses a second publication.
    let again = w.publish(&built[..1]).unwrap_err().to_string();
    assert!(again.contains("published before"), "{again}");
    let snap = db.snapshot().unwrap();
    assert_eq!(snap.collection("c").unwrap().segments.len(), 1);
    snap.scan("c", None, |row| {
        assert_keyed_row(&row, key_of(&row));
        Ok(())
    })
    .unwrap();
    assert_eq!(snap.count("c").unwrap(), 682);
}

#[test]
fn stale_or_forged_descriptions_are_refused_and_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (db, img, txt) = setup(dir.path());
    let built = build(&db, &[1, 2, 3], 3, (img, txt));
    let bytes = String::from_utf8(built.to_bytes()).unwrap();
    let mut w = db.writer().unwrap();
    let version = w.version();
    let refused = |w: &mut mirante::storage::Writer, json: &str| {
        let b = BuiltSegments::from_bytes(json.as_bytes()).unwrap();
        w.publish(&[b]).unwrap_err().to_string()
    };
    // Ids outside the reservation, a file outside the folder, a length that is not the file's.
    let forged = bytes.replacen("\"max_row_id\":3", "\"max_row_id\":900", 1);
    assert!(refused(&mut w, &forged).contains("not inside a range reserved"));
    let forged = bytes.replacen("\"name\":\"s", "\"name\":\"../s", 1);
    assert!(
        refused(&mut w, &forged).contains("not a builder's")
            || refused(&mut w, &forged).contains("No such file")
    );
    let name = built.file_names().next().unwrap().to_string();
    let forged = bytes.replacen(
        &format!("\"name\":\"{name}\",\"len\":"),
        &format!("\"name\":\"{name}\",\"len\":1"),
        1,
    );
    assert!(
        refused(&mut w, &forged).contains("on disk"),
        "{}",
        refused(&mut w, &forged)
    );
    assert!(BuiltSegments::from_bytes(b"{}").is_err());
    assert_eq!(w.version(), version);

    // The model changed after the build: the active spaces are not the segments'.
    let other = SpaceSpec {
        fingerprint: "retrained".into(),
        ..test_space(Modality::Image, DIM, Metric::InnerProduct)
    };
    let new_img = w.add_space("c", other, false).unwrap();
    w.activate_spaces("c", &[new_img]).unwrap();
    let e = w
        .publish(std::slice::from_ref(&built))
        .unwrap_err()
        .to_string();
    assert!(e.contains("model changed after they were built"), "{e}");

    // Columns added on the collection and on a builder in different orders do not line up.
    let b1 = {
        let mut b = SegmentBuilder::new(&db, "c", 1).unwrap();
        b.add_columns("c", vec![ColumnDef::new("x", ColumnType::I64, true)])
            .unwrap();
        b.finish().unwrap()
    };
    w.transaction()
        .add_columns("c", vec![ColumnDef::new("y", ColumnType::String, true)])
        .unwrap();
    let mut tx = w.transaction();
    tx.add_columns("c", vec![ColumnDef::new("y", ColumnType::String, true)])
        .unwrap();
    let e = tx.publish(&b1).unwrap_err().to_string();
    assert!(e.contains("do not extend the collection's"), "{e}");
    drop(tx);

    // A collection dropped and created again is another collection.
    w.drop_collection("c").unwrap();
    w.create_collection("c", test_schema(), IndexSpec::default())
        .unwrap();
    let e = w.publish(&[built]).unwrap_err().to_string();
    assert!(e.contains("dropped and created again"), "{e}");
}

#[test]
fn unpublished_builds_are_kept_during_the_grace_period_then_vacuumed() {
    let dir = tempfile::tempdir().unwrap();
    let (db, img, txt) = setup(dir.path());
    let published = build(&db, &[1, 2, 3, 4], 2, (img, txt));
    let orphan = build(&db, &[5, 6], 2, (img, txt));
    let files = |b: &BuiltSegments| {
        b.file_names()
            .map(|n| dir.path().join("files").join(n).exists())
            .collect::<Vec<_>>()
    };
    let mut w = db.writer().unwrap();
    w.publish(std::slice::from_ref(&published)).unwrap();
    let report = w.vacuum(1).unwrap();
    assert!(report.builds_kept > 0);
    assert!(files(&orphan).iter().all(|&e| e));
    w.set_options(WriterOptions {
        build_grace: std::time::Duration::ZERO,
        ..WriterOptions::default()
    });
    let report = w.vacuum(1).unwrap();
    assert_eq!(report.builds_kept, 0);
    assert!(files(&orphan).iter().all(|&e| !e), "orphans removed");
    assert!(files(&published).iter().all(|&e| e), "published files kept");
    assert_eq!(db.snapshot().unwrap().count("c").unwrap(), 4);
}

#[test]
fn a_build_larger_than_expected_reserves_more_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (db, img, txt) = setup(dir.path());
    let keys: Vec<u64> = (1..=50).collect();
    let mut b = SegmentBuilder::new(&db, "c", 4).unwrap();
    for part in keys.chunks(7) {
        let (iv, tv) = keyed_vectors(part, DIM);
        b.append(
            "c",
            part.iter().map(|&k| keyed_row(k)).collect(),
            &[(img, &iv), (txt, &tv)],
        )
        .unwrap();
    }
    let built = b.finish().unwrap();
    // Reservations double: far fewer commits than appends.
    let reservations = db
        .versions()
        .unwrap()
        .into_iter()
        .filter(|&v| {
            let snap = db.snapshot_at(v).unwrap();
            snap.manifest().message.starts_with("reserve")
        })
        .count();
    assert!(reservations <= 4, "{reservations} reservations");
    db.writer().unwrap().publish(&[built]).unwrap();
    assert_eq!(db.snapshot().unwrap().count("c").unwrap(), 50);
    let e = SegmentBuilder::new(&db, "nope", 1).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn interleaved_id_ranges_merge_in_id_order_and_rows_are_found_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let (db, img, txt) = setup(dir.path());
    let append = |b: &mut SegmentBuilder, keys: &[u64]| {
        let (iv, tv) = keyed_vectors(keys, DIM);
        b.append(
            "c",
            keys.iter().map(|&k| keyed_row(k)).collect(),
            &[(img, &iv), (txt, &tv)],
        )
        .unwrap()
    };
    // X reserves ids 1-3, Y 4-6, X then 7-12: X's segments span Y's ids.
    let mut x = SegmentBuilder::new(&db, "c", 3).unwrap();
    let mut y = SegmentBuilder::new(&db, "c", 3).unwrap();
    assert_eq!(append(&mut x, &[101, 102, 103]), vec![1, 2, 3]);
    assert_eq!(append(&mut y, &[201, 202, 203]), vec![4, 5, 6]);
    assert_eq!(append(&mut x, &[104, 105]), vec![7, 8]);
    let (x, y) = (x.finish().unwrap(), y.finish().unwrap());
    let mut w = db.writer().unwrap();
    w.set_options(WriterOptions {
        auto_compact: false,
        ..WriterOptions::default()
    });
    w.publish(&[x]).unwrap();
    w.compact("c", true).unwrap();
    // One segment of ids 1 to 8 without 4 to 6; Y's segment lands inside its range.
    w.publish(&[y]).unwrap();
    let found = |db: &Database| {
        let snap = db.snapshot().unwrap();
        [(2, 102), (5, 202), (8, 105)]
            .iter()
            .all(|&(id, key)| key_of(&snap.get("c", id).unwrap().unwrap().row()) == key)
    };
    assert!(found(&db));
    w.compact("c", true).unwrap();
    let snap = db.snapshot().unwrap();
    assert_eq!(snap.collection("c").unwrap().segments.len(), 1);
    let mut ids = Vec::new();
    snap.scan("c", None, |row| {
        ids.push(row.id());
        Ok(())
    })
    .unwrap();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(found(&db));
}
