//! Compaction: the tiered merge policy run after appends, and full compaction (`COMPACT`),
//! each merge rewriting adjacent segments' live rows as one, all in one commit.

use std::collections::BTreeMap;

use super::Writer;
use super::segment::{PendingSegment, RowRecordParts, stored_value};
use crate::error::{Error, Result};
use crate::manifest::{CollectionMeta, Manifest, SegmentMeta};
use crate::schema::{Modality, SpaceId};
use crate::snapshot::Snapshot;

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub segments_before: usize,
    pub segments_after: usize,
    pub rows_dropped: u64,
    /// The version committed, if anything changed.
    pub version: Option<u64>,
}

impl Writer {
    /// Merges segments. With `full`, every run of adjacent segments sharing the same embedding
    /// spaces becomes one segment and deleted rows are dropped everywhere. Otherwise the merge
    /// policy runs: `merge_factor` adjacent segments of the same size tier (tier = floor of
    /// log base `merge_factor` of live rows) are merged, and a segment more than half deleted is
    /// rewritten. Indexes of merged segments are rebuilt.
    pub fn compact(&mut self, collection: &str, full: bool) -> Result<CompactReport> {
        self.compact_until(collection, full, &|| false)
    }

    /// [`Writer::compact`], checking `stop` before each merge: once it returns true the
    /// compaction ends with [`Error::Cancelled`] and commits nothing (the merged files written
    /// so far are unreferenced, for [`Writer::vacuum`]).
    pub fn compact_until(
        &mut self,
        collection: &str,
        full: bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<CompactReport> {
        let snap = self.snapshot();
        let c = snap.collection(collection)?;
        let groups = if full {
            full_merge_groups(&c.segments)
        } else {
            policy_merge_groups(&c.segments, self.options.merge_factor)
        };
        let mut report = CompactReport {
            segments_before: c.segments.len(),
            segments_after: c.segments.len(),
            ..Default::default()
        };
        if groups.is_empty() {
            return Ok(report);
        }
        let mut next = self.manifest.clone();
        let mut replacements = Vec::new();
        for group in &groups {
            if stop() {
                return Err(Error::Cancelled);
            }
            let sources: Vec<&SegmentMeta> = group.iter().map(|&i| &c.segments[i]).collect();
            report.rows_dropped += sources.iter().map(|s| s.deleted).sum::<u64>();
            let merged = self.merge(&snap, c, &sources, &mut next)?;
            replacements.push((group.clone(), merged));
        }
        let nc = next.collection_mut(collection)?;
        let mut segments = Vec::new();
        let mut i = 0;
        while i < c.segments.len() {
            if let Some((group, merged)) = replacements.iter().find(|(g, _)| g[0] == i) {
                segments.extend(merged.clone());
                i += group.len();
            } else {
                segments.push(c.segments[i].clone());
                i += 1;
            }
        }
        nc.segments = segments;
        report.segments_after = nc.segments.len();
        report.version = Some(self.commit(
            next,
            format!(
                "compact {collection}: {} -> {} segments",
                report.segments_before, report.segments_after
            ),
        )?);
        Ok(report)
    }

    /// Rewrites the live rows of `sources` (adjacent, same spaces) as one segment, in id order.
    pub(super) fn merge(
        &self,
        snap: &Snapshot,
        c: &CollectionMeta,
        sources: &[&SegmentMeta],
        next: &mut Manifest,
    ) -> Result<Option<SegmentMeta>> {
        let mut pending = PendingSegment::default();
        let spaces: Vec<SpaceId> = sources[0].columns.iter().map(|col| col.space).collect();
        let mut columns: BTreeMap<SpaceId, Vec<f32>> = BTreeMap::new();
        let mut views = Vec::with_capacity(sources.len());
        for meta in sources {
            let view = snap.segment(c, meta)?;
            let mut vectors = Vec::new();
            for &space in &spaces {
                let v = view.vectors(c, space)?.ok_or_else(|| {
                    Error::InvalidArgument(format!("segment {} lacks space {space}", meta.id))
                })?;
                vectors.push((space, c.space(space)?.spec.modality, v));
            }
            views.push((view, vectors));
        }
        // Rows in id order: segments published by parallel builders may interleave ids.
        let mut order: Vec<(u64, usize, usize)> = views
            .iter()
            .enumerate()
            .flat_map(|(s, (view, _))| {
                view.live_rows()
                    .map(move |(local, row)| (row.id(), s, local))
            })
            .collect();
        order.sort_unstable();
        for (_, s, local) in order {
            let (view, vectors) = &views[s];
            let row = view.row(local);
            for (space, modality, v) in vectors {
                let out = columns.entry(*space).or_default();
                match modality {
                    Modality::Image => out.extend_from_slice(v.get(local)),
                    Modality::Text => {
                        let start = view.text_start(local);
                        for t in start..start + row.text_count() {
                            out.extend_from_slice(v.get(t));
                        }
                    }
                }
            }
            pending.push(RowRecordParts {
                id: row.id(),
                image: row
                    .image_bytes()
                    .zip(row.image_source())
                    .map(|(b, s)| (b, s.to_string())),
                texts: row.texts().map(str::to_string).collect(),
                split: row.split().map(str::to_string),
                meta: (0..c.schema.metadata.len())
                    .map(|i| stored_value(row.value_at(i)))
                    .collect(),
            });
        }
        if pending.records.is_empty() {
            return Ok(None);
        }
        pending.columns = columns.into_iter().collect();
        self.files().write_segment(next, &c.name, pending).map(Some)
    }
}

fn space_set(s: &SegmentMeta) -> Vec<SpaceId> {
    let mut v: Vec<SpaceId> = s.columns.iter().map(|c| c.space).collect();
    v.sort_unstable();
    v
}

/// Runs of adjacent segments with the same spaces, where merging changes something.
fn full_merge_groups(segments: &[SegmentMeta]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if space_set(&segments[g[0]]) == space_set(s) => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups.retain(|g| g.len() > 1 || segments[g[0]].deleted > 0);
    groups
}

/// Tiered merge policy over adjacent segments (see [`Writer::compact`]).
pub(super) fn policy_merge_groups(segments: &[SegmentMeta], factor: usize) -> Vec<Vec<usize>> {
    let factor = factor.max(2);
    let tier = |s: &SegmentMeta| (s.live_rows().max(1) as f64).log(factor as f64).floor() as u32;
    let mut groups = Vec::new();
    let mut i = 0;
    while i < segments.len() {
        let s = &segments[i];
        let mut j = i + 1;
        while j < segments.len()
            && j - i < factor
            && tier(&segments[j]) == tier(s)
            && space_set(&segments[j]) == space_set(s)
        {
            j += 1;
        }
        if j - i == factor {
            groups.push((i..j).collect());
            i = j;
        } else if s.deleted * 2 > s.rows {
            groups.push(vec![i]);
            i += 1;
        } else {
            i += 1;
        }
    }
    groups
}
