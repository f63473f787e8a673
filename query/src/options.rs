//! Statement options (`WITH (key = value, ...)`). Each statement declares its options once, in a
//! table of [`OptionSpec`]s (name, type with bounds or choices, default, one-line doc), as
//! DataFusion declares its configuration. The binder checks what a statement wrote against its
//! table (unknown keys get the closest name, wrong types and out-of-range values point at the
//! value) and builds the statement's typed options ([`FinetuneOptions`], [`ElipOptions`],
//! [`ImportOptions`], [`CollectionOptions`]), so the engine never reads raw options.
//! `docs/query.md` shows these tables as [`markdown_table`] renders them (a test keeps it so).

use crate::ast::{EvalMetric, Literal, Options};
use crate::error::{Error, Pos, Result, closest};

/// What values an option takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptionType {
    /// A whole number in `min..=max`.
    Count { min: u64, max: u64 },
    /// A finite number between `min` and `max`; `open_min` / `open_max` exclude the bound.
    Number {
        min: f64,
        max: f64,
        open_min: bool,
        open_max: bool,
    },
    /// `true` or `false`.
    Flag,
    /// A quoted string.
    Text,
    /// One of these strings; `flags` also accepts `true` and `false` (spelled as the first two
    /// choices).
    Choice {
        choices: &'static [&'static str],
        flags: bool,
    },
    /// A retrieval metric as `EVALUATE` spells it; `ranking` refuses `mean_similarity`.
    Metric { ranking: bool },
    /// A model (registry name, folder or Hub id) as a string, or `NULL` for none.
    ModelOrNull,
}

impl OptionType {
    /// What the type accepts, for messages and the docs.
    pub fn describe(&self) -> String {
        match *self {
            OptionType::Count { min, max } if max == u64::MAX => {
                format!("a whole number of at least {min}")
            }
            OptionType::Count { min, max } => format!("a whole number from {min} to {max}"),
            OptionType::Number {
                min,
                max,
                open_min,
                open_max,
            } => {
                let lo = if open_min { '(' } else { '[' };
                let hi = if open_max { ')' } else { ']' };
                if max.is_infinite() && min == 0.0 && open_min {
                    "a positive number".into()
                } else if max.is_infinite() {
                    format!("a number of at least {min}")
                } else {
                    format!("a number in {lo}{min}, {max}{hi}")
                }
            }
            OptionType::Flag => "true or false".into(),
            OptionType::Text => "a quoted string".into(),
            OptionType::Choice { choices, flags } => {
                let quoted: Vec<String> = choices.iter().map(|c| format!("'{c}'")).collect();
                if flags {
                    format!("true, false or {}", quoted[2..].join(", "))
                } else {
                    format!("one of {}", quoted.join(", "))
                }
            }
            OptionType::Metric { ranking: true } => {
                "a ranking metric: 'recall@K', 'mrr', 'ndcg@K' or 'median_rank'".into()
            }
            OptionType::Metric { ranking: false } => {
                format!("a metric ({})", EvalMetric::SPELLINGS)
            }
            OptionType::ModelOrNull => "a model (registry name, folder or Hub id) or NULL".into(),
        }
    }
}

/// An option's value when the statement does not give it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptionDefault {
    /// No value: the text says what happens then.
    Absent(&'static str),
    Count(u64),
    Number(f64),
    Flag(bool),
    Text(&'static str),
}

impl std::fmt::Display for OptionDefault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionDefault::Absent(what) => f.write_str(what),
            OptionDefault::Count(n) => write!(f, "`{n}`"),
            OptionDefault::Number(x) if *x != 0.0 && x.abs() < 1e-3 => write!(f, "`{x:e}`"),
            OptionDefault::Number(x) => write!(f, "`{x}`"),
            OptionDefault::Flag(b) => write!(f, "`{b}`"),
            OptionDefault::Text(s) => write!(f, "`'{s}'`"),
        }
    }
}

/// One option of a statement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptionSpec {
    pub name: &'static str,
    pub ty: OptionType,
    pub default: OptionDefault,
    pub doc: &'static str,
}

