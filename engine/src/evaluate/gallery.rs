//! The rows an `EVALUATE` ranks: those its `WHERE` keeps, their distinct images (byte-identical
//! images merged, so a duplicate is never a miss) and their captions with each one's gold image.

use std::collections::HashMap;

use mirante_query::Predicate;
use mirante_storage::{self as storage, CollectionMeta, SegmentView, Snapshot};

use crate::catalog::RowValues;
use crate::error::Result;
use crate::output::Item;

/// The evaluated rows of a snapshot: which are kept, their distinct images and captions.
pub(super) struct Gallery<'s> {
    pub segments: Vec<SegmentView<'s>>,
    /// Kept rows as (segment, position).
    pub rows: Vec<(usize, usize)>,
    /// Per distinct image: the kept row that represents it.
    pub images: Vec<usize>,
    /// Per caption: (kept row, caption index).
    pub captions: Vec<(usize, usize)>,
    /// Per caption: its distinct image.
    pub gold: Vec<Option<u32>>,
    /// Per kept row: its row id, its distinct image, and its first caption's index.
    pub row_ids: Vec<u64>,
    pub image_of: Vec<Option<u32>>,
    pub first_caption: Vec<usize>,
}

impl<'s> Gallery<'s> {
    pub fn collect(
        snap: &'s Snapshot,
        c: &'s CollectionMeta,
        filter: Option<&Predicate>,
    ) -> Result<Self> {
        let segments = snap.segments(c)?;
        let mut g = Gallery {
            segments: Vec::new(),
            rows: Vec::new(),
            images: Vec::new(),
            captions: Vec::new(),
            gold: Vec::new(),
            row_ids: Vec::new(),
            image_of: Vec::new(),
            first_caption: Vec::new(),
        };
        // Byte-identical images: candidates by checksum, confirmed by comparing the bytes.
        let mut by_checksum: HashMap<u32, Vec<u32>> = HashMap::new();
        for (s, seg) in segments.iter().enumerate() {
            for (local, row) in seg.live_rows() {
                if filter.is_some_and(|p| !p.matches(&RowValues(row))) {
                    continue;
                }
                let kept = g.rows.len();
                g.rows.push((s, local));
                let image = match row.image_bytes() {
                    Some(bytes) => {
                        let same = by_checksum.entry(crc32c::crc32c(bytes)).or_default();
                        let found = same.iter().copied().find(|&img| {
                            let (rs, rl) = g.rows[g.images[img as usize]];
                            segments[rs].row(rl).image_bytes() == Some(bytes)
                        });
                        Some(found.unwrap_or_else(|| {
                            g.images.push(kept);
                            let id = (g.images.len() - 1) as u32;
                            same.push(id);
                            id
                        }))
                    }
                    None => None,
                };
                g.row_ids.push(row.id());
                g.image_of.push(image);
                g.first_caption.push(g.captions.len());
                for k in 0..row.text_count() {
                    g.captions.push((kept, k));
                    g.gold.push(image);
                }
            }
        }
        g.segments = segments;
        Ok(g)
    }

    pub fn row(&self, kept: usize) -> storage::RowRef<'_> {
        let (s, local) = self.rows[kept];
        self.segments[s].row(local)
    }

    pub fn caption_item(&self, caption: usize) -> Item {
        let (kept, k) = self.captions[caption];
        let row = self.row(kept);
        Item {
            row: row.id(),
            label: row.text(k).unwrap_or("").to_string(),
            image: None,
        }
    }

    pub fn image_item(&self, image: usize) -> Item {
        let row = self.row(self.images[image]);
        Item {
            row: row.id(),
            label: row.image_source().unwrap_or("").to_string(),
            image: row.image_bytes().map(<[u8]>::to_vec),
        }
    }
}
