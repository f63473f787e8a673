//! Crash soak over the engine's writing statements: a worker process runs IMPORT, DELETE,
//! COMPACT, CREATE INDEX, VACUUM, REEMBED, FINETUNE and TRAIN ELIP (with DROP MODEL) in a
//! random loop on one database and is killed, either with SIGKILL by this process at a random
//! moment or by itself at a named crash point inside a commit (storage/src/crashpoint.rs:
//! between the durable steps of a segment write, a manifest commit, a vacuum and a registry
//! install). After every kill the database must open without warnings and hold exactly what
//! the acknowledged statements made, the statement in flight either whole or not at all:
//! - the rows, their captions and images, and every stored image and caption vector equal to
//!   a fresh embedding of that row;
//! - the index spec and the active model, image and text spaces on one model;
//! - the registry: every model that training acknowledged, loadable, none half-written;
//! - search working; at the end, VACUUM leaving no file that no version references.
//!
//! `MIRANTE_SOAK_KILLS` sets the number of kills (default 24; `scripts/crash_soak.sh` runs
//! 1,000, docs/reliability.md has the results).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirante::storage::Modality;
use mirante::{Cell, Database, ExecOptions};
use mirante_tests::soak::{self, COLLECTION, MODELS};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const WORKER: &str = env!("CARGO_BIN_EXE_statement_crash_worker");
const ALL_OPS: &str = "import,import,delete,compact,index,vacuum,reembed,finetune,elip";

/// The crash points and the statements that reach them.
const POINTS: [(&str, &str); 9] = [
    ("storage::segment-written", "import,compact,delete"),
    ("storage::before-manifest", ALL_OPS),
    ("storage::manifest-written", ALL_OPS),
    ("storage::manifest-renamed", ALL_OPS),
    ("storage::committed", ALL_OPS),
    (
        "storage::vacuum-manifests-removed",
        "import,delete,compact,index,vacuum",
    ),
    (
        "storage::vacuum-file-removed",
        "import,delete,compact,index,vacuum",
    ),
    ("engine::model-synced", "finetune,elip,import"),
    ("engine::model-renamed", "finetune,elip,import"),
];

/// What the acknowledged statements made.
#[derive(Debug, Clone)]
struct State {
    keys: BTreeSet<u64>,
    index: String,
    /// The model folder's name (`model-a` or `model-b`).
    model: String,
    registry: BTreeSet<String>,
}

/// The statement a kill interrupted.
#[derive(Debug, Clone, PartialEq)]
enum InFlight {
    None,
    Import(Vec<u64>),
    Delete(Vec<u64>),
    Index(String),
    Model(String),
    Train(String),
    Drop(String),
    Compact,
    Vacuum,
}

impl InFlight {
    fn kind(&self) -> &'static str {
        match self {
            InFlight::None => "between statements",
            InFlight::Import(_) => "IMPORT",
            InFlight::Delete(_) => "DELETE",
            InFlight::Index(_) => "CREATE INDEX",
            InFlight::Model(_) => "REEMBED",
            InFlight::Train(n) if n.starts_with("elip") => "TRAIN ELIP",
            InFlight::Train(_) => "FINETUNE",
            InFlight::Drop(_) => "DROP MODEL",
            InFlight::Compact => "COMPACT",
            InFlight::Vacuum => "VACUUM",
        }
    }
}

/// Applies the worker's protocol to `state`; returns the statement left in flight.
fn replay(out: &str, state: &mut State) -> InFlight {
    let mut pending = InFlight::None;
    for line in out.lines() {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "B" => {
                let (op, args) = rest.split_once(' ').unwrap_or((rest, ""));
                let keys = || args.split_whitespace().map(|k| k.parse().unwrap());
                pending = match op {
                    "import" => {
                        let v: Vec<u64> = keys().collect();
                        InFlight::Import((v[0]..=v[1]).collect())
                    }
                    "delete" => InFlight::Delete(keys().collect()),
                    "index" => InFlight::Index(args.to_string()),
                    "model" => InFlight::Model(folder_name(args)),
                    "train" => InFlight::Train(args.to_string()),
                    "drop" => InFlight::Drop(args.to_string()),
                    "compact" => InFlight::Compact,
                    "vacuum" => InFlight::Vacuum,
                    other => panic!("unknown statement {other}"),
                };
            }
            "C" => {
                apply(state, &pending);
                pending = InFlight::None;
            }
            "E" => panic!("a statement failed: {rest}"),
            _ => panic!("unexpected worker output {line:?}"),
        }
    }
    pending
}

fn apply(state: &mut State, done: &InFlight) {
    match done {
        InFlight::Import(keys) => state.keys.extend(keys),
        InFlight::Delete(keys) => keys.iter().for_each(|k| {
            state.keys.remove(k);
        }),
        InFlight::Index(spec) => state.index = spec.clone(),
        InFlight::Model(m) => state.model = m.clone(),
        InFlight::Train(name) => {
            state.registry.insert(name.clone());
        }
        InFlight::Drop(name) => {
            state.registry.remove(name);
        }
        InFlight::None | InFlight::Compact | InFlight::Vacuum => {}
    }
}

