//! The binder: checks a parsed statement against a [`Catalog`] (collections and their columns),
//! resolves column names to [`ColumnRef`]s, type-checks constants, fills in defaults, and
//! returns a [`Plan`] the engine executes. Unknown names get the closest existing one as a hint.

use crate::ast::*;
use crate::error::{Error, Pos, Result, suggestion};
pub use crate::options::MAX_RERANK_TOP;
use crate::options::{
    self, BoundOptions, CollectionOptions, ElipOptions, FinetuneOptions, ImportOptions,
    TrainingLoop,
};

/// Results a `SEARCH` returns when it names no `LIMIT`.
pub const DEFAULT_SEARCH_LIMIT: u64 = 10;
/// The largest `LIMIT` a search accepts.
pub const MAX_SEARCH_LIMIT: u64 = 100_000;
/// First-stage results `RERANK WITH ELIP` re-scores when `TOP` is not given (the paper's K on
/// COCO).
pub const DEFAULT_RERANK_TOP: u64 = 100;

/// What the binder needs to know about the database.
pub trait Catalog {
    fn collection_names(&self) -> Vec<String>;
    /// Columns of a collection, built-in ones first; `None` when it does not exist.
    fn columns(&self, collection: &str) -> Option<Vec<ColumnInfo>>;
}

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub column: ColumnRef,
    pub kind: ColumnKind,
    pub nullable: bool,
}

/// Which value of a row a column names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnRef {
    Id,
    /// The image's source path or URI.
    Image,
    /// The row's captions (a list; predicates hold when any caption satisfies them).
    Text,
    Split,
    /// A metadata column by schema position.
    Meta(usize),
}

/// Value types of columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Int,
    Float,
    String,
    Bool,
    /// Several strings (captions).
    StringList,
}

impl ColumnKind {
    fn describe(self) -> &'static str {
        match self {
            ColumnKind::Int => "an integer",
            ColumnKind::Float => "a number",
            ColumnKind::String => "a string",
            ColumnKind::Bool => "a boolean",
            ColumnKind::StringList => "a string or a list of strings",
        }
    }

    /// Whether a constant fits this column (nulls are checked separately).
    fn accepts(self, lit: &Literal) -> bool {
        match (self, lit) {
            (ColumnKind::Int, Literal::Int(_)) => true,
            (ColumnKind::Float, Literal::Int(_) | Literal::Float(_)) => true,
            (ColumnKind::String, Literal::String(_)) => true,
            (ColumnKind::Bool, Literal::Bool(_)) => true,
            (ColumnKind::StringList, Literal::String(_)) => true,
            (ColumnKind::StringList, Literal::List(items)) => {
                items.iter().all(|i| matches!(i, Literal::String(_)))
            }
            _ => false,
        }
    }
}

/// A bound `WHERE` predicate: a column on one side, constants on the other.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    Compare {
        column: ColumnRef,
        op: CmpOp,
        value: Literal,
    },
    And(Box<Predicate>, Box<Predicate>),
    Or(Box<Predicate>, Box<Predicate>),
    Not(Box<Predicate>),
    IsNull {
        column: ColumnRef,
        negated: bool,
    },
    InList {
        column: ColumnRef,
        values: Vec<Literal>,
        /// The values sorted, when all are strings, so a row is looked up by binary search
        /// (a list of thousands of ids, as an upsert by id writes, stays cheap per row).
        sorted_strings: Option<Vec<String>>,
        negated: bool,
    },
    Between {
        column: ColumnRef,
        low: Literal,
        high: Literal,
        negated: bool,
    },
    Like {
        column: ColumnRef,
        pattern: String,
        negated: bool,
        case_insensitive: bool,
    },
}

