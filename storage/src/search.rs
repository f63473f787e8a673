//! Vector search over a snapshot: every segment embedded in the space is searched (FAISS, or an
//! exact scan of the memory-mapped column), candidates are re-scored exactly with
//! [`crate::column::dot`], and a global top-k is merged with the stable order (score descending,
//! row id ascending, caption ascending).
//!
//! Filters and deletions are applied *before* ranking (FAISS ID selectors or the exact scan's
//! bitmap), so a filtered search returns `min(k, matching items)` results.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::column::{dot, normalize};
use crate::error::{Error, Result};
use crate::manifest::{CollectionMeta, SegmentMeta};
use crate::schema::{Metric, Modality, SpaceId};
use crate::snapshot::{SegmentView, Snapshot};

/// A filter on rows; rows for which it returns false are not searched.
pub type RowFilter<'f> = dyn Fn(&crate::RowRef<'_>) -> bool + Sync + 'f;

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row_id: u64,
    /// For text spaces, which caption of the row matched; 0 for image spaces.
    pub text_index: u32,
    /// Exact inner product (the cosine for [`Metric::Cosine`] spaces).
    pub score: f32,
}

impl Eq for Hit {}

impl Ord for Hit {
    /// `a > b` when `a` ranks before `b`: higher score, then lower row id, then lower caption.
    /// `-0.0` and `0.0` are the same score (adding `0.0` maps the first to the second), so a tie
    /// at zero is broken by id like any other.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.score + 0.0)
            .total_cmp(&(other.score + 0.0))
            .then_with(|| other.row_id.cmp(&self.row_id))
            .then_with(|| other.text_index.cmp(&self.text_index))
    }
}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Sorts hits best first.
pub fn sort_hits(hits: &mut [Hit]) {
    hits.sort_unstable_by(|a, b| b.cmp(a));
}

/// Keeps the `k` best hits seen.
#[derive(Debug)]
struct TopK {
    k: usize,
    heap: BinaryHeap<std::cmp::Reverse<Hit>>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    fn push(&mut self, hit: Hit) {
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(hit));
        } else if let Some(worst) = self.heap.peek()
            && hit > worst.0
        {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse(hit));
        }
    }

    fn into_sorted(self) -> Vec<Hit> {
        let mut v: Vec<Hit> = self.heap.into_iter().map(|r| r.0).collect();
        sort_hits(&mut v);
        v
    }
}

/// When fewer than this fraction of a segment's items pass the filter, the segment is scanned
/// exactly instead of asking FAISS (graph and IVF searches degrade under very selective filters,
/// and scanning a few percent of a column is cheaper than a full pass anyway).
const EXACT_SCAN_FRACTION: f64 = 0.05;

/// Relative score gap under which FAISS's own (differently rounded) scores cannot decide the k-th
/// place of a flat index; the segment is then scanned exactly.
const TIE_EPSILON: f32 = 1e-5;

/// Candidates asked of FAISS beyond `k`: exact re-scoring reorders them, and the margin makes the
/// flat index's proof of its top-k (see `search_segment`) rarely fail on near-ties.
const EXTRA_CANDIDATES: usize = 16;

impl Snapshot {
    /// Searches `collection` in embedding space `space` for each query (row-major, `dim` values
    /// each) and returns the `k` best live items per query that pass `filter`.
    pub fn search(
        &self,
        collection: &str,
        space: SpaceId,
        queries: &[f32],
        k: usize,
        filter: Option<&RowFilter<'_>>,
    ) -> Result<Vec<Vec<Hit>>> {
        let c = self.collection(collection)?;
        let spec = &c.space(space)?.spec;
        let dim = spec.dim;
        if queries.is_empty() || !queries.len().is_multiple_of(dim) {
            return Err(Error::DimensionMismatch {
                context: format!("query vectors of space {space} ('{}')", spec.model_id),
                expected: dim,
                got: queries.len(),
            });
        }
        if let Some(bad) = queries.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "query value {bad} is not finite ({})",
                queries[bad]
            )));
        }
        let nq = queries.len() / dim;
        let mut owned;
        let queries = if spec.metric == Metric::Cosine {
            owned = queries.to_vec();
            normalize(&mut owned, dim);
            &owned[..]
        } else {
            queries
        };
        let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
        if k == 0 {
            return Ok(tops.into_iter().map(TopK::into_sorted).collect());
        }
        for meta in &c.segments {
            if meta.column(space).is_none() || meta.live_rows() == 0 {
                continue;
            }
            let seg = self.segment(c, meta)?;
            search_segment(
                &seg,
                c,
                space,
                spec.modality,
                queries,
                nq,
                k,
                filter,
                &mut tops,
            )?;
        }
        Ok(tops.into_iter().map(TopK::into_sorted).collect())
    }
}

/// How one segment is searched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Every allowed item is scored exactly.
    ExactScan { reason: &'static str },
    /// The segment's FAISS index is asked for candidates, which are re-scored exactly.
    Index {
        factory: String,
        /// Whether a bitmap ID selector restricts the index search (deletions or a filter).
        selector: bool,
    },
}

/// The plan of a search over one segment, as `EXPLAIN` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPlan {
    pub segment: u64,
    pub rows: u64,
    pub live_rows: u64,
    /// Vectors in the column (rows for image spaces, captions for text spaces).
    pub items: usize,
    /// Vectors that pass deletions and the filter.
    pub allowed_items: usize,
    pub strategy: Strategy,
}