fn folder_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Fresh embeddings to compare stored vectors with, computed once per image or caption.
struct Reference {
    db: Database,
    captions: Vec<String>,
    images: Vec<Vec<f32>>,
    texts: HashMap<String, Vec<f32>>,
}

impl Reference {
    fn new(work: &Path) -> Self {
        let db = Database::open(work.join("reference")).unwrap();
        let model = work.join(MODELS[0]).display().to_string();
        let sources: Vec<_> = (0..16)
            .map(|k| mirante::training::ImageSource::Path(soak::image(work, k)))
            .collect();
        let images = db
            .embed_images(&sources, Some(&model), &ExecOptions::default())
            .unwrap();
        Reference {
            db,
            captions: soak::captions(work),
            images,
            texts: HashMap::new(),
        }
    }

    fn texts(&mut self, work: &Path, captions: &[String]) {
        let missing: Vec<&str> = captions
            .iter()
            .filter(|c| !self.texts.contains_key(*c))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return;
        }
        let model = work.join(MODELS[0]).display().to_string();
        let vectors = self
            .db
            .embed_texts(&missing, Some(&model), &ExecOptions::default())
            .unwrap();
        for (c, v) in missing.iter().zip(vectors) {
            self.texts.insert(c.to_string(), v);
        }
    }
}

fn close(stored: &[f32], fresh: &[f32]) -> bool {
    stored.len() == fresh.len() && stored.iter().zip(fresh).all(|(a, b)| (a - b).abs() < 1e-4)
}

/// Checks the database against `state` with `in_flight` whole or absent; returns the state
/// found.
fn verify(work: &Path, state: &State, in_flight: &InFlight, reference: &mut Reference) -> State {
    let db = Database::open(work.join("db")).expect("the database opens after the kill");
    assert!(
        db.warnings().is_empty(),
        "warnings after the kill: {:?}",
        db.warnings()
    );
    // Rows: keys, captions, images.
    let rows = mirante_tests::one(
        &db,
        &format!("SELECT id, key, text, image FROM {COLLECTION}"),
    );
    let mut key_of = BTreeMap::new();
    for row in &rows.rows {
        let (Cell::Int(id), Cell::Int(key), Cell::List(texts), Cell::Str(image)) =
            (&row[0], &row[1], &row[2], &row[3])
        else {
            panic!("row {row:?}");
        };
        let key = *key as u64;
        assert_eq!(
            texts,
            &[soak::caption(&reference.captions, key)],
            "row {key}"
        );
        let file = soak::image(work, key);
        assert!(
            image.ends_with(&*file.file_name().unwrap().to_string_lossy()),
            "{image}"
        );
        assert!(key_of.insert(*id as u64, key).is_none());
    }
    let found: BTreeSet<u64> = key_of.values().copied().collect();
    assert_eq!(found.len(), key_of.len(), "a key appears twice");
    let mut after = state.clone();
    apply(&mut after, in_flight);
    let keys_ok = found == state.keys || found == after.keys;
    assert!(
        keys_ok,
        "rows after a kill during {}: {} found, {} acknowledged; missing {:?}, extra {:?}",
        in_flight.kind(),
        found.len(),
        state.keys.len(),
        state.keys.difference(&found).take(5).collect::<Vec<_>>(),
        found.difference(&after.keys).take(5).collect::<Vec<_>>()
    );

    // Index spec and model.
    let snap = db.storage().snapshot().unwrap();
    let c = snap.collection(COLLECTION).unwrap();
    let index = c.index.factory.clone();
    assert!(
        index == state.index || index == after.index,
        "index {index}, expected {} or {}",
        state.index,
        after.index
    );
    let model_of = |m| {
        let space = c.active(m).unwrap();
        folder_name(&c.space(space).unwrap().spec.model_id)
    };
    let model = model_of(Modality::Image);
    assert_eq!(model, model_of(Modality::Text), "spaces on two models");
    assert!(
        model == state.model || model == after.model,
        "model {model}, expected {} or {}",
        state.model,
        after.model
    );

    // Registry: exactly the acknowledged models (the one in flight whole or absent), each
    // loadable.
    let registry: BTreeSet<String> = db.registry().names().unwrap().into_iter().collect();
    assert!(
        registry == state.registry || registry == after.registry,
        "registry {registry:?}, expected {:?} or {:?}",
        state.registry,
        after.registry
    );
    for name in &registry {
        db.registry().lineage(name).unwrap();
        if name.starts_with("elip") && !found.is_empty() {
            mirante_tests::one(
                &db,
                &format!(
                    "SEARCH {COLLECTION} BY TEXT 'a red square' RERANK WITH ELIP '{name}' LIMIT 3"
                ),
            );
        } else if !name.starts_with("elip") {
            db.model(Some(name)).unwrap();
        }
    }

    // Every stored vector equals a fresh embedding of its row.
    let collection = db.collection(COLLECTION).unwrap();
    let images = collection.embeddings(None, Modality::Image).unwrap();
    assert_eq!(images.ids.len(), found.len());
    for (i, id) in images.ids.iter().enumerate() {
        let key = key_of[id];
        let stored = &images.as_slice()[i * images.dim..(i + 1) * images.dim];
        assert!(
            close(stored, &reference.images[(key % 16) as usize]),
            "image vector of row {key}"
        );
    }
    let texts = collection.embeddings(None, Modality::Text).unwrap();
    let wanted: Vec<String> = texts
        .ids
        .iter()
        .map(|id| soak::caption(&reference.captions, key_of[id]))
        .collect();
    reference.texts(work, &wanted);
    for (i, caption) in wanted.iter().enumerate() {
        let stored = &texts.as_slice()[i * texts.dim..(i + 1) * texts.dim];
        assert!(
            close(stored, &reference.texts[caption]),
            "vector of {caption}"
        );
    }

    // Search over what was recovered (FAISS segments included) returns live rows.
    let hits = collection
        .search_text("a red square")
        .limit(5)
        .run()
        .unwrap()
        .hits;
    assert_eq!(hits.is_empty(), found.is_empty());
    assert!(hits.iter().all(|h| key_of.contains_key(&h.id)));

    State {
        keys: found,
        index,
        model,
        registry,
    }
}