impl Predicate {
    /// The predicate as SQL text, with `name` spelling column references.
    pub fn to_sql(&self, name: &dyn Fn(ColumnRef) -> String) -> String {
        let not = |n: bool| if n { "NOT " } else { "" };
        match self {
            Predicate::Compare { column, op, value } => {
                let op = match op {
                    CmpOp::Eq => "=",
                    CmpOp::NotEq => "<>",
                    CmpOp::Lt => "<",
                    CmpOp::LtEq => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::GtEq => ">=",
                };
                format!("{} {op} {value}", name(*column))
            }
            Predicate::And(a, b) => format!("({} AND {})", a.to_sql(name), b.to_sql(name)),
            Predicate::Or(a, b) => format!("({} OR {})", a.to_sql(name), b.to_sql(name)),
            Predicate::Not(a) => format!("NOT {}", a.to_sql(name)),
            Predicate::IsNull { column, negated } => {
                format!("{} IS {}NULL", name(*column), not(*negated))
            }
            Predicate::InList {
                column,
                values,
                negated,
                ..
            } => format!(
                "{} {}IN ({})",
                name(*column),
                not(*negated),
                values
                    .iter()
                    .map(Literal::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Predicate::Between {
                column,
                low,
                high,
                negated,
            } => format!(
                "{} {}BETWEEN {low} AND {high}",
                name(*column),
                not(*negated)
            ),
            Predicate::Like {
                column,
                pattern,
                negated,
                case_insensitive,
            } => format!(
                "{} {}{} {}",
                name(*column),
                not(*negated),
                if *case_insensitive { "ILIKE" } else { "LIKE" },
                Literal::String(pattern.clone())
            ),
        }
    }
}

/// A bound `SEARCH`.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    pub collection: String,
    pub query: SearchQuery,
    /// Resolved for text (images) and image (captions) queries; for `BY ROW` without `MATCH`
    /// the engine picks by what the row holds.
    pub target: Option<Target>,
    pub filter: Option<Predicate>,
    pub model: Option<String>,
    pub limit: u64,
    pub into: Option<OutputPath>,
    pub rerank: Option<RerankPlan>,
}

/// A bound `RERANK WITH ELIP '<elip>' TOP <top>`.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankPlan {
    pub elip: String,
    pub top: u64,
    /// Overrides the model's fusion weight (1: ELIP's score alone).
    pub fusion: Option<f64>,
}

/// A bound `EVALUATE`.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluatePlan {
    pub collection: String,
    /// In the order written (defaults filled in).
    pub metrics: Vec<EvalMetric>,
    /// Restricts queries and gallery alike (typically `split = 'test'`).
    pub filter: Option<Predicate>,
    /// In the order written (both by default).
    pub directions: Vec<Direction>,
    /// Empty: the collection's active model.
    pub models: Vec<String>,
    /// Rank through the search path (ANN index) and compare with exact ranks.
    pub use_index: bool,
    pub into: Option<OutputPath>,
    /// Text-to-image ranks re-ranked by ELIP, reported beside the first stage's.
    pub rerank: Option<RerankPlan>,
}

/// What a training statement trains, bound.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainKind {
    /// `FINETUNE MODEL '<base>'`.
    Finetune {
        base: String,
        options: FinetuneOptions,
    },
    /// `TRAIN ELIP [USING MODEL '<backbone>']` (`None`: the collection's active model).
    Elip {
        backbone: Option<String>,
        options: ElipOptions,
    },
}

/// A bound `FINETUNE` or `TRAIN ELIP`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPlan {
    pub kind: TrainKind,
    pub collection: String,
    /// The training rows (all when `None`).
    pub filter: Option<Predicate>,
    /// The validation rows (no validation when `None`).
    pub validate: Option<Predicate>,
    /// The new model's name in the registry.
    pub name: String,
}

impl TrainPlan {
    /// The loop settings both kinds share.
    pub fn training(&self) -> &TrainingLoop {
        match &self.kind {
            TrainKind::Finetune { options, .. } => &options.training,
            TrainKind::Elip { options, .. } => &options.training,
        }
    }
}

/// What `SELECT` returns.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectList {
    Columns(Vec<(String, ColumnRef)>),
    CountStar,
}

/// A metadata column of `CREATE COLLECTION`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPlan {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
}

