//! Exact ranks for retrieval evaluation, both directions in one pass.
//!
//! Captions are scored against images in tiles (a strip of captions times a tile of images, never
//! the whole caption x image matrix). For each caption the pass counts the images scoring at
//! least its gold image; for each image, the captions scoring at least each of its own captions.
//! Those counts are the ranks, with ties ranked pessimistically (an irrelevant item that ties
//! with a relevant one is counted before it). Tile scores come from [`dot_block`] and the
//! thresholds from [`dot`], which agree to the bit, so a tie is a tie on both sides.

use mirante_storage::{dot, dot_block};
use rayon::prelude::*;

/// Captions per parallel task (a multiple of the kernels' 3 and 4 rows).
const TEXT_STRIP: usize = 48;
/// Images per tile (a multiple of the kernels' 3 and 6 columns); a strip's tile of scores fits
/// in L1.
const IMAGE_TILE: usize = 48;

/// A retrieval problem: captions, distinct images, and which image each caption describes.
#[derive(Debug, Clone)]
pub struct Problem<'a> {
    pub texts: Vec<&'a [f32]>,
    pub images: Vec<&'a [f32]>,
    /// `gold[t]`: the image caption `t` describes (an index into `images`), `None` when its image
    /// is not in the gallery (such a caption is a distractor for image queries only).
    pub gold: Vec<Option<u32>>,
}

/// A running mean.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mean {
    pub sum: f64,
    pub count: u64,
}