/// A checked option value.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Count(u64),
    Number(f64),
    Flag(bool),
    Text(String),
    Null,
}

const fn spec(
    name: &'static str,
    ty: OptionType,
    default: OptionDefault,
    doc: &'static str,
) -> OptionSpec {
    OptionSpec {
        name,
        ty,
        default,
        doc,
    }
}

const fn count(
    name: &'static str,
    (min, max): (u64, u64),
    default: OptionDefault,
    doc: &'static str,
) -> OptionSpec {
    spec(name, OptionType::Count { min, max }, default, doc)
}

const fn number(
    name: &'static str,
    (min, max, open_min, open_max): (f64, f64, bool, bool),
    default: OptionDefault,
    doc: &'static str,
) -> OptionSpec {
    let ty = OptionType::Number {
        min,
        max,
        open_min,
        open_max,
    };
    spec(name, ty, default, doc)
}

const fn flag(name: &'static str, default: bool, doc: &'static str) -> OptionSpec {
    spec(name, OptionType::Flag, OptionDefault::Flag(default), doc)
}

const fn text(name: &'static str, default: OptionDefault, doc: &'static str) -> OptionSpec {
    spec(name, OptionType::Text, default, doc)
}

const fn choice(
    name: &'static str,
    choices: &'static [&'static str],
    default: OptionDefault,
    doc: &'static str,
) -> OptionSpec {
    let ty = OptionType::Choice {
        choices,
        flags: false,
    };
    spec(name, ty, default, doc)
}

/// Re-ranking runs one image-encoder pass per candidate and query: a bound on the cost (of
/// `RERANK ... TOP` and `TRAIN ELIP`'s `top`).
pub const MAX_RERANK_TOP: u64 = 10_000;
/// The largest batch a training statement accepts (ELIP scores `batch_size` squared images).
pub const MAX_BATCH_SIZE: u64 = 65_536;
const MAX_EPOCHS: u64 = 1_000_000;
const POSITIVE: (f64, f64, bool, bool) = (0.0, f64::INFINITY, true, false);
const NON_NEGATIVE: (f64, f64, bool, bool) = (0.0, f64::INFINITY, false, false);

// The training loop's options, shared by FINETUNE and TRAIN ELIP (their defaults may differ).
const EPOCHS: OptionSpec = count(
    "epochs",
    (1, MAX_EPOCHS),
    OptionDefault::Count(5),
    "passes over the training rows",
);
const fn batch_size(default: u64) -> OptionSpec {
    count(
        "batch_size",
        (2, MAX_BATCH_SIZE),
        OptionDefault::Count(default),
        "pairs per optimiser step",
    )
}
const fn lr(default: f64) -> OptionSpec {
    number(
        "lr",
        POSITIVE,
        OptionDefault::Number(default),
        "peak learning rate of AdamW",
    )
}
const WEIGHT_DECAY: OptionSpec = number(
    "weight_decay",
    NON_NEGATIVE,
    OptionDefault::Number(0.2),
    "AdamW's decoupled weight decay, on matrices only",
);
const WARMUP_STEPS: OptionSpec = count(
    "warmup_steps",
    (0, u64::MAX),
    OptionDefault::Count(0),
    "steps of linear warmup before the cosine decay",
);
const CLIP_NORM: OptionSpec = number(
    "clip_norm",
    NON_NEGATIVE,
    OptionDefault::Number(1.0),
    "global gradient-norm clip (0 turns clipping off)",
);
const ACCUMULATION: OptionSpec = count(
    "accumulation",
    (1, MAX_BATCH_SIZE),
    OptionDefault::Count(1),
    "micro-batches per step",
);
const SEED: OptionSpec = count(
    "seed",
    (0, u64::MAX),
    OptionDefault::Count(0),
    "seed of shuffling and initialisation",
);
const PATIENCE: OptionSpec = count(
    "patience",
    (1, MAX_EPOCHS),
    OptionDefault::Count(2),
    "epochs without a better validation metric before stopping",
);
const fn metric(ranking: bool) -> OptionSpec {
    spec(
        "metric",
        OptionType::Metric { ranking },
        OptionDefault::Text("recall@1"),
        "validation metric, text to image",
    )
}
const PRECISION: OptionSpec = choice(
    "precision",
    &["fp32", "bf16"],
    OptionDefault::Absent("`'bf16'` on a GPU, `'fp32'` on the CPU"),
    "`'bf16'`: mixed precision (bf16 matrix products, f32 weights)",
);