/// A bound statement, ready for the engine: names checked against the catalog, options typed,
/// defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Search(SearchPlan),
    Evaluate(EvaluatePlan),
    Train(TrainPlan),
    Select {
        collection: String,
        list: SelectList,
        filter: Option<Predicate>,
        limit: Option<u64>,
        offset: u64,
    },
    Delete {
        collection: String,
        filter: Option<Predicate>,
    },
    Insert {
        collection: String,
        columns: Vec<(String, ColumnRef)>,
        rows: Vec<Vec<Literal>>,
    },
    Import {
        collection: String,
        source: String,
        options: ImportOptions,
        /// `ON ERROR SKIP`.
        skip_errors: bool,
    },
    CreateCollection {
        name: String,
        /// `IF NOT EXISTS` and the collection exists: nothing to do.
        exists: bool,
        columns: Vec<ColumnPlan>,
        options: CollectionOptions,
    },
    /// `DROP COLLECTION`; `exists` false only with `IF EXISTS`.
    DropCollection {
        name: String,
        exists: bool,
    },
    ShowCollections,
    ShowModels,
    Describe {
        collection: String,
    },
    DropModel {
        name: String,
    },
    ExportModel {
        name: String,
        folder: OutputPath,
    },
    CreateIndex {
        collection: String,
        factory: String,
    },
    /// `EMBED` (`model` `None`: the collection's own).
    Embed {
        collection: String,
        model: Option<String>,
    },
    Reembed {
        collection: String,
        model: String,
    },
    SetModel {
        collection: String,
        model: String,
    },
    Compact {
        collection: String,
    },
    Vacuum {
        keep_versions: u64,
    },
    Restore {
        version: u64,
    },
    Explain(Box<Plan>),
}

impl Plan {
    /// Whether running the plan changes the database or writes a file (what a read-only
    /// connection refuses). SEARCH and EVALUATE write only with `INTO` (EVALUATE's record in
    /// `mirante_evaluations` is left out on a read-only connection); EXPLAIN runs nothing.
    pub fn writes(&self) -> bool {
        match self {
            Plan::Search(SearchPlan { into, .. }) | Plan::Evaluate(EvaluatePlan { into, .. }) => {
                into.is_some()
            }
            Plan::Select { .. }
            | Plan::ShowCollections
            | Plan::ShowModels
            | Plan::Describe { .. }
            | Plan::Explain(_) => false,
            Plan::Train(_)
            | Plan::Delete { .. }
            | Plan::Insert { .. }
            | Plan::Import { .. }
            | Plan::CreateCollection { .. }
            | Plan::DropCollection { .. }
            | Plan::DropModel { .. }
            | Plan::ExportModel { .. }
            | Plan::CreateIndex { .. }
            | Plan::Embed { .. }
            | Plan::Reembed { .. }
            | Plan::SetModel { .. }
            | Plan::Compact { .. }
            | Plan::Vacuum { .. }
            | Plan::Restore { .. } => true,
        }
    }
}

/// `TOP` defaulted and bounded.
fn rerank_plan(r: Rerank) -> Result<RerankPlan> {
    let top = r.top.unwrap_or(DEFAULT_RERANK_TOP);
    if !(1..=MAX_RERANK_TOP).contains(&top) {
        return Err(Error::bind(
            format!("TOP {top} is outside 1..={MAX_RERANK_TOP}"),
            r.pos,
        ));
    }
    Ok(RerankPlan {
        elip: r.elip,
        top,
        fusion: r.fusion,
    })
}

/// Binds one statement.
pub fn bind(stmt: Statement, catalog: &dyn Catalog) -> Result<Plan> {
    Binder { catalog }.bind(stmt)
}

struct Binder<'c> {
    catalog: &'c dyn Catalog,
}