fn kills() -> usize {
    mirante_tests::env_count("MIRANTE_SOAK_KILLS", 24)
}

#[test]
fn killed_statements_leave_whole_states() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    soak::setup(work);
    let mut reference = Reference::new(work);
    let mut state = State {
        keys: BTreeSet::new(),
        index: "Flat".into(),
        model: MODELS[0].into(),
        registry: BTreeSet::new(),
    };
    let mut rng = StdRng::seed_from_u64(2026);
    // (where the kill came from, the statement it interrupted) -> kills
    let mut table: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    let started = Instant::now();
    for i in 0..kills() {
        let (point, ops) = if i % 3 == 0 {
            (None, ALL_OPS)
        } else {
            let (p, ops) = *POINTS.choose(&mut rng).unwrap();
            (Some(p), ops)
        };
        let mut cmd = Command::new(WORKER);
        cmd.arg(work)
            .arg(i.to_string())
            .arg(ops)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let wait = match point {
            Some(p) => {
                let skip = rng.random_range(0..3);
                cmd.env("FAILPOINTS", format!("{p}={skip}*off->return"));
                Duration::from_secs(60)
            }
            None => Duration::from_millis(rng.random_range(200..4000)),
        };
        let mut child = cmd.spawn().expect("spawn worker");
        let deadline = Instant::now() + wait;
        let mut by_point = false;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                by_point = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !by_point {
            child.kill().unwrap();
        }
        let output = child.wait_with_output().unwrap();
        let status = output.status;
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            std::os::unix::process::ExitStatusExt::signal(&status) == Some(9),
            "worker {i} ended with {status} instead of SIGKILL\n{out}\n{err}"
        );
        let in_flight = replay(&out, &mut state);
        let source = match (point, by_point) {
            (Some(p), true) => p.to_string(),
            _ => "timer".to_string(),
        };
        *table.entry((source, in_flight.kind())).or_default() += 1;
        state = verify(work, &state, &in_flight, &mut reference);
    }

    // VACUUM leaves nothing behind that no version references: no manifest's temporary file,
    // no partial model, no data file outside the newest version.
    let db = Database::open(work.join("db")).unwrap();
    mirante_tests::one(&db, "VACUUM");
    let names = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(work.join("db").join(dir))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let snap = db.storage().snapshot().unwrap();
    let referenced: BTreeSet<String> = snap.manifest().files().map(|f| f.name.clone()).collect();
    assert_eq!(names("files"), referenced);
    assert_eq!(names("_versions").len(), 1, "{:?}", names("_versions"));
    assert_eq!(names("models"), state.registry);

    let mut report = format!(
        "{} kills in {:.0} s; by source and statement in flight:\n",
        kills(),
        started.elapsed().as_secs_f64()
    );
    for ((source, statement), n) in &table {
        report.push_str(&format!("  {source:36} {statement:20} {n}\n"));
    }
    report.push_str(&format!(
        "final state: {} rows, index {}, model {}, {} registry models\n",
        state.keys.len(),
        state.index,
        state.model,
        state.registry.len()
    ));
    eprintln!("{report}");
    if let Ok(path) = std::env::var("MIRANTE_SOAK_REPORT") {
        std::fs::write(path, report).unwrap();
    }
    let points_hit = table.keys().filter(|(s, _)| s != "timer").count();
    assert!(points_hit > 0, "no crash point was reached");
    assert!(
        table.keys().any(|(_, s)| *s != "between statements"),
        "no kill landed inside a statement"
    );
}