/// `CREATE COLLECTION ... WITH (...)`.
pub const CREATE_COLLECTION: &[OptionSpec] = &[
    spec(
        "model",
        OptionType::ModelOrNull,
        OptionDefault::Absent("the default model, `mirante-shapes-clip`"),
        "the model that embeds rows and queries; NULL: none (EMBED adds one later)",
    ),
    text(
        "index",
        OptionDefault::Text("Flat"),
        "FAISS factory string of each segment's index",
    ),
];

/// `IMPORT INTO ... WITH (...)`.
pub const IMPORT: &[OptionSpec] = &[
    text(
        "image_column",
        OptionDefault::Absent(
            "the first of `file_name`, `image`, `image_path`, `path`, `filepath`, `file`",
        ),
        "the column naming or holding each row's image",
    ),
    text(
        "text_column",
        OptionDefault::Absent("the first of `text`, `caption`, `captions`, `sentences`"),
        "the column of captions (a string or a list of strings)",
    ),
    text(
        "split",
        OptionDefault::Absent("every split"),
        "keep only this split when the source has splits, else assign it to every row",
    ),
    text(
        "columns",
        OptionDefault::Absent("every scalar column"),
        "comma-separated metadata columns to keep",
    ),
    count(
        "limit",
        (0, u64::MAX),
        OptionDefault::Absent("every row"),
        "import the first N rows only",
    ),
    text(
        "image_embedding",
        OptionDefault::Absent("none"),
        "column of precomputed image vectors (with text_embedding and embedding_model)",
    ),
    text(
        "text_embedding",
        OptionDefault::Absent("none"),
        "column of precomputed caption vectors, one per caption",
    ),
    text(
        "embedding_model",
        OptionDefault::Absent("none"),
        "the name precomputed vectors are stored under",
    ),
];

/// `FINETUNE MODEL ... WITH (...)`.
pub const FINETUNE: &[OptionSpec] = &[
    EPOCHS,
    batch_size(64),
    lr(1e-5),
    WEIGHT_DECAY,
    WARMUP_STEPS,
    CLIP_NORM,
    ACCUMULATION,
    choice(
        "loss",
        &["infonce", "clip", "sigmoid", "siglip"],
        OptionDefault::Absent("the model family's (InfoNCE for CLIP, sigmoid for SigLIP)"),
        "contrastive loss",
    ),
    choice(
        "freeze",
        &["none", "vision", "text", "towers"],
        OptionDefault::Text("none"),
        "towers kept frozen (`'towers'`: only the projections train)",
    ),
    SEED,
    PATIENCE,
    metric(false),
    spec(
        "hard_negatives",
        OptionType::Choice {
            choices: &["false", "true", "epoch"],
            flags: true,
        },
        OptionDefault::Flag(false),
        "keep mutual nearest-neighbour pairs in one batch: mined once (true) or before every epoch ('epoch')",
    ),
    flag(
        "text_negatives",
        false,
        "add word-swapped captions as negative texts (NegCLIP)",
    ),
    PRECISION,
];

