//! Databases on object storage, through `object_store`'s in-memory store (`memory://`): each
//! handle stands for a machine with its own cache folder. Commits are compare-and-swaps on the
//! next manifest: of two writers exactly one wins each version, the other fails clearly or, for
//! commits checked against the version they land on, retries on top; nothing acknowledged is
//! lost. The S3 protocol itself is tested against a real S3-compatible server in
//! `bindings/python/tests/test_object_store.py`.

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use mirante::storage::{Database, Error, SegmentBuilder, SpaceId, Stage};
use mirante_tests::{
    assert_keyed_row, brute_force, key_of, keyed_collection, keyed_row, keyed_vectors,
};

const DIM: usize = 8;

/// A handle on `uri` with its own cache folder: another machine.
fn machine(uri: &str, cache: &tempfile::TempDir) -> Database {
    Database::open_location(uri, Some(cache.path())).unwrap()
}

fn setup(db: &Database) -> (SpaceId, SpaceId) {
    keyed_collection(&mut db.writer().unwrap(), "c", DIM)
}

fn keys_in(db: &Database) -> Vec<u64> {
    db.refresh().unwrap();
    let snap = db.snapshot().unwrap();
    let mut keys = Vec::new();
    snap.scan("c", None, |row| {
        assert_keyed_row(&row, key_of(&row));
        keys.push(key_of(&row));
        Ok(())
    })
    .unwrap();
    keys.sort_unstable();
    keys
}

#[test]
fn a_second_machine_reads_what_the_first_committed() {
    let (ca, cb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let uri = "memory://read-back/db";
    let a = machine(uri, &ca);
    let (img, txt) = setup(&a);
    let keys: Vec<u64> = (1..=600).collect();
    let (iv, tv) = keyed_vectors(&keys, DIM);
    a.writer()
        .unwrap()
        .append(
            "c",
            keys.iter().map(|&k| keyed_row(k)).collect(),
            &[(img, &iv), (txt, &tv)],
        )
        .unwrap();
    assert_eq!(a.remote_uri(), Some(uri));

    let b = machine(uri, &cb);
    assert_eq!(keys_in(&b), keys);
    let snap = b.snapshot().unwrap();
    // The text column is large enough for a FAISS index: it was uploaded and fetched too.
    let c = snap.collection("c").unwrap();
    assert!(c.segments[0].column(txt).unwrap().index.is_some());
    for key in [5, 300] {
        let query = mirante_tests::int_vector(key, 1, DIM);
        let got = snap.search("c", txt, &query, 10, None).unwrap().remove(0);
        assert_eq!(got, brute_force(&snap, "c", txt, &query, 10, &|_| true));
    }
    // Files are fetched into B's cache as they are read, under their unique names.
    let cached = std::fs::read_dir(cb.path().join("files")).unwrap().count();
    assert!(cached >= 4, "{cached} files in the cache");
}

#[test]
fn racing_writers_on_two_machines_lose_no_acknowledged_commit() {
    let uri = "memory://race/db";
    let caches: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = machine(uri, &caches[0]);
    let (img, txt) = setup(&first);
    drop(first);
    // Each machine publishes ten batches built on it; publishing retries on top of the other's
    // commits, so every batch lands.
    let acknowledged: Vec<Vec<u64>> = std::thread::scope(|s| {
        let workers: Vec<_> = caches
            .iter()
            .enumerate()
            .map(|(m, cache)| {
                s.spawn(move || {
                    let db = machine(uri, cache);
                    let mut done = Vec::new();
                    for batch in 0..10u64 {
                        let keys: Vec<u64> = (0..3)
                            .map(|i| 1000 * (m as u64 + 1) + batch * 10 + i)
                            .collect();
                        let mut b = SegmentBuilder::new(&db, "c", 3).unwrap();
                        let (iv, tv) = keyed_vectors(&keys, DIM);
                        b.append(
                            "c",
                            keys.iter().map(|&k| keyed_row(k)).collect(),
                            &[(img, &iv), (txt, &tv)],
                        )
                        .unwrap();
                        let built = b.finish().unwrap();
                        db.writer().unwrap().publish(&[built]).unwrap();
                        done.extend(keys);
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut expected: Vec<u64> = acknowledged.into_iter().flatten().collect();
    expected.sort_unstable();
    assert_eq!(expected.len(), 60);
    let check = tempfile::tempdir().unwrap();
    assert_eq!(keys_in(&machine(uri, &check)), expected);

    // Plain appends are not retried: of two writers on the same version exactly one wins, the
    // other is told so and has committed nothing.
    let a = machine(uri, &caches[0]);
    let b = machine(uri, &caches[1]);
    let mut wa = a.writer().unwrap();
    let mut wb = b.writer().unwrap();
    let (iv, tv) = keyed_vectors(&[7001], DIM);
    wa.append("c", vec![keyed_row(7001)], &[(img, &iv), (txt, &tv)])
        .unwrap();
    let (iv, tv) = keyed_vectors(&[7002], DIM);
    let lost = wb
        .append("c", vec![keyed_row(7002)], &[(img, &iv), (txt, &tv)])
        .unwrap_err();
    assert!(matches!(lost, Error::Conflict { .. }), "{lost}");
    assert!(lost.to_string().contains("run it again"), "{lost}");
    // Run again, it lands on top of the winner's commit.
    wb.append("c", vec![keyed_row(7002)], &[(img, &iv), (txt, &tv)])
        .unwrap();
    drop((wa, wb));
    expected.extend([7001, 7002]);
    let check = tempfile::tempdir().unwrap();
    assert_eq!(keys_in(&machine(uri, &check)), expected);
}

#[test]
fn vacuum_on_object_storage_keeps_young_files_and_removes_old_versions() {
    let uri = "memory://vacuum/db";
    let cache = tempfile::tempdir().unwrap();
    let db = machine(uri, &cache);
    let (img, txt) = setup(&db);
    let mut w = db.writer().unwrap();
    for k in 1..=3u64 {
        let (iv, tv) = keyed_vectors(&[k], DIM);
        w.append("c", vec![keyed_row(k)], &[(img, &iv), (txt, &tv)])
            .unwrap();
    }
    w.delete("c", &[2]).unwrap();
    let before = db.versions().unwrap().len();
    let report = w.vacuum(1).unwrap();
    assert!(report.versions_removed > 0 && report.versions_removed < before);
    // Files the merges replaced are younger than the grace period: kept, in case a reader on
    // another machine still reads them.
    assert!(report.builds_kept > 0, "{report:?}");
    w.set_options(mirante::storage::WriterOptions {
        build_grace: std::time::Duration::ZERO,
        ..Default::default()
    });
    let report = w.vacuum(1).unwrap();
    assert!(report.files_removed > 0, "{report:?}");
    drop(w);
    let fresh = tempfile::tempdir().unwrap();
    assert_eq!(keys_in(&machine(uri, &fresh)), vec![1, 3]);
}

#[test]
fn reservations_racing_on_two_machines_never_overlap() {
    let uri = "memory://reserve-race/db";
    let caches: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    setup(&machine(uri, &caches[0]));
    let ranges: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
        let workers: Vec<_> = caches
            .iter()
            .map(|cache| {
                s.spawn(move || {
                    let db = machine(uri, cache);
                    (0..20)
                        .map(|_| {
                            let r = db.writer().unwrap().reserve_ids("c", 3).unwrap();
                            (r.first, r.end)
                        })
                        .collect()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut all: Vec<(u64, u64)> = ranges.into_iter().flatten().collect();
    all.sort_unstable();
    assert!(all.windows(2).all(|w| w[0].1 <= w[1].0), "{all:?}");
}
