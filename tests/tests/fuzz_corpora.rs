//! Replays the fuzz targets' committed corpora (`fuzz/corpus/<target>/`: seeds from
//! `scripts/make_fuzz_seeds.py` and what fuzzing found) through the bodies the libFuzzer
//! binaries run (`fuzz/src/lib.rs`), on a 2 MiB thread stack like a library host's. Every input
//! must return; an error is fine, a panic or an abort fails the test.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../fuzz/src/lib.rs"]
mod bodies;

fn replay(target: &str, body: fn(&[u8])) {
    let folder = mirante_tests::repo_root().join("fuzz/corpus").join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", folder.display());
    for input in inputs {
        let data = std::fs::read(&input).unwrap();
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || body(&data))
            .unwrap()
            .join();
        assert!(outcome.is_ok(), "{target} panicked on {}", input.display());
    }
}

#[test]
fn statement_corpus() {
    replay("statement", bodies::statement);
}

#[test]
fn image_corpus() {
    replay("image", bodies::image);
}

#[test]
fn manifest_corpus() {
    replay("manifest", bodies::manifest);
}

#[test]
fn rows_corpus() {
    replay("rows", bodies::rows);
}