/// `TRAIN ELIP ... WITH (...)`.
pub const TRAIN_ELIP: &[OptionSpec] = &[
    EPOCHS,
    batch_size(16),
    lr(1e-3),
    WEIGHT_DECAY,
    WARMUP_STEPS,
    CLIP_NORM,
    ACCUMULATION,
    SEED,
    PATIENCE,
    metric(true),
    flag(
        "hard_negatives",
        true,
        "keep mutual nearest-neighbour pairs in one batch",
    ),
    PRECISION,
    count(
        "prompts",
        (1, 1024),
        OptionDefault::Count(10),
        "visual prompt tokens the mapper makes",
    ),
    count(
        "hidden",
        (1, MAX_BATCH_SIZE),
        OptionDefault::Absent("min(1024, the vision tower's width)"),
        "width of the mapper's hidden layers",
    ),
    flag(
        "deep",
        false,
        "new prompts before every layer of the vision tower",
    ),
    choice(
        "prompt_init",
        &["patch", "zero"],
        OptionDefault::Text("patch"),
        "prompts start at the mean patch token, or near zero (the reference's start)",
    ),
    number(
        "dropout",
        (0.0, 1.0, false, true),
        OptionDefault::Number(0.1),
        "dropout of prompt values while training",
    ),
    count(
        "top",
        (1, MAX_RERANK_TOP),
        OptionDefault::Count(20),
        "first-stage results re-ranked per validation caption",
    ),
    count(
        "negatives",
        (1, 1024),
        OptionDefault::Absent("none"),
        "per caption, the N images the backbone ranks highest, as extra negatives",
    ),
    number(
        "fusion",
        (0.0, 1.0, false, false),
        OptionDefault::Absent("tuned on the validation rows (1 without them)"),
        "weight of ELIP's score against the first stage's (1: ELIP alone)",
    ),
];

/// Every statement with options, as docs/query.md lists them.
pub const TABLES: [(&str, &[OptionSpec]); 4] = [
    ("CREATE COLLECTION", CREATE_COLLECTION),
    ("IMPORT", IMPORT),
    ("FINETUNE", FINETUNE),
    ("TRAIN ELIP", TRAIN_ELIP),
];

/// A statement's options, checked against its table.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundOptions {
    table: &'static [OptionSpec],
    values: Vec<(&'static str, OptionValue, Pos)>,
    /// The options as written, `(key, value)`, for lineage records.
    pub written: Vec<(String, String)>,
}

impl BoundOptions {
    /// Checks `options` against `table`.
    pub fn bind(options: &Options, table: &'static [OptionSpec]) -> Result<Self> {
        let mut values = Vec::with_capacity(options.0.len());
        let mut written = Vec::with_capacity(options.0.len());
        for item in &options.0 {
            let key = item.key.value.to_ascii_lowercase();
            let Some(spec) = table.iter().find(|s| s.name == key) else {
                let names = table.iter().map(|s| s.name);
                let hint = match closest(&key, names.clone()) {
                    Some(c) => format!("did you mean '{c}'?"),
                    None => format!(
                        "valid options are: {}",
                        names.collect::<Vec<_>>().join(", ")
                    ),
                };
                return Err(Error::bind(
                    format!("unknown option '{}'; {hint}", item.key.value),
                    item.key.pos,
                ));
            };
            let value = check(spec, &item.value).map_err(|message| {
                Error::bind(format!("option {}: {message}", spec.name), item.pos)
            })?;
            values.push((spec.name, value, item.pos));
            written.push((item.key.value.clone(), item.value.to_string()));
        }
        Ok(BoundOptions {
            table,
            values,
            written,
        })
    }

    fn spec(&self, name: &str) -> Option<&'static OptionSpec> {
        let found = self.table.iter().find(|s| s.name == name);
        debug_assert!(found.is_some(), "option {name} is not in its table");
        found
    }

    /// The value written for `name`, else its default.
    fn value(&self, name: &str) -> Option<OptionValue> {
        if let Some((_, v, _)) = self.values.iter().find(|(n, _, _)| *n == name) {
            return Some(v.clone());
        }
        match self.spec(name)?.default {
            OptionDefault::Absent(_) => None,
            OptionDefault::Count(n) => Some(OptionValue::Count(n)),
            OptionDefault::Number(x) => Some(OptionValue::Number(x)),
            OptionDefault::Flag(b) => Some(OptionValue::Flag(b)),
            OptionDefault::Text(s) => Some(OptionValue::Text(s.to_string())),
        }
    }

    /// Whether the statement wrote `name`.
    pub fn is_written(&self, name: &str) -> bool {
        self.values.iter().any(|(n, _, _)| *n == name)
    }

    /// Where the value of `name` was written (for errors found later).
    pub fn position(&self, name: &str) -> Option<Pos> {
        self.values
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, p)| *p)
    }

    pub fn count(&self, name: &str) -> Option<u64> {
        match self.value(name)? {
            OptionValue::Count(n) => Some(n),
            _ => None,
        }
    }

    /// A count that always has a value (its table gives a default).
    fn count_or_default(&self, name: &str) -> usize {
        self.count(name).unwrap_or(0) as usize
    }

    pub fn number(&self, name: &str) -> Option<f64> {
        match self.value(name)? {
            OptionValue::Number(x) => Some(x),
            _ => None,
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.value(name), Some(OptionValue::Flag(true)))
    }

    pub fn text(&self, name: &str) -> Option<String> {
        match self.value(name)? {
            OptionValue::Text(s) => Some(s),
            OptionValue::Flag(b) => Some(b.to_string()),
            _ => None,
        }
    }

    fn is_null(&self, name: &str) -> bool {
        matches!(self.value(name), Some(OptionValue::Null))
    }
}

