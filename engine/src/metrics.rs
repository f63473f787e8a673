//! Retrieval metrics from ranks. Every query is given by the ascending 1-based ranks of its
//! relevant items (all of them: exact evaluation ranks the whole gallery); queries without a
//! relevant item are not passed in. The definitions are written out in `docs/evaluation.md`.

use mirante_query::EvalMetric;

/// The rank of a relevant item an ANN search did not return within its depth: it counts as a
/// miss (no recall, no reciprocal rank, no gain), and a median that lands on it is unknown.
pub const NOT_RETRIEVED: u32 = u32::MAX;

/// The value of a rank metric over queries; `None` when there are no queries or the metric is
/// not a rank metric (mean similarity comes from scores).
pub fn rank_metric<'a>(
    metric: EvalMetric,
    queries: impl Iterator<Item = &'a [u32]>,
) -> Option<f64> {
    let per_query: Vec<f64> = match metric {
        EvalMetric::Recall(k) => queries.map(|r| f64::from(u8::from(r[0] <= k))).collect(),
        EvalMetric::Mrr => queries.map(|r| reciprocal(r[0])).collect(),
        EvalMetric::Ndcg(k) => queries.map(|r| ndcg(r, k)).collect(),
        EvalMetric::MedianRank => {
            return median(queries.map(|r| f64::from(r[0])).collect())
                .filter(|&m| m < f64::from(NOT_RETRIEVED));
        }
        EvalMetric::MeanSimilarity => return None,
    };
    (!per_query.is_empty()).then(|| per_query.iter().sum::<f64>() / per_query.len() as f64)
}

fn reciprocal(rank: u32) -> f64 {
    if rank == NOT_RETRIEVED {
        0.0
    } else {
        1.0 / f64::from(rank)
    }
}

/// Binary-relevance nDCG@k: DCG = sum over relevant ranks r <= k of 1/log2(r + 1), divided by
/// the DCG of the ideal ranking (all relevant items first).
fn ndcg(ranks: &[u32], k: u32) -> f64 {
    let gain = |r: u32| 1.0 / (f64::from(r) + 1.0).log2();
    let dcg: f64 = ranks.iter().filter(|&&r| r <= k).map(|&r| gain(r)).sum();
    let ideal: f64 = (1..=k.min(ranks.len() as u32)).map(gain).sum();
    dcg / ideal
}

/// The median (the mean of the two middle values for an even count), as numpy computes it.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        let q: Vec<&[u32]> = vec![&[1], &[3, 4], &[12]];
        let v = |m| rank_metric(m, q.iter().copied()).unwrap();
        assert_eq!(v(EvalMetric::Recall(1)), 1.0 / 3.0);
        assert_eq!(v(EvalMetric::Recall(3)), 2.0 / 3.0);
        assert_eq!(v(EvalMetric::Mrr), (1.0 + 1.0 / 3.0 + 1.0 / 12.0) / 3.0);
        assert_eq!(v(EvalMetric::MedianRank), 3.0);
        // Query 2 at cutoff 5: (1/log2 4 + 1/log2 5) / (1 + 1/log2 3).
        let q2 = (0.5 + 1.0 / 5f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((v(EvalMetric::Ndcg(5)) - (1.0 + q2 + 0.0) / 3.0).abs() < 1e-15);
        assert_eq!(rank_metric(EvalMetric::Mrr, std::iter::empty()), None);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        // Misses of an ANN search: no reciprocal rank, no gain, and an unknown median.
        let q: Vec<&[u32]> = vec![&[2], &[NOT_RETRIEVED], &[NOT_RETRIEVED]];
        let v = |m| rank_metric(m, q.iter().copied());
        assert_eq!(v(EvalMetric::Mrr), Some(0.5 / 3.0));
        assert_eq!(v(EvalMetric::Recall(100)), Some(1.0 / 3.0));
        assert_eq!(v(EvalMetric::MedianRank), None);
        let q: Vec<&[u32]> = vec![&[1, NOT_RETRIEVED]];
        let ideal = 1.0 + 1.0 / 3f64.log2();
        assert_eq!(
            rank_metric(EvalMetric::Ndcg(10), q.iter().copied()),
            Some(1.0 / ideal)
        );
    }
}
