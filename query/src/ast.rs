//! The statements of Mirante's language, as parsed (names not yet checked against a catalog).

use crate::error::Pos;

/// An identifier with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Name {
    pub value: String,
    pub pos: Pos,
}

/// A constant written in a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    /// `ARRAY['a', 'b']` or `['a', 'b']`, for several captions.
    List(Vec<Literal>),
}

impl Literal {
    pub fn type_name(&self) -> &'static str {
        match self {
            Literal::Null => "null",
            Literal::Bool(_) => "boolean",
            Literal::Int(_) => "integer",
            Literal::Float(_) => "float",
            Literal::String(_) => "string",
            Literal::List(_) => "list",
        }
    }
}

/// A file or folder a statement writes: `'<path>' [OVERWRITE]`. Without `OVERWRITE`, an
/// existing one is an error rather than replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPath {
    pub path: String,
    pub overwrite: bool,
}

impl std::fmt::Display for Literal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Literal::Null => f.write_str("NULL"),
            Literal::Bool(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::String(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Literal::List(items) => {
                let parts: Vec<String> = items.iter().map(Literal::to_string).collect();
                write!(f, "ARRAY[{}]", parts.join(", "))
            }
        }
    }
}

/// Comparison operators of predicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

/// A predicate or operand of a `WHERE` clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Column(Name),
    Literal(Literal, Pos),
    Compare {
        left: Box<Expr>,
        op: CmpOp,
        right: Box<Expr>,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: String,
        negated: bool,
        case_insensitive: bool,
    },
}

/// A metadata column declared by `CREATE COLLECTION name (col TYPE [NOT NULL], ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub name: Name,
    pub ty: ColumnType,
    pub nullable: bool,
}

/// Types a metadata column can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Int,
    Float,
    Bool,
}

/// `WITH (key = value, ...)`, as written; checked against the statement's table of
/// [`crate::options::OptionSpec`]s by the binder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options(pub Vec<OptionItem>);

/// One `key = value` of `WITH (...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionItem {
    pub key: Name,
    pub value: Literal,
    /// Where the value starts.
    pub pos: Pos,
}

/// What a `SEARCH` looks for. The statement writes text, an image path or a row; the library's
/// API also searches with encoded image bytes and with a vector computed elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchQuery {
    Text(String),
    /// A path to an image file.
    Image(String),
    /// The stored embedding of an existing row.
    Row(u64),
    /// An encoded image (PNG, JPEG, ...), preprocessed as a file with these bytes would be.
    ImageBytes(Vec<u8>),
    /// A query vector in the searched space (normalised before ranking).
    Vector(Vec<f32>),
}

impl SearchQuery {
    /// What a search ranks without `MATCH`: cross-modal for text (images) and image (captions)
    /// queries; `None` for a row or a vector, for which the engine ranks images.
    pub fn default_target(&self) -> Option<Target> {
        match self {
            SearchQuery::Text(_) => Some(Target::Images),
            SearchQuery::Image(_) | SearchQuery::ImageBytes(_) => Some(Target::Texts),
            SearchQuery::Row(_) | SearchQuery::Vector(_) => None,
        }
    }
}

/// Which side of the collection a search ranks: images (one item per row) or captions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Images,
    Texts,
}

/// `SELECT` projections.
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    All,
    Columns(Vec<Name>),
    CountStar,
}

/// What a training statement trains.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainingKind {
    /// `FINETUNE MODEL '<base>'`: a dual encoder, starting from the base model.
    Finetune { base: String },
    /// `TRAIN ELIP [USING MODEL '<backbone>']`: an ELIP re-ranker over a frozen backbone
    /// (`None`: the collection's active model).
    Elip { backbone: Option<String> },
}

/// `FINETUNE MODEL '<base>' ON c` or `TRAIN ELIP ON c [USING MODEL '<backbone>']`, then
/// `[WHERE ...] [VALIDATE WHERE ...] [WITH (...)] AS '<name>'`.
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    pub kind: TrainingKind,
    pub collection: Name,
    /// The training rows (all when `None`).
    pub filter: Option<Expr>,
    /// The validation rows (no validation when `None`).
    pub validate: Option<Expr>,
    pub options: Options,
    /// The new model's name in the registry.
    pub name: String,
}

/// A `SEARCH` statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub collection: Name,
    pub query: SearchQuery,
    pub target: Option<Target>,
    pub filter: Option<Expr>,
    pub model: Option<String>,
    pub limit: Option<u64>,
    /// `INTO 'results.html' [OVERWRITE]`: also write an HTML report.
    pub into: Option<OutputPath>,
    pub rerank: Option<Rerank>,
}

/// `RERANK WITH ELIP '<name>' [TOP k]`: the first stage's top k re-scored by an ELIP model.
#[derive(Debug, Clone, PartialEq)]
pub struct Rerank {
    pub elip: String,
    pub top: Option<u64>,
    /// The weight of ELIP's score against the first stage's; `None`: the model's own.
    pub fusion: Option<f64>,
    /// Where the clause starts, for errors about it.
    pub pos: Pos,
}

/// A retrieval-quality metric of `EVALUATE`; `Display` spells it as written (`recall@10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvalMetric {
    /// Fraction of queries with a relevant item among the first K.
    Recall(u32),
    /// Mean reciprocal rank of the first relevant item.
    Mrr,
    /// Normalised discounted cumulative gain of the first K, binary relevance.
    Ndcg(u32),
    /// Median rank of the first relevant item (a rank, not a fraction).
    MedianRank,
    /// Mean cosine of matching pairs (and, as a second column, of non-matching pairs).
    MeanSimilarity,
}