/// The one place that decides between the index and an exact scan; `allowed` is the number of
/// items passing deletions and the filter, `None` when there are neither.
fn strategy(meta: &SegmentMeta, space: SpaceId, items: usize, allowed: Option<usize>) -> Strategy {
    let Some(entry) = meta.column(space).and_then(|c| c.index.as_ref()) else {
        return Strategy::ExactScan {
            reason: "segment below the index's minimum size",
        };
    };
    match allowed {
        Some(n) if (n as f64) < EXACT_SCAN_FRACTION * items as f64 => Strategy::ExactScan {
            reason: "filter keeps under 5% of the items",
        },
        _ => Strategy::Index {
            factory: entry.spec.factory.clone(),
            selector: allowed.is_some(),
        },
    }
}

impl Snapshot {
    /// How [`Snapshot::search`] would search each segment of `collection` in `space` under
    /// `filter` (the filter is evaluated to count the items it keeps).
    pub fn explain_search(
        &self,
        collection: &str,
        space: SpaceId,
        filter: Option<&RowFilter<'_>>,
    ) -> Result<Vec<SegmentPlan>> {
        let c = self.collection(collection)?;
        let modality = c.space(space)?.spec.modality;
        let mut plans = Vec::new();
        for meta in c.segments.iter().filter(|m| m.column(space).is_some()) {
            let seg = self.segment(c, meta)?;
            let items = meta.items(modality) as usize;
            let allowed = seg.allowed_items(modality, filter).map(|a| a.1);
            plans.push(SegmentPlan {
                segment: meta.id,
                rows: meta.rows,
                live_rows: meta.live_rows(),
                items,
                allowed_items: allowed.unwrap_or(items),
                strategy: strategy(meta, space, items, allowed),
            });
        }
        Ok(plans)
    }
}

#[allow(clippy::too_many_arguments)]
fn search_segment(
    seg: &SegmentView<'_>,
    c: &CollectionMeta,
    space: SpaceId,
    modality: Modality,
    queries: &[f32],
    nq: usize,
    k: usize,
    filter: Option<&RowFilter<'_>>,
    tops: &mut [TopK],
) -> Result<()> {
    let Some(vectors) = seg.vectors(c, space)? else {
        return Ok(());
    };
    let dim = vectors.dim();
    let items = vectors.len();
    let allowed = seg.allowed_items(modality, filter);
    let allowed_count = allowed.as_ref().map_or(items, |a| a.1);
    if allowed_count == 0 {
        return Ok(());
    }
    let to_hit = |item: usize, score: f32| -> Hit {
        let (local, text_index) = match modality {
            Modality::Image => (item, 0),
            Modality::Text => {
                let local = seg.row_of_text(item);
                (local, (item - seg.text_start(local)) as u32)
            }
        };
        Hit {
            row_id: seg.row(local).id(),
            text_index,
            score,
        }
    };
    let is_allowed = |item: usize| {
        allowed
            .as_ref()
            .is_none_or(|(bits, _)| bits[item >> 3] & (1 << (item & 7)) != 0)
    };
    let exact_scan = |q: usize, top: &mut TopK| {
        let query = &queries[q * dim..(q + 1) * dim];
        for item in (0..items).filter(|&i| is_allowed(i)) {
            top.push(to_hit(item, dot(query, vectors.get(item))));
        }
    };

    let index = match strategy(seg.meta, space, items, allowed.as_ref().map(|a| a.1)) {
        Strategy::Index { .. } => seg.index(space)?,
        Strategy::ExactScan { .. } => None,
    };
    let Some(index) = index else {
        for (q, top) in tops.iter_mut().enumerate() {
            exact_scan(q, top);
        }
        return Ok(());
    };
    let exact_index = seg
        .meta
        .column(space)
        .and_then(|col| col.index.as_ref())
        .is_some_and(|e| e.spec.factory.trim() == "Flat");
    let want = (k + EXTRA_CANDIDATES).min(index.ntotal());
    let results = match index.search(queries, nq, want, allowed.as_ref().map(|a| &a.0[..])) {
        Ok(r) => r,
        // An index kind that rejects search parameters (e.g. a pre-transform wrapper): fall back
        // to the exact scan, which is always correct.
        Err(_) if allowed.is_some() => {
            for (q, top) in tops.iter_mut().enumerate() {
                exact_scan(q, top);
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for (q, (top, found)) in tops.iter_mut().zip(results).enumerate() {
        if found.len() < k.min(allowed_count) {
            exact_scan(q, top);
            continue;
        }
        let query = &queries[q * dim..(q + 1) * dim];
        let mut rescored: Vec<Hit> = found
            .iter()
            .filter(|&&(item, _)| item < items && is_allowed(item))
            .map(|&(item, _)| to_hit(item, dot(query, vectors.get(item))))
            .collect();
        sort_hits(&mut rescored);
        // Unseen items score at most the last candidate's FAISS score (up to rounding). If that
        // bound comes within epsilon of the k-th exact score, a flat index cannot prove its
        // top-k, so the segment is scanned exactly.
        let unseen_bound = found.last().map_or(f32::NEG_INFINITY, |f| f.1);
        let kth = rescored.get(k - 1).map_or(f32::NEG_INFINITY, |h| h.score);
        let may_miss = found.len() == want && want < allowed_count.min(index.ntotal());
        if exact_index && may_miss && kth - unseen_bound <= TIE_EPSILON * kth.abs().max(1.0) {
            exact_scan(q, top);
            continue;
        }
        for hit in rescored.into_iter().take(k) {
            top.push(hit);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_zero_scores_tie_and_are_ordered_by_id() {
        let hit = |row_id, score| Hit {
            row_id,
            text_index: 0,
            score,
        };
        let mut hits = vec![hit(30, 0.0), hit(12, -0.0), hit(5, 1.0)];
        sort_hits(&mut hits);
        let ids: Vec<u64> = hits.iter().map(|h| h.row_id).collect();
        assert_eq!(ids, [5, 12, 30]);
    }
}
