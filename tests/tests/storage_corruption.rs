//! Corrupted and truncated files give typed errors naming the file, never a panic; the rest of
//! the database stays readable.

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use mirante::storage::{Database, Error, IndexSpec, Metric, Modality, WriterOptions};
use mirante_tests::{int_vector, keyed_row, keyed_texts, test_schema, test_space};

const DIM: usize = 8;

/// Two collections: `a` (the victim, 1200 rows so it has a FAISS index, one deletion) and `b`.
fn build(dir: &Path) {
    build_db(&Database::create(dir).unwrap());
}

fn build_db(db: &Database) {
    let mut w = db.writer().unwrap();
    w.set_options(WriterOptions {
        auto_compact: false,
        ..Default::default()
    });
    for name in ["a", "b"] {
        w.create_collection(name, test_schema(), IndexSpec::default())
            .unwrap();
        let img = w
            .add_space(
                name,
                test_space(Modality::Image, DIM, Metric::InnerProduct),
                true,
            )
            .unwrap();
        let n = if name == "a" { 1200 } else { 10 };
        let iv: Vec<f32> = (1..=n).flat_map(|k| int_vector(k, 0, DIM)).collect();
        w.append(name, (1..=n).map(keyed_row).collect(), &[(img, &iv)])
            .unwrap();
        let _ = keyed_texts;
    }
    w.delete("a", &[3]).unwrap();
}

/// Reads everything of collection `a`: every row, a search, the deletion vector.
fn read_all(dir: &Path, collection: &str) -> mirante::storage::Result<()> {
    read_db(&Database::open(dir)?, collection)
}

fn read_db(db: &Database, collection: &str) -> mirante::storage::Result<()> {
    let snap = db.snapshot()?;
    snap.scan(collection, None, |row| {
        let _ = row.image_bytes();
        Ok(())
    })?;
    snap.search(collection, 1, &int_vector(5, 0, DIM), 5, None)?;
    snap.get(collection, 4)?;
    Ok(())
}

fn file_with_ext(dir: &Path, ext: &str, among: &[String]) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("files"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .filter(|p| among.iter().any(|n| p.ends_with(n)))
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no .{ext} file"))
}

fn expect_error_naming(result: mirante::storage::Result<()>, path: &Path, what: &str) {
    let err = result.expect_err(what);
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::Corruption { .. } | Error::Io { .. } | Error::Remote { .. }
        ),
        "{what}: unexpected error kind {msg}"
    );
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        msg.contains(name.as_ref()),
        "{what}: error does not name {name}: {msg}"
    );
}

#[test]
fn flipped_bytes_and_truncation_in_every_data_file_kind_are_detected() {
    for ext in ["rows", "blob", "emb", "del", "faiss"] {
        let template = tempfile::tempdir().unwrap();
        build(template.path());
        let a = files_of_a(&Database::open(template.path()).unwrap());
        damage_and_check(ext, template.path(), &a, &|c| read_all(template.path(), c));
    }
}

/// The same on the object-storage backend: the objects of a store in a folder (`objectfs://`)
/// are damaged, and each read is a new machine (a fresh cache folder) that fetches them.
#[test]
fn damaged_objects_on_object_storage_are_detected() {
    for ext in ["rows", "blob", "emb", "del", "faiss"] {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let uri = format!("objectfs://{}", store.display());
        let machine =
            |n: usize| Database::open_location(&uri, Some(&tmp.path().join(format!("cache{n}"))));
        let first = machine(0).unwrap();
        assert_eq!(first.remote_uri(), Some(uri.as_str()));
        build_db(&first);
        let a = files_of_a(&first);
        let reads = std::sync::atomic::AtomicUsize::new(1);
        damage_and_check(ext, &store, &a, &|c| {
            read_db(
                &machine(reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed))?,
                c,
            )
        });
    }
}

/// The data files of collection `a`.
fn files_of_a(db: &Database) -> Vec<String> {
    let snap = db.snapshot().unwrap();
    let a = snap.collection("a").unwrap();
    a.segments
        .iter()
        .flat_map(|s| s.files())
        .map(|f| f.name.clone())
        .collect()
}

/// Flips one byte of a `.ext` file of collection `a` (one of `names`) under `root/files` at a
/// spread of positions (header, body start, middle, end), then truncates it, then removes it:
/// every read of `a` fails naming the file, collection `b` stays readable.
fn damage_and_check(
    ext: &str,
    root: &Path,
    names: &[String],
    read: &dyn Fn(&str) -> mirante::storage::Result<()>,
) {
    read("a").expect("intact database reads");
    let victim = file_with_ext(root, ext, names);
    let len = std::fs::metadata(&victim).unwrap().len() as usize;
    let positions = [0, 9, 20, 63, 64, 65, len / 2, len - 1];
    for &pos in positions.iter().filter(|&&p| p < len) {
        let bytes = std::fs::read(&victim).unwrap();
        let mut bad = bytes.clone();
        bad[pos] ^= 0x5A;
        std::fs::write(&victim, &bad).unwrap();
        expect_error_naming(read("a"), &victim, &format!(".{ext} byte {pos}"));
        read("b").expect("the other collection stays readable");
        std::fs::write(&victim, &bytes).unwrap();
    }
    for cut in [0, 10, len / 2, len - 1] {
        let bytes = std::fs::read(&victim).unwrap();
        std::fs::write(&victim, &bytes[..cut]).unwrap();
        expect_error_naming(read("a"), &victim, &format!(".{ext} cut at {cut}"));
        read("b").expect("the other collection stays readable");
        std::fs::write(&victim, &bytes).unwrap();
    }
    std::fs::remove_file(&victim).unwrap();
    expect_error_naming(read("a"), &victim, &format!(".{ext} missing"));
}