impl EvalMetric {
    /// What `EVALUATE ON c` computes.
    pub const DEFAULTS: [EvalMetric; 7] = [
        EvalMetric::Recall(1),
        EvalMetric::Recall(5),
        EvalMetric::Recall(10),
        EvalMetric::Mrr,
        EvalMetric::Ndcg(10),
        EvalMetric::MedianRank,
        EvalMetric::MeanSimilarity,
    ];

    /// The metric names `EVALUATE` knows, for messages.
    pub const SPELLINGS: &str = "recall@K, mrr, ndcg@K, median_rank, mean_similarity";
}

impl std::str::FromStr for EvalMetric {
    type Err = String;

    /// Parses a metric as written (`recall@10`, `mrr`, ...), case-insensitively; the error
    /// says what is wrong and what exists.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.to_lowercase();
        let cutoff = |k: &str| -> Result<u32, String> {
            match k.parse::<u32>() {
                Ok(k) if k > 0 => Ok(k),
                _ => Err(format!(
                    "the cutoff of {text} must be a whole number from 1, as in recall@10"
                )),
            }
        };
        match text.split_once('@') {
            Some(("recall", k)) => Ok(EvalMetric::Recall(cutoff(k)?)),
            Some(("ndcg", k)) => Ok(EvalMetric::Ndcg(cutoff(k)?)),
            None if text == "mrr" => Ok(EvalMetric::Mrr),
            None if text == "median_rank" => Ok(EvalMetric::MedianRank),
            None if text == "mean_similarity" => Ok(EvalMetric::MeanSimilarity),
            Some(("mrr" | "median_rank" | "mean_similarity", _)) => {
                Err(format!("{text}: this metric takes no cutoff"))
            }
            _ => {
                let name = text.split('@').next().unwrap_or("");
                let known = ["recall", "mrr", "ndcg", "median_rank", "mean_similarity"];
                let hint = crate::error::closest(name, known)
                    .map(|c| format!(" (did you mean {c}?)"))
                    .unwrap_or_default();
                Err(format!(
                    "unknown metric '{text}'{hint}; metrics are {}",
                    EvalMetric::SPELLINGS
                ))
            }
        }
    }
}

impl std::fmt::Display for EvalMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalMetric::Recall(k) => write!(f, "recall@{k}"),
            EvalMetric::Mrr => f.write_str("mrr"),
            EvalMetric::Ndcg(k) => write!(f, "ndcg@{k}"),
            EvalMetric::MedianRank => f.write_str("median_rank"),
            EvalMetric::MeanSimilarity => f.write_str("mean_similarity"),
        }
    }
}

/// Which way `EVALUATE` retrieves: captions as queries over images, or the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    TextToImage,
    ImageToText,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::TextToImage, Direction::ImageToText];
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::TextToImage => "text_to_image",
            Direction::ImageToText => "image_to_text",
        })
    }
}

/// An `EVALUATE` statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluate {
    pub collection: Name,
    /// Empty: [`EvalMetric::DEFAULTS`].
    pub metrics: Vec<EvalMetric>,
    pub filter: Option<Expr>,
    /// Empty: both.
    pub directions: Vec<Direction>,
    /// Empty: the collection's active model.
    pub models: Vec<String>,
    /// `USING INDEX`: rank through the collection's search (ANN index) instead of exactly.
    pub use_index: bool,
    /// `INTO 'report.html' [OVERWRITE]`.
    pub into: Option<OutputPath>,
    pub rerank: Option<Rerank>,
}

/// One statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateCollection {
        name: Name,
        if_not_exists: bool,
        columns: Vec<ColumnSpec>,
        options: Options,
    },
    DropCollection {
        name: Name,
        if_exists: bool,
    },
    ShowCollections,
    ShowModels,
    Describe {
        name: Name,
    },
    Import {
        collection: Name,
        source: String,
        options: Options,
        /// `ON ERROR SKIP`: skip bad rows and report them instead of failing.
        skip_errors: bool,
    },
    Insert {
        collection: Name,
        columns: Vec<Name>,
        rows: Vec<Vec<(Literal, Pos)>>,
    },
    Select {
        collection: Name,
        projection: Projection,
        filter: Option<Expr>,
        limit: Option<u64>,
        offset: Option<u64>,
    },
    Delete {
        collection: Name,
        filter: Option<Expr>,
    },
    Search(Search),
    Evaluate(Evaluate),
    /// `FINETUNE MODEL ...` or `TRAIN ELIP ...`: trains a model of the registry.
    Train(Training),
    /// `DROP MODEL '<name>'`: removes a fine-tuned model from the database's registry.
    DropModel {
        name: String,
    },
    /// `EXPORT MODEL '<name>' TO '<folder>' [OVERWRITE]`: copies a registry model out (Hugging
    /// Face layout).
    ExportModel {
        name: String,
        folder: OutputPath,
    },
    CreateIndex {
        collection: Name,
        factory: String,
    },
    Embed {
        collection: Name,
        model: Option<String>,
    },
    /// `REEMBED c USING MODEL 'm'`: embeds every segment with `m` and switches the collection
    /// to it in one commit.
    Reembed {
        collection: Name,
        model: String,
    },
    /// `ALTER COLLECTION c SET MODEL 'm'`: switches back (or forth) to a model whose vectors
    /// every segment already holds.
    SetModel {
        collection: Name,
        model: String,
    },
    Compact {
        collection: Name,
    },
    Vacuum {
        keep_versions: Option<u64>,
    },
    /// `RESTORE VERSION n`: commits retained version `n` again (an undo of later commits), and
    /// accepts the fallback when newer manifests are damaged.
    Restore {
        version: u64,
    },
    Explain(Box<Statement>),
}
