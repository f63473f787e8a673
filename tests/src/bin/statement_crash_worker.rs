//! Child process of the statement crash soak (`tests/tests/statement_crash.rs`): runs writing
//! statements on the soak's database (see `mirante_tests::soak`) in a random loop until it is
//! killed, by the parent's SIGKILL or by a crash point armed through `FAILPOINTS`.
//!
//! Usage: `statement_crash_worker <work-dir> <seed> <ops>`, `ops` a comma-separated list of
//! `import`, `delete`, `compact`, `index`, `vacuum`, `reembed`, `finetune`, `elip`. Protocol,
//! one line each, written before and after the statement it describes:
//! - `B import <first-key> <last-key>`, `B delete <key> ...`, `B index <spec>`,
//!   `B model <folder>` (REEMBED), `B train <name>` (FINETUNE, TRAIN ELIP), `B drop <name>`,
//!   `B compact`, `B vacuum`: about to run;
//! - `C`: it returned successfully;
//! - `E <message>`: it failed (the parent fails the test).

#![allow(clippy::unwrap_used)] // tests and test tools: a failed unwrap is a failed test

use std::path::Path;

use mirante::storage::Modality;
use mirante::{Cell, Database};
use mirante_tests::soak::{self, COLLECTION, MODELS, quote};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// Index specs CREATE INDEX alternates between (the tiny model's vectors have 16 dimensions).
const SPECS: [&str; 4] = ["Flat", "HNSW8", "IVF4,Flat", "PQ4x4"];
/// The soak keeps the collection between these sizes, so that segments reach the size that
/// builds FAISS indexes (1,024 vectors) without every statement growing slower.
const FEW_ROWS: usize = 300;
const MANY_ROWS: usize = 1500;
/// Registry models kept; more are dropped, oldest first.
const MODELS_KEPT: usize = 4;

fn main() {
    mirante::storage::crashpoint::arm_from_env();
    let args: Vec<String> = std::env::args().collect();
    let work = Path::new(&args[1]);
    let seed: u64 = args[2].parse().expect("seed");
    let ops: Vec<&str> = args[3].split(',').collect();
    let db = Database::open(work.join("db")).unwrap();
    let captions = soak::captions(work);
    let mut rng = StdRng::seed_from_u64(seed);
    for n in 0.. {
        let keys = keys(&db);
        let op = match *ops.choose(&mut rng).unwrap() {
            "delete" if keys.len() < FEW_ROWS => "import",
            "import" if keys.len() > MANY_ROWS => "delete",
            "finetune" | "elip" if keys.len() < 64 => "import",
            op => op,
        };
        let (line, sql) = match op {
            "import" => {
                let first = keys.last().map_or(1, |k| k + 1);
                let last = first + rng.random_range(20..200);
                let csv = work.join(format!("rows-{seed}.csv"));
                let mut text = String::from("image,text,key\n");
                for key in first..=last {
                    text.push_str(&format!(
                        "{},{},{key}\n",
                        soak::image(work, key).display(),
                        soak::caption(&captions, key)
                    ));
                }
                std::fs::write(&csv, text).unwrap();
                (
                    format!("import {first} {last}"),
                    format!("IMPORT INTO {COLLECTION} FROM '{}'", quote(&csv)),
                )
            }
            "delete" => {
                let from = keys[rng.random_range(0..keys.len())];
                let to = from + rng.random_range(1..120);
                let doomed: Vec<String> = keys
                    .iter()
                    .filter(|k| (from..=to).contains(*k))
                    .map(u64::to_string)
                    .collect();
                (
                    format!("delete {}", doomed.join(" ")),
                    format!("DELETE FROM {COLLECTION} WHERE key BETWEEN {from} AND {to}"),
                )
            }
            "compact" => ("compact".into(), format!("COMPACT {COLLECTION}")),
            "vacuum" => ("vacuum".into(), "VACUUM".into()),
            "index" => {
                let spec = SPECS.choose(&mut rng).unwrap();
                (
                    format!("index {spec}"),
                    format!("CREATE INDEX ON {COLLECTION} USING '{spec}'"),
                )
            }
            "reembed" => {
                let active = active_model(&db);
                let next = if active.contains(MODELS[0]) {
                    MODELS[1]
                } else {
                    MODELS[0]
                };
                let folder = work.join(next);
                (
                    format!("model {}", folder.display()),
                    format!("REEMBED {COLLECTION} USING MODEL '{}'", quote(&folder)),
                )
            }
            "finetune" | "elip" => {
                let models = db.registry().names().unwrap();
                if models.len() >= MODELS_KEPT {
                    let mut models = models;
                    models.sort_by_key(|m| db.registry().lineage(m).unwrap().created);
                    let name = &models[0];
                    run(
                        &db,
                        &format!("drop {name}"),
                        &format!("DROP MODEL '{name}'"),
                    );
                }
                let name = format!("{op}-{seed}-{n}");
                // 32 rows: a second of training, so that kills land inside it too.
                let first = rng.random_range(0..keys.len() - 32);
                let filter = format!("key BETWEEN {} AND {}", keys[first], keys[first + 31]);
                let sql = if op == "finetune" {
                    format!(
                        "FINETUNE MODEL '{}' ON {COLLECTION} WHERE {filter} \
                         WITH (epochs = 1, batch_size = 8, seed = {n}) AS '{name}'",
                        quote(&work.join(MODELS[0]))
                    )
                } else {
                    format!(
                        "TRAIN ELIP ON {COLLECTION} WHERE {filter} WITH (epochs = 1, \
                         batch_size = 8, prompts = 2, hidden = 16, seed = {n}) AS '{name}'"
                    )
                };
                (format!("train {name}"), sql)
            }
            other => panic!("unknown op {other}"),
        };
        run(&db, &line, &sql);
    }
}

/// Runs `sql` between its protocol lines; exits on failure.
fn run(db: &Database, line: &str, sql: &str) {
    println!("B {line}");
    match db.sql(sql) {
        Ok(_) => println!("C"),
        Err(e) => {
            println!("E {}", e.render(sql).replace('\n', " | "));
            std::process::exit(1);
        }
    }
}

/// The live rows' keys, ascending.
fn keys(db: &Database) -> Vec<u64> {
    let r = mirante_tests::one(db, &format!("SELECT key FROM {COLLECTION}"));
    let mut keys: Vec<u64> = r
        .rows
        .iter()
        .map(|row| match row[0] {
            Cell::Int(k) => k as u64,
            ref other => panic!("key {other:?}"),
        })
        .collect();
    keys.sort_unstable();
    keys
}

/// The model of the collection's active image space.
fn active_model(db: &Database) -> String {
    let snap = db.storage().snapshot().unwrap();
    let c = snap.collection(COLLECTION).unwrap();
    let space = c.active(Modality::Image).unwrap();
    c.space(space).unwrap().spec.model_id.clone()
}
