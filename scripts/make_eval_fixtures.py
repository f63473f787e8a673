#!/usr/bin/env python3
"""Writes tests/fixtures/evaluation/metrics.json: score matrices (captions x images), which image
each caption describes, and the metric values that reference implementations compute for both
retrieval directions.

References: pytrec_eval (trec_eval: success@K = Mirante's recall@K, recip_rank, ndcg_cut@K),
cross-checked with scikit-learn's ndcg_score; numpy for the median rank and mean similarities.
Ties are Mirante's: an irrelevant item tied with a relevant one ranks before it. The script
turns each query's scores into that strict order before handing it to the references, so the
references rank exactly as documented and the test checks Mirante's counting against them.

    pip install pytrec_eval-terrier scikit-learn numpy
    python3 scripts/make_eval_fixtures.py
"""

import json
import pathlib

import numpy as np
import pytrec_eval
from sklearn.metrics import ndcg_score

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/evaluation/metrics.json"
CUTOFFS = (1, 5, 10)
NDCG_CUTOFFS = (5, 10)


def strict_order(scores, relevant):
    """Gallery indices best first: score descending, irrelevant before relevant on ties, then id."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j in relevant, j))


def direction_metrics(scores, relevance):
    """scores: queries x gallery (float32); relevance: per query, the set of relevant items."""
    queries = [q for q in range(scores.shape[0]) if relevance[q]]
    qrels, run, first_ranks = {}, {}, []
    y_true, y_score = [], []
    for q in queries:
        order = strict_order(scores[q].tolist(), relevance[q])
        n = len(order)
        qrels[f"q{q}"] = {f"d{j}": 1 for j in relevance[q]}
        run[f"q{q}"] = {f"d{j}": float(n - pos) for pos, j in enumerate(order)}
        first_ranks.append(1 + min(order.index(j) for j in relevance[q]))
        strict = np.zeros(n)
        for pos, j in enumerate(order):
            strict[j] = n - pos
        y_true.append([1.0 if j in relevance[q] else 0.0 for j in range(n)])
        y_score.append(strict)
    measures = {
        "success." + ",".join(map(str, CUTOFFS)),
        "recip_rank",
        "ndcg_cut." + ",".join(map(str, NDCG_CUTOFFS)),
    }
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    assert len(per_query) == len(queries)

    def mean(key):
        return sum(v[key] for v in per_query.values()) / len(per_query)

    out = {"queries": len(queries)}
    for k in CUTOFFS:
        out[f"recall@{k}"] = mean(f"success_{k}")
    out["mrr"] = mean("recip_rank")
    for k in NDCG_CUTOFFS:
        value = mean(f"ndcg_cut_{k}")
        check = ndcg_score(np.array(y_true), np.array(y_score), k=k)
        assert abs(value - check) < 1e-12, (value, check)
        out[f"ndcg@{k}"] = value
    out["median_rank"] = float(np.median(first_ranks))
    return out


def case(name, scores, gold):
    scores = np.asarray(scores, dtype=np.float32)
    n_texts, n_images = scores.shape
    t2i = [{gold[t]} if gold[t] is not None else set() for t in range(n_texts)]
    i2t = [{t for t in range(n_texts) if gold[t] == i} for i in range(n_images)]
    matching = [float(scores[t, gold[t]]) for t in range(n_texts) if gold[t] is not None]
    total = float(scores.astype(np.float64).sum())
    similarity = {
        "mean_similarity": float(np.mean(matching)),
        "mean_similarity_nonmatching": (total - sum(matching)) / (scores.size - len(matching)),
    }
    return {
        "name": name,
        "scores": [[float(x) for x in row] for row in scores],
        "gold": gold,
        "text_to_image": {**direction_metrics(scores, t2i), **similarity},
        "image_to_text": {**direction_metrics(scores.T, i2t), **similarity},
    }


def main():
    rng = np.random.default_rng(20261127)
    cases = []

    # Continuous scores; some captions without an image; some images without captions.
    s = rng.uniform(-0.2, 0.6, size=(40, 15))
    gold = [int(rng.integers(0, 12)) if rng.random() > 0.1 else None for _ in range(40)]
    cases.append(case("random", s, gold))

    # Heavy ties: five score levels.
    s = rng.integers(0, 5, size=(30, 10)) / 4.0
    gold = [int(t % 10) for t in range(30)]
    cases.append(case("ties", s, gold))

    # Every score equal: every relevant item ranks behind every irrelevant one.
    s = np.full((12, 4), 0.5)
    gold = [t % 4 for t in range(12)]
    cases.append(case("all_equal", s, gold))

    # One image with twelve captions, tied with distractors; others with one or none.
    s = rng.integers(0, 3, size=(25, 5)) / 2.0
    gold = [0] * 12 + [1, 2, 3, None, None] + [1] * 8
    cases.append(case("many_relevant", s, gold))

    # Gold pairs score highest: every metric is perfect.
    s = rng.uniform(-0.5, 0.5, size=(20, 20))
    gold = list(range(20))
    for t in range(20):
        s[t, t] = 0.9
    cases.append(case("perfect", s, gold))

    # Adversarial: the gold image scores lowest for every caption (the worst possible ranks),
    # with negative scores.
    s = rng.uniform(-1.0, 0.0, size=(18, 9))
    gold = [t % 9 for t in range(18)]
    for t in range(18):
        s[t, gold[t]] = -1.0
    cases.append(case("worst", s, gold))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"cases": cases}, indent=1) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