impl Binder<'_> {
    fn bind(&self, stmt: Statement) -> Result<Plan> {
        Ok(match stmt {
            Statement::Search(s) => {
                let columns = self.collection(&s.collection)?;
                let target = s.target.or(s.query.default_target());
                let limit = s.limit.unwrap_or(DEFAULT_SEARCH_LIMIT);
                if limit > MAX_SEARCH_LIMIT {
                    return Err(Error::bind(
                        format!("LIMIT {limit} is above the maximum of {MAX_SEARCH_LIMIT}"),
                        s.collection.pos,
                    ));
                }
                let written = s.rerank.as_ref().map(|r| r.pos);
                let rerank = s.rerank.map(rerank_plan).transpose()?;
                if let (Some(r), Some(pos)) = (&rerank, written) {
                    if !matches!(s.query, SearchQuery::Text(_)) || target != Some(Target::Images) {
                        return Err(Error::bind(
                            "RERANK WITH ELIP re-ranks images for a text query: \
                             SEARCH <collection> BY TEXT '...' RERANK WITH ELIP '<name>'",
                            pos,
                        ));
                    }
                    if limit > r.top {
                        return Err(Error::bind(
                            format!(
                                "LIMIT {limit} is above TOP {}: re-ranking orders the first {} \
                                 results only",
                                r.top, r.top
                            ),
                            pos,
                        ));
                    }
                }
                Plan::Search(SearchPlan {
                    collection: s.collection.value,
                    query: s.query,
                    target,
                    filter: s.filter.map(|f| predicate(&f, &columns)).transpose()?,
                    model: s.model,
                    limit,
                    into: s.into,
                    rerank,
                })
            }
            Statement::Evaluate(e) => {
                let columns = self.collection(&e.collection)?;
                if let Some(r) = &e.rerank
                    && e.directions == [Direction::ImageToText]
                {
                    return Err(Error::bind(
                        "RERANK WITH ELIP re-ranks images for text queries: it needs the \
                         text_to_image direction",
                        r.pos,
                    ));
                }
                Plan::Evaluate(EvaluatePlan {
                    collection: e.collection.value,
                    metrics: if e.metrics.is_empty() {
                        EvalMetric::DEFAULTS.to_vec()
                    } else {
                        e.metrics
                    },
                    filter: e.filter.map(|f| predicate(&f, &columns)).transpose()?,
                    directions: if e.directions.is_empty() {
                        Direction::BOTH.to_vec()
                    } else {
                        e.directions
                    },
                    models: e.models,
                    use_index: e.use_index,
                    into: e.into,
                    rerank: e.rerank.map(rerank_plan).transpose()?,
                })
            }
            Statement::Train(t) => {
                let columns = self.collection(&t.collection)?;
                let kind = match t.kind {
                    TrainingKind::Finetune { base } => TrainKind::Finetune {
                        base,
                        options: FinetuneOptions::from_bound(&BoundOptions::bind(
                            &t.options,
                            options::FINETUNE,
                        )?),
                    },
                    TrainingKind::Elip { backbone } => TrainKind::Elip {
                        backbone,
                        options: ElipOptions::from_bound(&BoundOptions::bind(
                            &t.options,
                            options::TRAIN_ELIP,
                        )?),
                    },
                };
                Plan::Train(TrainPlan {
                    kind,
                    collection: t.collection.value,
                    filter: t.filter.map(|f| predicate(&f, &columns)).transpose()?,
                    validate: t.validate.map(|f| predicate(&f, &columns)).transpose()?,
                    name: t.name,
                })
            }
            Statement::Select {
                collection,
                projection,
                filter,
                limit,
                offset,
            } => {
                let columns = self.collection(&collection)?;
                let list = match projection {
                    Projection::All => SelectList::Columns(
                        columns.iter().map(|c| (c.name.clone(), c.column)).collect(),
                    ),
                    Projection::CountStar => SelectList::CountStar,
                    Projection::Columns(names) => SelectList::Columns(
                        names
                            .iter()
                            .map(|n| Ok((n.value.clone(), column(n, &columns)?.column)))
                            .collect::<Result<_>>()?,
                    ),
                };
                Plan::Select {
                    collection: collection.value,
                    list,
                    filter: filter.map(|f| predicate(&f, &columns)).transpose()?,
                    limit,
                    offset: offset.unwrap_or(0),
                }
            }
            Statement::Delete { collection, filter } => {
                let columns = self.collection(&collection)?;
                Plan::Delete {
                    collection: collection.value,
                    filter: filter.map(|f| predicate(&f, &columns)).transpose()?,
                }
            }
            Statement::Insert {
                collection,
                columns: names,
                rows,
            } => self.insert(collection, names, rows)?,
            Statement::Explain(inner) => Plan::Explain(Box::new(self.bind(*inner)?)),
            Statement::Import {
                collection,
                source,
                options,
                skip_errors,
            } => {
                self.collection(&collection)?;
                let bound = BoundOptions::bind(&options, options::IMPORT)?;
                Plan::Import {
                    source,
                    options: ImportOptions::from_bound(&bound, collection.pos)?,
                    collection: collection.value,
                    skip_errors,
                }
            }
            Statement::CreateCollection {
                name,
                if_not_exists,
                columns,
                options,
            } => {
                let exists = self.catalog.columns(&name.value).is_some();
                if exists && !if_not_exists {
                    return Err(Error::bind(
                        format!(
                            "collection '{}' already exists (use IF NOT EXISTS to accept that)",
                            name.value
                        ),
                        name.pos,
                    ));
                }
                let bound = BoundOptions::bind(&options, options::CREATE_COLLECTION)?;
                Plan::CreateCollection {
                    name: name.value,
                    exists,
                    columns: columns
                        .into_iter()
                        .map(|c| ColumnPlan {
                            name: c.name.value,
                            ty: c.ty,
                            nullable: c.nullable,
                        })
                        .collect(),
                    options: CollectionOptions::from_bound(&bound),
                }
            }
            Statement::DropCollection { name, if_exists } => {
                let exists = self.catalog.columns(&name.value).is_some();
                if !if_exists {
                    self.collection(&name)?;
                }
                Plan::DropCollection {
                    name: name.value,
                    exists,
                }
            }
            Statement::ShowCollections => Plan::ShowCollections,
            Statement::ShowModels => Plan::ShowModels,
            Statement::Describe { name } => Plan::Describe {
                collection: self.existing(name)?,
            },
            Statement::DropModel { name } => Plan::DropModel { name },
            Statement::ExportModel { name, folder } => Plan::ExportModel { name, folder },
            Statement::CreateIndex {
                collection,
                factory,
            } => Plan::CreateIndex {
                collection: self.existing(collection)?,
                factory,
            },
            Statement::Embed { collection, model } => Plan::Embed {
                collection: self.existing(collection)?,
                model,
            },
            Statement::Reembed { collection, model } => Plan::Reembed {
                collection: self.existing(collection)?,
                model,
            },
            Statement::SetModel { collection, model } => Plan::SetModel {
                collection: self.existing(collection)?,
                model,
            },
            Statement::Compact { collection } => Plan::Compact {
                collection: self.existing(collection)?,
            },
            Statement::Vacuum { keep_versions } => Plan::Vacuum {
                keep_versions: keep_versions.unwrap_or(1),
            },
            Statement::Restore { version } => Plan::Restore { version },
        })
    }

    /// The name of an existing collection.
    fn existing(&self, name: Name) -> Result<String> {
        self.collection(&name)?;
        Ok(name.value)
    }

    fn collection(&self, name: &Name) -> Result<Vec<ColumnInfo>> {
        self.catalog.columns(&name.value).ok_or_else(|| {
            let names = self.catalog.collection_names();
            Error::bind(
                format!(
                    "collection '{}' does not exist{}",
                    name.value,
                    suggestion(&name.value, "collection", names.iter().map(String::as_str))
                ),
                name.pos,
            )
        })
    }

    fn insert(
        &self,
        collection: Name,
        names: Vec<Name>,
        rows: Vec<Vec<(Literal, Pos)>>,
    ) -> Result<Plan> {
        let columns = self.collection(&collection)?;
        let mut bound: Vec<(&ColumnInfo, &Name)> = Vec::new();
        for n in &names {
            let info = column(n, &columns)?;
            if info.column == ColumnRef::Id {
                return Err(Error::bind(
                    "'id' is assigned by Mirante and cannot be inserted",
                    n.pos,
                ));
            }
            if bound.iter().any(|(c, _)| c.column == info.column) {
                return Err(Error::bind(
                    format!("column '{}' is named twice", n.value),
                    n.pos,
                ));
            }
            bound.push((info, n));
        }
        for c in columns
            .iter()
            .filter(|c| !c.nullable && c.column != ColumnRef::Id)
        {
            if !bound.iter().any(|(b, _)| b.column == c.column) {
                return Err(Error::bind(
                    format!("column '{}' is NOT NULL and must be given", c.name),
                    collection.pos,
                ));
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(row.len());
            for ((lit, at), (info, _)) in row.into_iter().zip(&bound) {
                let ok = match lit {
                    Literal::Null => info.nullable,
                    ref l => info.kind.accepts(l),
                };
                if !ok {
                    return Err(Error::bind(
                        format!(
                            "column '{}' expects {}{}, got {}",
                            info.name,
                            info.kind.describe(),
                            if info.nullable { " or NULL" } else { "" },
                            lit.type_name()
                        ),
                        at,
                    ));
                }
                values.push(lit);
            }
            out.push(values);
        }
        Ok(Plan::Insert {
            collection: collection.value,
            columns: bound
                .iter()
                .map(|(c, _)| (c.name.clone(), c.column))
                .collect(),
            rows: out,
        })
    }
}