/// Checks one written value against its option's type; the message says what was expected.
fn check(spec: &OptionSpec, value: &Literal) -> std::result::Result<OptionValue, String> {
    let expected = || format!("expects {}, got {value}", spec.ty.describe());
    match (&spec.ty, value) {
        (OptionType::Count { min, max }, Literal::Int(i)) => u64::try_from(*i)
            .ok()
            .filter(|n| (*min..=*max).contains(n))
            .map(OptionValue::Count)
            .ok_or_else(expected),
        (
            OptionType::Number {
                min,
                max,
                open_min,
                open_max,
            },
            Literal::Int(_) | Literal::Float(_),
        ) => {
            let x = match value {
                Literal::Int(i) => *i as f64,
                Literal::Float(f) => *f,
                _ => f64::NAN,
            };
            let above = if *open_min { x > *min } else { x >= *min };
            let below = if *open_max { x < *max } else { x <= *max };
            (x.is_finite() && above && below)
                .then_some(OptionValue::Number(x))
                .ok_or_else(expected)
        }
        (OptionType::Flag, Literal::Bool(b)) => Ok(OptionValue::Flag(*b)),
        (OptionType::Text | OptionType::ModelOrNull, Literal::String(s)) => {
            Ok(OptionValue::Text(s.clone()))
        }
        (OptionType::ModelOrNull, Literal::Null) => Ok(OptionValue::Null),
        (OptionType::Choice { flags: true, .. }, Literal::Bool(b)) => Ok(OptionValue::Flag(*b)),
        (OptionType::Choice { choices, .. }, Literal::String(s)) => {
            let lower = s.to_ascii_lowercase();
            if choices.contains(&lower.as_str()) {
                Ok(OptionValue::Text(lower))
            } else {
                let hint = closest(&lower, choices.iter().copied())
                    .map(|c| format!(" (did you mean '{c}'?)"))
                    .unwrap_or_default();
                Err(format!("{}{hint}", expected()))
            }
        }
        (OptionType::Metric { ranking }, Literal::String(s)) => {
            let m = s.parse::<EvalMetric>()?;
            if *ranking && m == EvalMetric::MeanSimilarity {
                return Err(expected());
            }
            Ok(OptionValue::Text(m.to_string()))
        }
        _ => Err(expected()),
    }
}

/// The options table of a statement as docs/query.md shows it.
pub fn markdown_table(table: &[OptionSpec]) -> String {
    let mut out = String::from("| option | takes | default | what it does |\n|---|---|---|---|\n");
    for s in table {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            s.name,
            s.ty.describe(),
            s.default,
            s.doc
        ));
    }
    out
}

/// `CREATE COLLECTION`'s model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    /// No `model` option: the default model.
    Default,
    /// `model = NULL`: rows are stored without embeddings.
    None,
    Named(String),
}

/// `CREATE COLLECTION ... WITH (...)`, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionOptions {
    pub model: ModelChoice,
    /// FAISS factory string.
    pub index: String,
}

