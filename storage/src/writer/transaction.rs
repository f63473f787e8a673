//! Transactions: several appends (and schema additions) staged against one version and
//! published by one commit, so an import larger than memory is still all-or-nothing.

use std::collections::BTreeSet;

use super::{Writer, stage_space};
use crate::error::{Error, Result};
use crate::manifest::{CollectionMeta, Manifest};
use crate::schema::{ColumnDef, NewRow, Schema, SpaceId, SpaceSpec};
use crate::search::RowFilter;

/// Changes staged against one version and published by [`Transaction::commit`] as one new
/// version. Dropping it without committing publishes nothing; its files are unreferenced and
/// [`Writer::vacuum`] removes them.
#[derive(Debug)]
pub struct Transaction<'w> {
    pub(super) writer: &'w mut Writer,
    pub(super) next: Manifest,
    /// Collections appended to, for the merge policy after the commit.
    pub(super) appended: BTreeSet<String>,
}

impl Transaction<'_> {
    /// Adds nullable metadata columns to a collection's schema; rows written before read them as
    /// null. Columns that already exist with the same type are left alone.
    pub fn add_columns(&mut self, collection: &str, columns: Vec<ColumnDef>) -> Result<()> {
        add_columns(&mut self.next, collection, columns)
    }

    /// Stages rows as a new segment (see [`Writer::append`]); returns their ids.
    pub fn append(
        &mut self,
        collection: &str,
        rows: Vec<NewRow>,
        embeddings: &[(SpaceId, &[f32])],
    ) -> Result<Vec<u64>> {
        let ids = self
            .writer
            .files()
            .stage_append(&mut self.next, collection, rows, embeddings)?;
        if !ids.is_empty() {
            self.appended.insert(collection.to_string());
        }
        Ok(ids)
    }

    /// Stages the deletion of the committed live rows that pass `filter` (rows appended in this
    /// transaction are not looked at), so a replacement is one commit; returns how many.
    pub fn delete_where(&mut self, collection: &str, filter: &RowFilter<'_>) -> Result<usize> {
        self.writer
            .stage_delete(&mut self.next, collection, |row| filter(row))
    }

    /// Stages an embedding space (see [`Writer::add_space`]), so that rows appended in this
    /// transaction can carry vectors of a space that appears with them.
    pub fn add_space(
        &mut self,
        collection: &str,
        spec: SpaceSpec,
        activate: bool,
    ) -> Result<SpaceId> {
        stage_space(&mut self.next, collection, spec, activate)
    }

    /// A collection as staged so far.
    pub fn collection(&self, collection: &str) -> Result<&CollectionMeta> {
        self.next.collection(collection)
    }

    /// The schema of a collection as staged so far.
    pub fn schema(&self, collection: &str) -> Result<&Schema> {
        Ok(&self.next.collection(collection)?.schema)
    }

    /// Publishes everything staged as one version, then runs the merge policy on the collections
    /// appended to (a failed merge does not undo the commit; see [`Writer::take_merge_error`]).
    pub fn commit(self, message: String) -> Result<u64> {
        let Transaction {
            writer,
            next,
            appended,
        } = self;
        let version = writer.commit(next, message)?;
        if writer.options.auto_compact {
            for collection in &appended {
                if let Err(e) = writer.compact(collection, false) {
                    writer.merge_error = Some(e);
                }
            }
        }
        Ok(version)
    }
}

/// Adds nullable metadata columns to `collection` in `next` (see [`Transaction::add_columns`]).
pub(super) fn add_columns(
    next: &mut Manifest,
    collection: &str,
    columns: Vec<ColumnDef>,
) -> Result<()> {
    let c = next.collection_mut(collection)?;
    let mut metadata = c.schema.metadata.clone();
    for col in columns {
        match metadata.iter().find(|m| m.name == col.name) {
            Some(m) if m.ty == col.ty => {}
            Some(m) => {
                return Err(Error::TypeMismatch {
                    column: col.name.clone(),
                    expected: m.ty.to_string(),
                    got: col.ty.to_string(),
                });
            }
            None if !col.nullable => {
                return Err(Error::InvalidArgument(format!(
                    "column '{}' is added to a collection that may already hold rows, so it \
                     must be nullable",
                    col.name
                )));
            }
            None => metadata.push(col),
        }
    }
    c.schema = Schema::new(metadata)?;
    Ok(())
}