/// Binds a standalone predicate (see [`crate::parse_predicate`]) against a collection.
pub fn bind_predicate(e: &Expr, collection: &str, catalog: &dyn Catalog) -> Result<Predicate> {
    let name = Name {
        value: collection.to_string(),
        pos: Pos::default(),
    };
    let columns = Binder { catalog }.collection(&name)?;
    predicate(e, &columns)
}

fn column<'c>(name: &Name, columns: &'c [ColumnInfo]) -> Result<&'c ColumnInfo> {
    columns
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(&name.value))
        .ok_or_else(|| {
            Error::bind(
                format!(
                    "column '{}' does not exist{}",
                    name.value,
                    suggestion(
                        &name.value,
                        "column",
                        columns.iter().map(|c| c.name.as_str())
                    )
                ),
                name.pos,
            )
        })
}

fn expr_pos(e: &Expr) -> Pos {
    match e {
        Expr::Column(n) => n.pos,
        Expr::Literal(_, p) => *p,
        Expr::Compare { left, .. } => expr_pos(left),
        Expr::And(l, _) | Expr::Or(l, _) => expr_pos(l),
        Expr::Not(x) => expr_pos(x),
        Expr::IsNull { expr, .. }
        | Expr::InList { expr, .. }
        | Expr::Between { expr, .. }
        | Expr::Like { expr, .. } => expr_pos(expr),
    }
}