impl CollectionOptions {
    pub(crate) fn from_bound(o: &BoundOptions) -> Self {
        CollectionOptions {
            model: match o.text("model") {
                Some(m) => ModelChoice::Named(m),
                None if o.is_null("model") => ModelChoice::None,
                None => ModelChoice::Default,
            },
            index: o.text("index").unwrap_or_else(|| "Flat".into()),
        }
    }
}

/// Where precomputed embeddings are, and which model made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingColumns {
    /// One vector per row.
    pub image: String,
    /// One vector per caption: a list of vectors (or one vector for a row with one caption).
    pub text: String,
    /// The name the vectors' spaces get (`EVALUATE ... USING MODEL` names them by it).
    pub model: String,
}

/// `IMPORT ... WITH (...)`, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    pub image_column: Option<String>,
    pub text_column: Option<String>,
    /// Keep only this split when the source has splits; otherwise assign it to every row.
    pub split: Option<String>,
    /// Metadata columns to keep (default: every scalar column).
    pub columns: Option<Vec<String>>,
    /// Import at most this many rows.
    pub limit: Option<usize>,
    /// Columns holding vectors computed elsewhere, stored instead of embedding the rows.
    pub embeddings: Option<EmbeddingColumns>,
}

impl ImportOptions {
    pub(crate) fn from_bound(o: &BoundOptions, at: Pos) -> Result<Self> {
        let embeddings = match (
            o.text("image_embedding"),
            o.text("text_embedding"),
            o.text("embedding_model"),
        ) {
            (None, None, None) => None,
            (Some(image), Some(text), Some(model)) => Some(EmbeddingColumns { image, text, model }),
            _ => {
                let pos = ["image_embedding", "text_embedding", "embedding_model"]
                    .iter()
                    .find_map(|n| o.position(n))
                    .unwrap_or(at);
                return Err(Error::bind(
                    "precomputed embeddings need all three options: image_embedding and \
                     text_embedding (the columns) and embedding_model (the name of the model \
                     that made them)",
                    pos,
                ));
            }
        };
        Ok(ImportOptions {
            image_column: o.text("image_column"),
            text_column: o.text("text_column"),
            split: o.text("split"),
            columns: o.text("columns").map(|c| {
                c.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            limit: o.count("limit").map(|n| n as usize),
            embeddings,
        })
    }
}

/// Which precision training runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionChoice {
    Fp32,
    Bf16,
}

/// The training loop's settings, shared by `FINETUNE` and `TRAIN ELIP`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingLoop {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    /// `None`: no clipping (`clip_norm = 0`).
    pub clip_norm: Option<f64>,
    pub accumulation: usize,
    pub seed: u64,
    pub patience: usize,
    pub metric: EvalMetric,
    /// `None`: the device's default.
    pub precision: Option<PrecisionChoice>,
    /// The options as written, for the model's lineage.
    pub written: Vec<(String, String)>,
}

impl TrainingLoop {
    fn from_bound(o: &BoundOptions) -> Self {
        TrainingLoop {
            epochs: o.count_or_default("epochs"),
            batch_size: o.count_or_default("batch_size"),
            lr: o.number("lr").unwrap_or(f64::NAN),
            weight_decay: o.number("weight_decay").unwrap_or(0.0),
            warmup_steps: o.count_or_default("warmup_steps"),
            clip_norm: o.number("clip_norm").filter(|c| *c > 0.0),
            accumulation: o.count_or_default("accumulation"),
            seed: o.count("seed").unwrap_or(0),
            patience: o.count_or_default("patience"),
            metric: o
                .text("metric")
                .and_then(|m| m.parse().ok())
                .unwrap_or(EvalMetric::Recall(1)),
            precision: o.text("precision").map(|p| match p.as_str() {
                "bf16" => PrecisionChoice::Bf16,
                _ => PrecisionChoice::Fp32,
            }),
            written: o.written.clone(),
        }
    }
}

/// `FINETUNE`'s loss override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossChoice {
    InfoNce,
    Sigmoid,
}

