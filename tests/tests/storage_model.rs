//! Model-based property test: random sequences of append, delete, compact, reopen and vacuum are
//! checked against an in-memory model (the set of live rows, their contents, search results).

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use std::collections::BTreeSet;

use mirante::storage::{
    Database, Hit, IndexSpec, Metric, Modality, ValueRef, WriterOptions, sort_hits,
};
use mirante_tests::{assert_keyed_row, int_vector, keyed_row, test_schema, test_space};
use proptest::prelude::*;

const DIM: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    Append(u64),
    /// Deletes live rows whose position in the live set is a multiple of `step`, offset `off`.
    Delete {
        step: usize,
        off: usize,
    },
    Compact {
        full: bool,
    },
    Reopen,
    Vacuum(usize),
    Search {
        query: u64,
        k: usize,
        filtered: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..60).prop_map(Op::Append),
        2 => (2usize..6, 0usize..6).prop_map(|(step, off)| Op::Delete { step, off }),
        1 => any::<bool>().prop_map(|full| Op::Compact { full }),
        1 => Just(Op::Reopen),
        1 => (1usize..4).prop_map(Op::Vacuum),
        3 => (0u64..1000, 1usize..15, any::<bool>())
            .prop_map(|(query, k, filtered)| Op::Search { query, k, filtered }),
    ]
}

fn model_search(live: &BTreeSet<u64>, query: &[f32], k: usize, filtered: bool) -> Vec<Hit> {
    let mut hits: Vec<Hit> = live
        .iter()
        .filter(|&&id| !filtered || id % 2 == 0)
        .map(|&id| Hit {
            row_id: id,
            text_index: 0,
            score: int_vector(id, 0, DIM)
                .iter()
                .zip(query)
                .map(|(a, b)| a * b)
                .sum(),
        })
        .collect();
    sort_hits(&mut hits);
    hits.truncate(k);
    hits
}

fn run(ops: Vec<Op>, merge_factor: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Database::create(dir.path()).unwrap();
    let mut w = db.writer().unwrap();
    w.set_options(WriterOptions {
        auto_compact: true,
        merge_factor,
        ..WriterOptions::default()
    });
    w.create_collection("c", test_schema(), IndexSpec::default())
        .unwrap();
    let spec = test_space(Modality::Image, DIM, Metric::InnerProduct);
    let space = w.add_space("c", spec, true).unwrap();
    let mut live = BTreeSet::new();
    let mut next_id = 1u64;
    for op in ops {
        match op {
            Op::Append(n) => {
                let keys: Vec<u64> = (next_id..next_id + n).collect();
                let v: Vec<f32> = keys.iter().flat_map(|&k| int_vector(k, 0, DIM)).collect();
                let ids = w
                    .append(
                        "c",
                        keys.iter().map(|&k| keyed_row(k)).collect(),
                        &[(space, &v)],
                    )
                    .unwrap();
                assert_eq!(ids, keys);
                live.extend(keys);
                next_id += n;
            }
            Op::Delete { step, off } => {
                let doomed: Vec<u64> = live
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(i, _)| i % step == off % step)
                    .map(|(_, id)| id)
                    .collect();
                assert_eq!(w.delete("c", &doomed).unwrap(), doomed.len());
                for id in doomed {
                    live.remove(&id);
                }
            }
            Op::Compact { full } => {
                w.compact("c", full).unwrap();
                if full {
                    let segs = &w.manifest().collection("c").unwrap().segments;
                    assert!(segs.len() <= 1 && segs.iter().all(|s| s.deleted == 0));
                }
            }
            Op::Reopen => {
                drop(w);
                db = Database::open(dir.path()).unwrap();
                w = db.writer().unwrap();
                w.set_options(WriterOptions {
                    auto_compact: true,
                    merge_factor,
                    ..WriterOptions::default()
                });
            }
            Op::Vacuum(keep) => {
                w.vacuum(keep).unwrap();
            }
            Op::Search { query, k, filtered } => {
                let q = int_vector(10_000 + query, 3, DIM);
                let even = |r: &mirante::storage::RowRef<'_>| {
                    r.value("flag").unwrap() == ValueRef::Bool(true)
                };
                let filter: Option<&mirante::storage::RowFilter<'_>> =
                    if filtered { Some(&even) } else { None };
                let got = db
                    .snapshot()
                    .unwrap()
                    .search("c", space, &q, k, filter)
                    .unwrap();
                assert_eq!(got[0], model_search(&live, &q, k, filtered));
            }
        }
        // After every step the visible rows are exactly the model's, intact.
        let snap = db.snapshot().unwrap();
        assert_eq!(snap.version(), w.version());
        let mut seen = BTreeSet::new();
        snap.scan("c", None, |row| {
            assert_keyed_row(&row, row.id());
            seen.insert(row.id());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, live);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn storage_matches_the_model(ops in prop::collection::vec(op(), 1..30), merge_factor in 2usize..5) {
        run(ops, merge_factor);
    }
}
