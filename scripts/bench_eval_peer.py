#!/usr/bin/env python3
"""numpy peer of Mirante's evaluation benchmark (tests/src/bin/eval_bench.rs).

Reads the benchmark's vectors (<dir>/texts.f32, <dir>/images.f32: raw little-endian float32,
row-major; <dir>/gold.u32: the image of each caption) and evaluates them the way retrieval
scripts usually do: the full similarity matrix, an argsort per query, ranks of the relevant
items. Prints one JSON object with the time of the matrix product alone, of the whole
evaluation, and the metrics (so the bench can check that both agree).

Needs: pip install numpy
"""
import json
import sys
import time

import numpy as np


def evaluate(texts, images, gold):
    sims = texts @ images.T  # captions x images
    # text -> image: position of the gold image in each caption's ranking.
    order = np.argsort(-sims, axis=1, kind="stable")
    t2i = np.argmax(order == gold[:, None], axis=1) + 1
    # image -> text: best position of any of the image's captions.
    order = np.argsort(-sims.T, axis=1, kind="stable")
    relevant = gold[order] == np.arange(images.shape[0])[:, None]
    i2t = np.argmax(relevant, axis=1) + 1
    metrics = {}
    for name, ranks in (("text_to_image", t2i), ("image_to_text", i2t)):
        metrics[name] = {
            "recall@1": float(np.mean(ranks <= 1)),
            "recall@5": float(np.mean(ranks <= 5)),
            "recall@10": float(np.mean(ranks <= 10)),
            "mrr": float(np.mean(1.0 / ranks)),
            "median_rank": float(np.median(ranks)),
        }
    return metrics


def best_of(reps, fn):
    best, out = None, None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best, out


def main():
    folder, dim = sys.argv[1], int(sys.argv[2])
    texts = np.fromfile(f"{folder}/texts.f32", dtype="<f4").reshape(-1, dim)
    images = np.fromfile(f"{folder}/images.f32", dtype="<f4").reshape(-1, dim)
    gold = np.fromfile(f"{folder}/gold.u32", dtype="<u4").astype(np.int64)
    matmul, _ = best_of(3, lambda: texts @ images.T)
    full, metrics = best_of(2, lambda: evaluate(texts, images, gold))
    print(json.dumps({
        "numpy": np.__version__,
        "matmul_s": matmul,
        "evaluate_s": full,
        "metrics": metrics,
    }))


if __name__ == "__main__":
    main()
