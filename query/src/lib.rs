//! Mirante's query language: [`parse`] text into [`Statement`]s, [`bind`] them against a
//! [`Catalog`] into [`Plan`]s the engine runs, and evaluate bound predicates on rows.

pub mod ast;
mod binder;
mod error;
mod eval;
pub mod options;
mod parser;

pub use ast::{
    Direction, EvalMetric, Expr, Literal, OutputPath, SearchQuery, Statement, Target, Training,
    TrainingKind,
};
pub use binder::{
    Catalog, ColumnInfo, ColumnKind, ColumnPlan, ColumnRef, DEFAULT_RERANK_TOP,
    DEFAULT_SEARCH_LIMIT, EvaluatePlan, MAX_RERANK_TOP, MAX_SEARCH_LIMIT, Plan, Predicate,
    RerankPlan, SearchPlan, SelectList, TrainKind, TrainPlan, bind, bind_predicate,
};
pub use error::{Error, Pos, Result, closest};
pub use eval::{Datum, RowValues, like};
pub use parser::{KEYWORDS, STATEMENT_KEYWORDS, parse, parse_predicate};
