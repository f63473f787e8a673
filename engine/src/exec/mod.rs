//! The executor: parses, binds (against the newest snapshot) and runs statements, one function
//! per statement kind. Each statement that changes data is one commit (an import is one
//! transaction however many segments it writes), and the writer lock is held for one statement
//! only.

mod collections;
mod explain;
mod models;
mod rows;

use mirante_query::{self as query, Plan, TrainKind};

use crate::catalog::SnapshotCatalog;
use crate::database::{Database, ExecOptions};
use crate::error::{Error, Result};
use crate::output::Output;

impl Database {
    /// Runs `;`-separated statements in order and returns one output per statement. The text
    /// is parsed whole first, so a syntax error anywhere runs nothing; a statement that fails
    /// stops the ones after it (those before it are committed).
    pub fn sql(&self, text: &str) -> Result<Vec<Output>> {
        let mut out = Vec::new();
        self.sql_each(text, &ExecOptions::default(), |r| out.push(r))?;
        Ok(out)
    }

    /// Like [`Database::sql`] with `options` (a cancel token, image bytes), handing each output
    /// to `f` as soon as its statement finishes.
    pub fn sql_each(
        &self,
        text: &str,
        options: &ExecOptions,
        mut f: impl FnMut(Output),
    ) -> Result<()> {
        for stmt in query::parse(text)? {
            f(self.execute_with(stmt, options)?);
        }
        Ok(())
    }

    /// Binds and runs one parsed statement.
    pub fn execute(&self, stmt: query::Statement) -> Result<Output> {
        self.execute_with(stmt, &ExecOptions::default())
    }

    /// Binds and runs one parsed statement with `options`.
    pub fn execute_with(&self, stmt: query::Statement, options: &ExecOptions) -> Result<Output> {
        options.cancel.check()?;
        let snap = self.snapshot()?;
        let plan = query::bind(stmt, &SnapshotCatalog(&snap))?;
        if self.options.read_only && plan.writes() {
            return Err(Error::ReadOnly);
        }
        let result = run(self, plan, options);
        self.release_writer();
        result
    }
}

/// Runs a bound plan.
fn run(db: &Database, plan: Plan, exec: &ExecOptions) -> Result<Output> {
    Ok(match plan {
        Plan::Search(p) => Output::Search(crate::search::run(db, &p, exec)?),
        Plan::Evaluate(p) => Output::Evaluation(crate::evaluate::run(db, &p, exec)?),
        Plan::Train(p) => Output::Training(match &p.kind {
            TrainKind::Finetune { base, options } => {
                crate::train::finetune::run(db, &p, base, options, exec)?
            }
            TrainKind::Elip { backbone, options } => {
                crate::train::elip::run(db, &p, backbone.as_deref(), options, exec)?
            }
        }),
        Plan::Select {
            collection,
            list,
            filter,
            limit,
            offset,
        } => Output::Table(rows::select(
            db,
            &collection,
            &list,
            filter.as_ref(),
            (limit, offset),
        )?),
        Plan::Delete { collection, filter } => rows::delete(db, &collection, filter.as_ref())?,
        Plan::Insert {
            collection,
            columns,
            rows,
        } => crate::ingest::insert(db, &collection, &columns, rows, exec)?,
        Plan::Import {
            collection,
            source,
            options,
            skip_errors,
        } => crate::ingest::import(db, &collection, &source, &options, skip_errors, exec)?,
        Plan::CreateCollection {
            name,
            exists,
            columns,
            options,
        } => collections::create(db, &name, exists, &columns, &options)?,
        Plan::DropCollection { name, exists } => collections::drop(db, &name, exists)?,
        Plan::ShowCollections => Output::Table(collections::show(db)?),
        Plan::Describe { collection } => Output::Table(collections::describe(db, &collection)?),
        Plan::CreateIndex {
            collection,
            factory,
        } => collections::create_index(db, &collection, &factory)?,
        Plan::Compact { collection } => collections::compact(db, &collection, exec)?,
        Plan::Vacuum { keep_versions } => collections::vacuum(db, keep_versions as usize)?,
        Plan::Restore { version } => collections::restore(db, version)?,
        Plan::ShowModels => Output::Table(models::show(db)?),
        Plan::DropModel { name } => models::drop(db, &name)?,
        Plan::ExportModel { name, folder } => models::export(db, &name, &folder)?,
        Plan::Embed { collection, model } => {
            crate::reembed::embed(db, &collection, model.as_deref(), false, exec)?
        }
        Plan::Reembed { collection, model } => {
            crate::reembed::embed(db, &collection, Some(&model), true, exec)?
        }
        Plan::SetModel { collection, model } => crate::reembed::set_model(db, &collection, &model)?,
        Plan::Explain(inner) => Output::Table(explain::explain(db, *inner)?),
    })
}