/// Builds the test database in `dir`; returns its versions and the newest manifest's path.
fn built_with_newest_manifest(dir: &Path) -> (Vec<u64>, PathBuf) {
    build(dir);
    let versions = Database::open(dir).unwrap().versions().unwrap();
    let newest = *versions.last().unwrap();
    let path = dir.join("_versions").join(format!("{newest:020}.manifest"));
    (versions, path)
}

#[test]
fn a_corrupted_newest_manifest_is_shown_loudly_and_refuses_writes_until_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (versions, path) = built_with_newest_manifest(dir.path());
    let newest = *versions.last().unwrap();
    let previous = versions[versions.len() - 2];
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let db = Database::open(dir.path()).unwrap();
    assert_eq!(db.snapshot().unwrap().version(), previous);
    let damaged = db.damaged_versions();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].version, newest);
    let warnings = db.warnings();
    assert!(
        warnings[0].contains("body checksum mismatch")
            && warnings[0].contains(&format!("showing version {previous}"))
            && warnings[0].contains(&format!("RESTORE VERSION {previous}")),
        "{warnings:?}"
    );
    // The version before the delete still holds row 3.
    assert!(db.snapshot().unwrap().get("a", 3).unwrap().is_some());
    // Time travel to the damaged version names the file.
    let err = db.snapshot_at(newest).unwrap_err();
    assert!(
        err.to_string().contains(&format!("{newest:020}.manifest")),
        "{err}"
    );
    // Writing on top would make the loss permanent: every write and vacuum is refused, and the
    // damaged file stays where it is.
    let mut w = db.writer().unwrap();
    for err in [
        w.delete("a", &[4]).unwrap_err(),
        w.vacuum(1).unwrap_err(),
        w.check_writable().unwrap_err(),
    ] {
        assert!(
            matches!(err, mirante::storage::Error::DamagedNewerVersion { .. }),
            "{err}"
        );
    }
    assert!(path.exists());
    assert_eq!(db.versions().unwrap(), versions);
    // Accepting the fallback moves the damaged manifest aside and commits the shown version
    // again, under a new number; writes work after it.
    assert_eq!(w.restore(previous).unwrap(), newest + 1);
    assert!(!path.exists());
    assert!(
        dir.path()
            .join("_versions/damaged")
            .join(path.file_name().unwrap())
            .exists()
    );
    assert!(db.warnings().is_empty());
    w.delete("a", &[4]).unwrap();
    assert_eq!(w.version(), newest + 2);
    drop(w);
    let reopened = Database::open(dir.path()).unwrap();
    assert!(reopened.warnings().is_empty());
    let snap = reopened.snapshot().unwrap();
    assert_eq!(snap.version(), newest + 2);
    assert!(snap.get("a", 3).unwrap().is_some());
    assert!(snap.get("a", 4).unwrap().is_none());
}

#[test]
fn restore_commits_an_older_version_again_without_reusing_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (versions, _) = built_with_newest_manifest(dir.path());
    let db = Database::open(dir.path()).unwrap();
    let first_rows = db
        .snapshot_at(versions[2])
        .unwrap()
        .collection("a")
        .unwrap()
        .clone();
    let newest_next_id = db.snapshot().unwrap().collection("a").unwrap().next_row_id;
    let mut w = db.writer().unwrap();
    let restored = w.restore(versions[2]).unwrap();
    assert_eq!(restored, versions.last().unwrap() + 1);
    let snap = db.snapshot().unwrap();
    let c = snap.collection("a").unwrap();
    // Version 3: collection `a` with its space but no rows yet, and no collection `b`.
    assert!(c.segments.is_empty() && first_rows.segments.is_empty());
    assert!(snap.collection("b").is_err());
    // Ids handed out after the restored version are not handed out again.
    assert!(first_rows.next_row_id < newest_next_id);
    assert_eq!(c.next_row_id, newest_next_id);
    let err = w.restore(10_000).unwrap_err();
    assert!(err.to_string().contains("retained versions are"), "{err}");
}

#[test]
fn a_newer_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = built_with_newest_manifest(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    let crc = crc32c(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = Database::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedFormat { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade Mirante"), "{err}");
}

/// CRC-32C (Castagnoli), bit by bit: an independent reference for the header checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
