//! `EXPLAIN`: how a statement would run. For `SEARCH` the space, model, filter and each
//! segment's strategy (FAISS index or exact scan) and the re-ranking stage; for `EVALUATE` the
//! spaces per model and how ranks are made; for other statements their bound plan.

use mirante_query::{self as query, Plan};
use mirante_storage::{self as storage, Strategy};

use crate::catalog::predicate_sql;
use crate::database::Database;
use crate::error::Result;
use crate::output::{Cell, CellType, Column, ResultSet};

pub(super) fn explain(db: &Database, plan: Plan) -> Result<ResultSet> {
    let mut lines = Vec::new();
    match &plan {
        Plan::Search(p) => {
            let snap = db.snapshot()?;
            let resolved = crate::search::resolve(db, &snap, p)?;
            let c = snap.collection(&p.collection)?;
            let spec = &c.space(resolved.space)?.spec;
            lines.push(format!(
                "Search {} for the top {} {}",
                p.collection,
                p.rerank.as_ref().map_or(p.limit, |r| r.top.max(p.limit)),
                match resolved.target {
                    query::Target::Images => "images",
                    query::Target::Texts => "captions",
                }
            ));
            lines.push(format!("  query: {}", resolved.describe_query()));
            lines.push(format!(
                "  space {}: {} {} (dim {}, cosine)",
                resolved.space, spec.modality, spec.model_id, spec.dim
            ));
            let f = resolved.filter(p);
            let plans = snap.explain_search(
                &p.collection,
                resolved.space,
                f.as_ref().map(|f| f as &storage::RowFilter<'_>),
            )?;
            lines.push(format!(
                "  filter: {}",
                match (&p.filter, resolved.exclude) {
                    (Some(f), _) => predicate_sql(&c.schema, f),
                    (None, Some(id)) => format!("id <> {id}"),
                    (None, None) => "none".into(),
                }
            ));
            for s in plans {
                lines.push(format!(
                    "  segment {}: {} live rows, {} of {} vectors allowed: {}",
                    s.segment,
                    s.live_rows,
                    s.allowed_items,
                    s.items,
                    match s.strategy {
                        Strategy::ExactScan { reason } => format!("exact scan ({reason})"),
                        Strategy::Index { factory, selector } => format!(
                            "FAISS index '{factory}'{}, candidates re-scored exactly",
                            if selector {
                                " with a bitmap ID selector"
                            } else {
                                ""
                            }
                        ),
                    }
                ));
            }
            lines.push("  merge: global top-k by score desc, then row id asc".into());
            if let Some(r) = &p.rerank {
                lines.extend(crate::rerank::explain(db, r, p.limit)?);
            }
        }
        Plan::Evaluate(p) => lines.extend(crate::evaluate::explain(db, p)?),
        other => lines.extend(format!("{other:#?}").lines().map(str::to_string)),
    }
    Ok(ResultSet {
        columns: vec![Column::new("plan", CellType::Str, false)],
        rows: lines.into_iter().map(|l| vec![Cell::Str(l)]).collect(),
        status: None,
    })
}