/// Towers `FINETUNE` keeps frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeChoice {
    None,
    Vision,
    Text,
    /// Both towers: only the projections (and the logit scale/bias) train.
    Towers,
}

/// When `FINETUNE` mines hard-negative pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mining {
    Off,
    /// Once, with the base model (through the collection's index when it holds its vectors).
    Once,
    /// Once with the base model, then again before every later epoch with the weights being
    /// trained, so the pairs stay confusable as the model learns to tell the first ones apart.
    EveryEpoch,
}

/// `FINETUNE ... WITH (...)`, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneOptions {
    pub training: TrainingLoop,
    pub loss: Option<LossChoice>,
    pub freeze: FreezeChoice,
    pub hard_negatives: Mining,
    /// Word-swapped captions as negative texts (NegCLIP).
    pub text_negatives: bool,
}

impl FinetuneOptions {
    pub(crate) fn from_bound(o: &BoundOptions) -> Self {
        FinetuneOptions {
            training: TrainingLoop::from_bound(o),
            loss: o.text("loss").map(|l| match l.as_str() {
                "sigmoid" | "siglip" => LossChoice::Sigmoid,
                _ => LossChoice::InfoNce,
            }),
            freeze: match o.text("freeze").as_deref() {
                Some("vision") => FreezeChoice::Vision,
                Some("text") => FreezeChoice::Text,
                Some("towers") => FreezeChoice::Towers,
                _ => FreezeChoice::None,
            },
            hard_negatives: match o.text("hard_negatives").as_deref() {
                Some("true") => Mining::Once,
                Some("epoch") => Mining::EveryEpoch,
                _ => Mining::Off,
            },
            text_negatives: o.flag("text_negatives"),
        }
    }
}

/// How ELIP's prompts start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptInit {
    /// At the mean patch token of their layer: the untrained mapper barely moves the ranking.
    Patch,
    /// Near zero, as the reference implementation starts.
    Zero,
}

/// `TRAIN ELIP ... WITH (...)`, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct ElipOptions {
    pub training: TrainingLoop,
    pub hard_negatives: bool,
    pub prompts: usize,
    /// `None`: min(1024, the vision tower's width).
    pub hidden: Option<usize>,
    pub deep: bool,
    pub prompt_init: PromptInit,
    pub dropout: f64,
    /// First-stage results re-ranked per validation caption.
    pub top: usize,
    /// Retrieved negatives per caption.
    pub negatives: Option<usize>,
    /// Fixed fusion weight; `None`: tuned on validation.
    pub fusion: Option<f64>,
}