/// A column operand.
fn column_operand<'c>(e: &Expr, columns: &'c [ColumnInfo]) -> Result<&'c ColumnInfo> {
    match e {
        Expr::Column(n) => column(n, columns),
        other => Err(Error::bind("expected a column name here", expr_pos(other))),
    }
}

/// A constant operand that fits `info`.
fn constant(e: &Expr, info: &ColumnInfo) -> Result<Literal> {
    let Expr::Literal(lit, at) = e else {
        return Err(Error::bind(
            "expected a constant here (comparing two columns is not supported)",
            expr_pos(e),
        ));
    };
    if *lit == Literal::Null {
        return Err(Error::bind(
            format!(
                "comparing with NULL is never true; write {} IS NULL",
                info.name
            ),
            *at,
        ));
    }
    // A predicate on captions compares single strings.
    let kind = match info.kind {
        ColumnKind::StringList => ColumnKind::String,
        k => k,
    };
    if !kind.accepts(lit) {
        return Err(Error::bind(
            format!(
                "column '{}' holds {}, but this is {}",
                info.name,
                kind.describe(),
                lit.type_name()
            ),
            *at,
        ));
    }
    Ok(lit.clone())
}

fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::LtEq => CmpOp::GtEq,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::GtEq => CmpOp::LtEq,
        other => other,
    }
}

