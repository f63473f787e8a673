//! The queries an `EVALUATE` got most wrong, with what was retrieved instead (for the report).

use mirante_query::Direction;
use mirante_storage::dot;

use super::gallery::Gallery;
use crate::output::Failure;
use crate::ranking::{Problem, Ranks};

/// Failures kept per (model, direction) for the report.
const WORST: usize = 6;
/// Retrieved items shown per failure.
const SHOWN: usize = 5;

/// The queries whose first relevant item ranked worst, with their top results.
pub(super) fn worst_failures(
    direction: Direction,
    ranks: &Ranks,
    p: &Problem<'_>,
    g: &Gallery<'_>,
) -> Vec<Failure> {
    // (first relevant rank, query index), worst first, ties by query order.
    let mut firsts: Vec<(u32, usize)> = match direction {
        Direction::TextToImage => ranks
            .text_to_image
            .iter()
            .enumerate()
            .filter_map(|(t, r)| r.map(|r| (r, t)))
            .collect(),
        Direction::ImageToText => (0..p.images.len())
            .filter_map(|i| ranks.image_to_text(i).first().map(|&r| (r, i)))
            .collect(),
    };
    firsts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    firsts
        .into_iter()
        .take(WORST)
        .filter(|&(r, _)| r > 1)
        .map(|(rank, q)| {
            let (query, gallery): (&[f32], &[&[f32]]) = match direction {
                Direction::TextToImage => (p.texts[q], &p.images),
                Direction::ImageToText => (p.images[q], &p.texts),
            };
            let mut scored: Vec<(f32, usize)> = gallery
                .iter()
                .enumerate()
                .map(|(j, v)| (dot(query, v), j))
                .collect();
            let shown = SHOWN.min(scored.len());
            if shown > 0 {
                scored.select_nth_unstable_by(shown - 1, |a, b| {
                    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
                });
            }
            scored.truncate(shown);
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            match direction {
                Direction::TextToImage => Failure {
                    query: g.caption_item(q),
                    rank,
                    relevant: p.gold[q]
                        .map(|i| g.image_item(i as usize))
                        .into_iter()
                        .collect(),
                    retrieved: scored
                        .into_iter()
                        .map(|(s, j)| (g.image_item(j), s))
                        .collect(),
                },
                Direction::ImageToText => Failure {
                    query: g.image_item(q),
                    rank,
                    relevant: ranks.image_texts[ranks.image_offsets[q]..ranks.image_offsets[q + 1]]
                        .iter()
                        .map(|&t| g.caption_item(t as usize))
                        .collect(),
                    retrieved: scored
                        .into_iter()
                        .map(|(s, j)| (g.caption_item(j), s))
                        .collect(),
                },
            }
        })
        .collect()
}