impl ElipOptions {
    pub(crate) fn from_bound(o: &BoundOptions) -> Self {
        ElipOptions {
            training: TrainingLoop::from_bound(o),
            hard_negatives: o.flag("hard_negatives"),
            prompts: o.count_or_default("prompts"),
            hidden: o.count("hidden").map(|n| n as usize),
            deep: o.flag("deep"),
            prompt_init: match o.text("prompt_init").as_deref() {
                Some("zero") => PromptInit::Zero,
                _ => PromptInit::Patch,
            },
            dropout: o.number("dropout").unwrap_or(0.0),
            top: o.count_or_default("top"),
            negatives: o.count("negatives").map(|n| n as usize),
            fusion: o.number("fusion"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::{Name, OptionItem};

    fn options(pairs: &[(&str, Literal)]) -> Options {
        Options(
            pairs
                .iter()
                .enumerate()
                .map(|(i, (k, v))| OptionItem {
                    key: Name {
                        value: k.to_string(),
                        pos: Pos {
                            line: 1,
                            column: 10 * i as u64 + 1,
                        },
                    },
                    value: v.clone(),
                    pos: Pos {
                        line: 1,
                        column: 10 * i as u64 + 5,
                    },
                })
                .collect(),
        )
    }

    #[test]
    fn defaults_fill_what_is_not_written() {
        let o = BoundOptions::bind(&options(&[]), FINETUNE).unwrap();
        let f = FinetuneOptions::from_bound(&o);
        assert_eq!(f.training.epochs, 5);
        assert_eq!(f.training.batch_size, 64);
        assert_eq!(f.training.lr, 1e-5);
        assert_eq!(f.training.clip_norm, Some(1.0));
        assert_eq!(f.training.metric, EvalMetric::Recall(1));
        assert_eq!(f.hard_negatives, Mining::Off);
        let e = ElipOptions::from_bound(&BoundOptions::bind(&options(&[]), TRAIN_ELIP).unwrap());
        assert_eq!((e.training.lr, e.training.batch_size), (1e-3, 16));
        assert!(e.hard_negatives);
        assert_eq!((e.prompts, e.top, e.dropout), (10, 20, 0.1));
        assert_eq!((e.hidden, e.negatives, e.fusion), (None, None, None));
    }

    #[test]
    fn written_values_are_typed_and_checked() {
        let o = BoundOptions::bind(
            &options(&[
                ("EPOCHS", Literal::Int(3)),
                ("lr", Literal::Int(1)),
                ("hard_negatives", Literal::String("Epoch".into())),
                ("clip_norm", Literal::Int(0)),
                ("precision", Literal::String("bf16".into())),
            ]),
            FINETUNE,
        )
        .unwrap();
        let f = FinetuneOptions::from_bound(&o);
        assert_eq!((f.training.epochs, f.training.lr), (3, 1.0));
        assert_eq!(f.hard_negatives, Mining::EveryEpoch);
        assert_eq!(f.training.clip_norm, None);
        assert_eq!(f.training.precision, Some(PrecisionChoice::Bf16));
        assert_eq!(o.written[0], ("EPOCHS".to_string(), "3".to_string()));

        let err = |pairs: &[(&str, Literal)], table| {
            BoundOptions::bind(&options(pairs), table)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[("epochs", Literal::Int(0))], FINETUNE),
            "option epochs: expects a whole number from 1 to 1000000, got 0 (at line 1, column 5)"
        );
        assert_eq!(
            err(&[("lr", Literal::Float(-1.0))], FINETUNE),
            "option lr: expects a positive number, got -1.0 (at line 1, column 5)"
        );
        assert_eq!(
            err(&[("freeze", Literal::String("visoin".into()))], FINETUNE),
            "option freeze: expects one of 'none', 'vision', 'text', 'towers', got 'visoin' \
             (did you mean 'vision'?) (at line 1, column 5)"
        );
        assert_eq!(
            err(&[("epoch", Literal::Int(1))], FINETUNE),
            "unknown option 'epoch'; did you mean 'epochs'? (at line 1, column 1)"
        );
        assert!(
            err(
                &[("metric", Literal::String("mean_similarity".into()))],
                TRAIN_ELIP
            )
            .contains("a ranking metric")
        );
        assert!(err(&[("dropout", Literal::Int(1))], TRAIN_ELIP).contains("[0, 1)"));
        assert!(
            err(&[("loss", Literal::String("x".into()))], TRAIN_ELIP).contains("valid options")
        );
    }

    #[test]
    fn import_embeddings_need_all_three_columns() {
        let o = BoundOptions::bind(
            &options(&[("image_embedding", Literal::String("v".into()))]),
            IMPORT,
        )
        .unwrap();
        let e = ImportOptions::from_bound(&o, Pos::default()).unwrap_err();
        assert_eq!(e.pos(), Pos { line: 1, column: 5 });
        let c = CollectionOptions::from_bound(
            &BoundOptions::bind(&options(&[("model", Literal::Null)]), CREATE_COLLECTION).unwrap(),
        );
        assert_eq!(c.model, ModelChoice::None);
        assert_eq!(c.index, "Flat");
    }

    #[test]
    fn every_default_fits_its_type() {
        for (_, table) in TABLES {
            for spec in table {
                let lit = match spec.default {
                    OptionDefault::Absent(_) => continue,
                    OptionDefault::Count(n) => Literal::Int(n as i64),
                    OptionDefault::Number(x) => Literal::Float(x),
                    OptionDefault::Flag(b) => Literal::Bool(b),
                    OptionDefault::Text(s) => Literal::String(s.into()),
                };
                check(spec, &lit).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
            }
        }
    }
}
