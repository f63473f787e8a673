//! Format compatibility: databases written by earlier format versions (committed fixtures made by
//! `make_fixture`) keep opening with every row, vector, deletion and version intact.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use mirante::storage::{Database, FORMAT_VERSION, OLDEST_SUPPORTED_VERSION};
use mirante_tests::{assert_keyed_row, brute_force, copy_dir, int_vector};

#[test]
fn every_supported_format_fixture_opens_intact() {
    for version in OLDEST_SUPPORTED_VERSION..=FORMAT_VERSION {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(format!("db-format-v{version}"));
        assert!(fixture.is_dir(), "missing fixture {}", fixture.display());
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&fixture, tmp.path());
        let db = Database::open(tmp.path()).unwrap();
        assert!(db.warnings().is_empty(), "{:?}", db.warnings());
        assert_eq!(db.versions().unwrap(), (1..=7).collect::<Vec<u64>>());
        let snap = db.snapshot().unwrap();
        let mut count = 0;
        snap.scan("fixture", None, |row| {
            assert_keyed_row(&row, row.id());
            count += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(count, 1128);
        assert!(snap.get("fixture", 7).unwrap().is_none());
        let before_delete = db.snapshot_at(6).unwrap();
        assert_keyed_row(&before_delete.get("fixture", 7).unwrap().unwrap().row(), 7);
        for (space, item) in [(1, 0), (2, 1)] {
            let q = int_vector(99_999, item, 8);
            let got = snap.search("fixture", space, &q, 20, None).unwrap();
            assert_eq!(
                got[0],
                brute_force(&snap, "fixture", space, &q, 20, &|_| true)
            );
        }
        // And it accepts new commits.
        let mut w = db.writer().unwrap();
        w.delete("fixture", &[8]).unwrap();
        assert_eq!(w.version(), 8);
    }
}