impl Mean {
    pub fn value(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// The outcome of [`exact_ranks`].
#[derive(Debug, Clone, PartialEq)]
pub struct Ranks {
    /// Per caption: the 1-based rank of its gold image among all images (`None` without one).
    pub text_to_image: Vec<Option<u32>>,
    /// Per image `i`, `image_ranks[image_offsets[i]..image_offsets[i + 1]]` are the 1-based
    /// ranks of its captions among all captions, ascending.
    pub image_offsets: Vec<usize>,
    pub image_ranks: Vec<u32>,
    /// Per image, its captions in the order of `image_ranks`.
    pub image_texts: Vec<u32>,
    /// Cosine of (caption, its image) pairs.
    pub matching: Mean,
    /// Cosine of every other (caption, image) pair.
    pub non_matching: Mean,
}

impl Ranks {
    /// Ascending ranks of the captions of image `i` (empty when it has none).
    pub fn image_to_text(&self, i: usize) -> &[u32] {
        &self.image_ranks[self.image_offsets[i]..self.image_offsets[i + 1]]
    }

    /// The caption queries (those with a gold image), each as the rank of its one relevant item.
    pub fn text_queries(&self) -> Vec<&[u32]> {
        self.text_to_image
            .iter()
            .flatten()
            .map(std::slice::from_ref)
            .collect()
    }

    /// The image queries (those with captions), each as the ascending ranks of its captions.
    pub fn image_queries(&self) -> Vec<&[u32]> {
        (0..self.image_offsets.len() - 1)
            .map(|i| self.image_to_text(i))
            .filter(|r| !r.is_empty())
            .collect()
    }
}

/// What one parallel worker accumulates for image queries: per (image, caption) pair in
/// threshold order, the captions scoring at least the threshold.
struct Partial {
    at_least: Vec<u32>,
}

/// Ranks every caption's image and every image's captions by exact scores.
///
/// All vectors must have the same dimension, and `gold` one entry per caption, each a valid
/// image index (the engine builds problems that hold; a violation panics).
pub fn exact_ranks(p: &Problem<'_>) -> Ranks {
    assert_eq!(p.gold.len(), p.texts.len(), "one gold entry per caption");
    let (n_texts, n_images) = (p.texts.len(), p.images.len());
    // Thresholds: the score of each caption with its own image.
    let threshold: Vec<Option<f32>> = p
        .texts
        .iter()
        .zip(&p.gold)
        .map(|(t, g)| g.map(|g| dot(t, p.images[g as usize])))
        .collect();
    // Each image's captions, sorted by descending threshold (CSR).
    let mut image_offsets = vec![0usize; n_images + 1];
    for g in p.gold.iter().flatten() {
        image_offsets[*g as usize + 1] += 1;
    }
    for i in 0..n_images {
        image_offsets[i + 1] += image_offsets[i];
    }
    let mut image_texts = vec![0u32; image_offsets[n_images]];
    let mut fill = image_offsets.clone();
    for (t, g) in p.gold.iter().enumerate() {
        if let Some(g) = g {
            image_texts[fill[*g as usize]] = t as u32;
            fill[*g as usize] += 1;
        }
    }
    let thr = |t: u32| threshold[t as usize].unwrap_or(f32::NEG_INFINITY);
    for i in 0..n_images {
        image_texts[image_offsets[i]..image_offsets[i + 1]]
            .sort_by(|&a, &b| thr(b).total_cmp(&thr(a)).then(a.cmp(&b)));
    }
    let image_thresholds: Vec<f32> = image_texts.iter().map(|&t| thr(t)).collect();
    // The lowest threshold of each image: a caption below it counts for none of its captions.
    let lowest: Vec<f32> = (0..n_images)
        .map(|i| match image_offsets[i]..image_offsets[i + 1] {
            r if r.is_empty() => f32::INFINITY,
            r => image_thresholds[r.end - 1],
        })
        .collect();

    let mut text_to_image: Vec<Option<u32>> = vec![None; n_texts];
    let empty = || Partial {
        at_least: vec![0; image_texts.len()],
    };
    let total = p
        .texts
        .par_chunks(TEXT_STRIP)
        .zip(text_to_image.par_chunks_mut(TEXT_STRIP))
        .zip(threshold.par_chunks(TEXT_STRIP))
        .fold(empty, |mut acc, ((strip, ranks), thresholds)| {
            score_strip(
                strip,
                thresholds,
                ranks,
                &p.images,
                &Thresholds {
                    offsets: &image_offsets,
                    values: &image_thresholds,
                    lowest: &lowest,
                },
                &mut acc,
            );
            acc
        })
        .reduce(empty, |mut a, b| {
            a.at_least
                .iter_mut()
                .zip(&b.at_least)
                .for_each(|(x, y)| *x += y);
            a
        });

    // A caption's count includes its gold image, so the count is the rank. An image's k-th
    // caption (0-based) counts every caption at or above its threshold, among them the relevant
    // ones tied with or above it; the irrelevant ones ahead of it plus k+1 is its rank.
    let mut image_ranks = vec![0u32; image_texts.len()];
    for i in 0..n_images {
        let range = image_offsets[i]..image_offsets[i + 1];
        let th = &image_thresholds[range.clone()];
        for (k, pos) in range.clone().enumerate() {
            let relevant_at_least = th.partition_point(|&x| x >= th[k]) as u32;
            image_ranks[pos] = k as u32 + 1 + (total.at_least[pos] - relevant_at_least);
        }
    }
    let matching = threshold
        .iter()
        .flatten()
        .fold(Mean::default(), |m, &s| Mean {
            sum: m.sum + f64::from(s),
            count: m.count + 1,
        });
    // Scores are bilinear: their sum over all pairs is the dot product of the sums.
    let sum_of = |vectors: &[&[f32]]| {
        let mut sum = vec![0f64; vectors.first().map_or(0, |v| v.len())];
        for v in vectors {
            sum.iter_mut()
                .zip(*v)
                .for_each(|(s, &x)| *s += f64::from(x));
        }
        sum
    };
    let all_pairs: f64 = sum_of(&p.texts)
        .iter()
        .zip(sum_of(&p.images))
        .map(|(a, b)| a * b)
        .sum();
    let non_matching = Mean {
        sum: all_pairs - matching.sum,
        count: (n_texts * n_images) as u64 - matching.count,
    };
    Ranks {
        text_to_image,
        image_offsets,
        image_ranks,
        image_texts,
        matching,
        non_matching,
    }
}

/// The captions of every image, as thresholds: `values[offsets[i]..offsets[i + 1]]` are image
/// `i`'s caption scores in descending order, `lowest[i]` the last of them.
struct Thresholds<'a> {
    offsets: &'a [usize],
    values: &'a [f32],
    lowest: &'a [f32],
}

/// Scores one strip of captions against every image tile and updates the counts.
fn score_strip(
    strip: &[&[f32]],
    thresholds: &[Option<f32>],
    ranks: &mut [Option<u32>],
    images: &[&[f32]],
    image: &Thresholds<'_>,
    acc: &mut Partial,
) {
    let rows = strip.len();
    let mut counts = vec![0u32; rows];
    let mut tile = vec![0f32; TEXT_STRIP * IMAGE_TILE];
    for (tile_index, image_tile) in images.chunks(IMAGE_TILE).enumerate() {
        let first_image = tile_index * IMAGE_TILE;
        let width = image_tile.len();
        let scores = &mut tile[..rows * width];
        dot_block(strip, image_tile, scores);
        let lowest = &image.lowest[first_image..first_image + width];
        for (r, row) in scores.chunks_exact(width).enumerate() {
            if let Some(th) = thresholds[r] {
                counts[r] += row.iter().map(|&s| u32::from(s >= th)).sum::<u32>();
            }
            // Most scores are below every threshold of their image: one vectorised test per
            // row, and the per-caption counts only where a score reaches the lowest one.
            if !row
                .iter()
                .zip(lowest)
                .fold(false, |any, (s, l)| any | (s >= l))
            {
                continue;
            }
            for (c, (&s, &l)) in row.iter().zip(lowest).enumerate() {
                if s < l {
                    continue;
                }
                let i = first_image + c;
                let range = image.offsets[i]..image.offsets[i + 1];
                // Descending thresholds: from the lowest up, while the score reaches them.
                for (count, &th) in acc.at_least[range.clone()]
                    .iter_mut()
                    .zip(&image.values[range])
                    .rev()
                {
                    if s < th {
                        break;
                    }
                    *count += 1;
                }
            }
        }
    }
    for ((rank, count), th) in ranks.iter_mut().zip(counts).zip(thresholds) {
        *rank = th.map(|_| count);
    }
}

/// The `k` best gallery items of every query by exact score (descending, ties by index), with
/// the same tiles as [`exact_ranks`]: the reference an ANN index's results are compared with.
pub fn exact_top_k(queries: &[&[f32]], gallery: &[&[f32]], k: usize) -> Vec<Vec<u32>> {
    scored_top_k(queries, gallery, k)
        .into_iter()
        .map(|top| top.into_iter().map(|(i, _)| i).collect())
        .collect()
}

/// [`exact_top_k`] with each item's score.
pub fn scored_top_k(queries: &[&[f32]], gallery: &[&[f32]], k: usize) -> Vec<Vec<(u32, f32)>> {
    let better = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    queries
        .par_chunks(TEXT_STRIP)
        .flat_map_iter(|strip| {
            let rows = strip.len();
            let mut tops: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(k + 1); rows];
            let mut tile = vec![0f32; TEXT_STRIP * IMAGE_TILE];
            for (tile_index, items) in gallery.chunks(IMAGE_TILE).enumerate() {
                let width = items.len();
                let scores = &mut tile[..rows * width];
                dot_block(strip, items, scores);
                for (top, row) in tops.iter_mut().zip(scores.chunks_exact(width)) {
                    for (c, &s) in row.iter().enumerate() {
                        let item = (s, (tile_index * IMAGE_TILE + c) as u32);
                        if top.len() == k && better(top.last().unwrap_or(&item), &item).is_le() {
                            continue;
                        }
                        let at = top.partition_point(|x| better(x, &item).is_lt());
                        top.insert(at, item);
                        top.truncate(k);
                    }
                }
            }
            tops.into_iter()
                .map(|t| t.into_iter().map(|(s, i)| (i, s)).collect::<Vec<_>>())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One-hot captions and images whose coordinates are the wanted scores, so every score is
    /// exactly the number written (products with 0 and sums of zeros are exact).
    fn one_hot(scores: &[Vec<f32>]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let n = scores.len();
        let m = scores[0].len();
        let texts = (0..n)
            .map(|t| (0..n).map(|k| if k == t { 1.0 } else { 0.0 }).collect())
            .collect();
        let images = (0..m)
            .map(|j| (0..n).map(|t| scores[t][j]).collect())
            .collect();
        (texts, images)
    }

    fn ranks(scores: &[Vec<f32>], gold: Vec<Option<u32>>) -> Ranks {
        let (texts, images) = one_hot(scores);
        exact_ranks(&Problem {
            texts: texts.iter().map(Vec::as_slice).collect(),
            images: images.iter().map(Vec::as_slice).collect(),
            gold,
        })
    }

    #[test]
    fn ties_rank_pessimistically() {
        // Caption 0 ties its gold (image 0) with image 1: rank 2. Caption 1 is clearly first.
        // Image 0's captions: 0 (0.5) and 2 (0.5) tie with each other and with caption 1 (0.5).
        let scores = vec![
            vec![0.5, 0.5, 0.1],
            vec![0.5, 0.9, 0.2],
            vec![0.5, 0.4, 0.3],
        ];
        let r = ranks(&scores, vec![Some(0), Some(1), Some(0)]);
        assert_eq!(r.text_to_image, vec![Some(2), Some(1), Some(1)]);
        // Image 0: caption 1 (irrelevant, 0.5) goes first, then captions 0 and 2: ranks 2, 3.
        assert_eq!(r.image_to_text(0), &[2, 3]);
        // Image 1: caption 1 scores 0.9, the best.
        assert_eq!(r.image_to_text(1), &[1]);
        assert_eq!(r.image_to_text(2), &[] as &[u32]);
        assert_eq!(r.matching.count, 3);
        assert!((r.matching.value().unwrap() - (0.5 + 0.9 + 0.5) / 3.0).abs() < 1e-7);
        assert_eq!(r.non_matching.count, 6);
    }

    #[test]
    fn top_k_is_sorted_by_score_then_index() {
        let scores = vec![vec![0.5, 0.9, 0.5, 0.1], vec![0.0, 0.0, 0.0, 0.3]];
        let (texts, images) = one_hot(&scores);
        let t: Vec<&[f32]> = texts.iter().map(Vec::as_slice).collect();
        let i: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        assert_eq!(exact_top_k(&t, &i, 3), vec![vec![1, 0, 2], vec![3, 0, 1]]);
        assert_eq!(exact_top_k(&t, &i, 0), vec![Vec::<u32>::new(); 2]);
    }

    #[test]
    fn captions_without_an_image_are_distractors_only() {
        let scores = vec![vec![0.2, 0.1], vec![0.9, 0.0]];
        let r = ranks(&scores, vec![Some(0), None]);
        assert_eq!(r.text_to_image, vec![Some(1), None]);
        assert_eq!(r.image_to_text(0), &[2]);
    }

    #[test]
    fn identical_pairs_rank_first_and_shuffled_pairs_near_chance() {
        // Random unit vectors: a caption identical to its image scores 1, above everything.
        let dim = 32;
        let n = 500;
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut images: Vec<Vec<f32>> =
            (0..n).map(|_| (0..dim).map(|_| next()).collect()).collect();
        for v in &mut images {
            mirante_storage::normalize(v, dim);
        }
        let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        let gold: Vec<Option<u32>> = (0..n as u32).map(Some).collect();
        let r = exact_ranks(&Problem {
            texts: refs.clone(),
            images: refs.clone(),
            gold: gold.clone(),
        });
        assert!(r.text_to_image.iter().all(|&x| x == Some(1)));
        assert!((0..n).all(|i| r.image_to_text(i) == [1]));

        // Gold images shuffled: each rank is uniform on 1..=n, so recall@10 ~ 10/n = 0.02
        // (binomial standard deviation over 500 queries: 0.0063; the bound is 4 of them).
        let shuffled: Vec<Option<u32>> = (0..n as u32)
            .map(|t| Some((t * 7 + 3) % n as u32))
            .collect();
        let texts: Vec<Vec<f32>> = (0..n).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let r = exact_ranks(&Problem {
            texts: texts.iter().map(Vec::as_slice).collect(),
            images: refs,
            gold: shuffled,
        });
        let hits = r.text_to_image.iter().filter(|x| x.unwrap() <= 10).count();
        let recall = hits as f64 / n as f64;
        assert!((recall - 0.02).abs() < 4.0 * 0.0063, "recall@10 {recall}");
        let mean_rank: f64 = r
            .text_to_image
            .iter()
            .map(|x| f64::from(x.unwrap()))
            .sum::<f64>()
            / n as f64;
        assert!(
            (mean_rank - 250.5).abs() < 4.0 * 144.0 / (n as f64).sqrt(),
            "{mean_rank}"
        );
    }
}