fn predicate(e: &Expr, columns: &[ColumnInfo]) -> Result<Predicate> {
    let p = |e: &Expr| predicate(e, columns).map(Box::new);
    Ok(match e {
        Expr::And(l, r) => Predicate::And(p(l)?, p(r)?),
        Expr::Or(l, r) => Predicate::Or(p(l)?, p(r)?),
        Expr::Not(x) => Predicate::Not(p(x)?),
        Expr::Compare { left, op, right } => {
            let (col, lit, op) = match (&**left, &**right) {
                (Expr::Literal(..), r) => (r, &**left, flip(*op)),
                (l, r) => (l, r, *op),
            };
            let info = column_operand(col, columns)?;
            Predicate::Compare {
                column: info.column,
                op,
                value: constant(lit, info)?,
            }
        }
        Expr::IsNull { expr, negated } => Predicate::IsNull {
            column: column_operand(expr, columns)?.column,
            negated: *negated,
        },
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let info = column_operand(expr, columns)?;
            let values: Vec<Literal> = list
                .iter()
                .map(|x| constant(x, info))
                .collect::<Result<_>>()?;
            let sorted_strings = values
                .iter()
                .map(|v| match v {
                    Literal::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<String>>>()
                .map(|mut strings| {
                    strings.sort_unstable();
                    strings
                });
            Predicate::InList {
                column: info.column,
                values,
                sorted_strings,
                negated: *negated,
            }
        }
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => {
            let info = column_operand(expr, columns)?;
            Predicate::Between {
                column: info.column,
                low: constant(low, info)?,
                high: constant(high, info)?,
                negated: *negated,
            }
        }
        Expr::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
        } => {
            let info = column_operand(expr, columns)?;
            if !matches!(info.kind, ColumnKind::String | ColumnKind::StringList) {
                return Err(Error::bind(
                    format!("LIKE needs a string column; '{}' is not one", info.name),
                    expr_pos(expr),
                ));
            }
            Predicate::Like {
                column: info.column,
                pattern: pattern.clone(),
                negated: *negated,
                case_insensitive: *case_insensitive,
            }
        }
        Expr::Column(n) => {
            let info = column(n, columns)?;
            if info.kind != ColumnKind::Bool {
                return Err(Error::bind(
                    format!(
                        "'{}' is not a boolean column; compare it with a value",
                        n.value
                    ),
                    n.pos,
                ));
            }
            Predicate::Compare {
                column: info.column,
                op: CmpOp::Eq,
                value: Literal::Bool(true),
            }
        }
        Expr::Literal(_, at) => {
            return Err(Error::bind(
                "a constant alone is not a condition; compare a column with it",
                *at,
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    struct TestCatalog;

    impl Catalog for TestCatalog {
        fn collection_names(&self) -> Vec<String> {
            vec!["images".into(), "paintings".into()]
        }

        fn columns(&self, collection: &str) -> Option<Vec<ColumnInfo>> {
            if !["images", "paintings"].contains(&collection) {
                return None;
            }
            let c = |name: &str, column, kind, nullable| ColumnInfo {
                name: name.into(),
                column,
                kind,
                nullable,
            };
            Some(vec![
                c("id", ColumnRef::Id, ColumnKind::Int, false),
                c("image", ColumnRef::Image, ColumnKind::String, true),
                c("text", ColumnRef::Text, ColumnKind::StringList, true),
                c("split", ColumnRef::Split, ColumnKind::String, true),
                c("year", ColumnRef::Meta(0), ColumnKind::Int, true),
                c("artist", ColumnRef::Meta(1), ColumnKind::String, false),
            ])
        }
    }

    fn bind_one(sql: &str) -> Result<Plan> {
        bind(parse(sql)?.remove(0), &TestCatalog)
    }

    #[test]
    fn unknown_names_suggest_the_closest() {
        let e = bind_one("SEARCH imagse BY TEXT 'x'").unwrap_err();
        assert_eq!(
            e.to_string(),
            "collection 'imagse' does not exist; did you mean 'images'? (at line 1, column 8)"
        );
        let e = bind_one("SELECT * FROM images WHERE yaer > 3").unwrap_err();
        assert!(e.to_string().contains("did you mean 'year'?"), "{e}");
    }

    #[test]
    fn search_defaults_are_cross_modal() {
        let Plan::Search(s) = bind_one("SEARCH images BY TEXT 'a dog'").unwrap() else {
            panic!()
        };
        assert_eq!((s.target, s.limit), (Some(Target::Images), 10));
        let Plan::Search(s) = bind_one("SEARCH images BY IMAGE 'x.jpg' LIMIT 3").unwrap() else {
            panic!()
        };
        assert_eq!(s.target, Some(Target::Texts));
    }

    #[test]
    fn predicates_are_type_checked_and_normalised() {
        let Plan::Select { filter, .. } =
            bind_one("SELECT * FROM images WHERE 2000 < year").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            filter,
            Some(Predicate::Compare {
                column: ColumnRef::Meta(0),
                op: CmpOp::Gt,
                value: Literal::Int(2000)
            })
        );
        let e = bind_one("SELECT * FROM images WHERE year = 'old'").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("column 'year' holds an integer, but this is string"),
            "{e}"
        );
        assert!(
            bind_one("DELETE FROM images WHERE artist = NULL")
                .unwrap_err()
                .to_string()
                .contains("IS NULL")
        );
    }

    #[test]
    fn insert_checks_columns_and_values() {
        let e = bind_one("INSERT INTO images (image, text) VALUES ('a.jpg', 'x')").unwrap_err();
        assert!(e.to_string().contains("'artist' is NOT NULL"), "{e}");
        let e = bind_one("INSERT INTO images (artist, year) VALUES ('x', 1.5)").unwrap_err();
        assert_eq!(e.pos().column, 48, "{e}");
        assert!(matches!(
            bind_one("INSERT INTO images (artist, text) VALUES ('x', ARRAY['a', 'b'])").unwrap(),
            Plan::Insert { .. }
        ));
    }

    #[test]
    fn create_existing_needs_if_not_exists() {
        assert!(bind_one("CREATE COLLECTION images").is_err());
        assert!(bind_one("CREATE COLLECTION IF NOT EXISTS images").is_ok());
        assert!(bind_one("DROP COLLECTION IF EXISTS nope").is_ok());
        assert!(bind_one("DROP COLLECTION nope").is_err());
    }
}
