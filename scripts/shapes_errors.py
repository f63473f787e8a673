#!/usr/bin/env python3
"""What does a model get wrong on the shapes dataset, text to image?

Embeds one split of a `mirante dataset shapes` folder (images and every caption) with
`mirante embed`, ranks the split's images for each caption exactly, and sorts the captions whose
first image is wrong by how that image differs from the right one, using the scene attributes of
`metadata.jsonl`:

- another number of objects;
- same number, other shapes or colours (the multiset of shapes or of colours differs);
- same shapes and colours, bound differently ("red star, blue square" against "blue star, red
  square");
- same coloured shapes, other sizes or another arrangement (left/right swapped, other cell);
- the same attributes (only the background or exact position differs: often a correct answer
  that the caption cannot tell apart).

Then it asks what the image embedding holds: 5-fold logistic probes on the embeddings of the
dataset's first `--probe-rows` images (any split) for the number of objects, and for the shape
and the colour of one-object scenes. A re-ranker that prompts the same frozen vision tower can
only use what that tower sees.

Usage: python3 scripts/shapes_errors.py --model <folder or registry path> --data <dataset folder>
       [--split test] [--mirante target/release/mirante] [--examples 10] [--probe-rows 1200]
Needs numpy and scikit-learn.
"""

import argparse
import collections
import json
import os
import subprocess

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score


def kind(gold, top):
    """How the top image's scene differs from the gold one."""
    split = lambda r, k: (r[k] or "").split(",")
    if gold["objects"] != top["objects"]:
        return "another number of objects"
    if sorted(split(gold, "shapes")) != sorted(split(top, "shapes")) or sorted(
        split(gold, "colors")
    ) != sorted(split(top, "colors")):
        return "other shapes or colours"
    pairs = lambda r: sorted(zip(split(r, "shapes"), split(r, "colors")))
    if pairs(gold) != pairs(top):
        return "same shapes and colours, bound differently"
    same = all(gold[k] == top[k] for k in ("shapes", "colors", "sizes", "relation"))
    if same:
        return "the same attributes (background or position differ)"
    return "same coloured shapes, other sizes or arrangement"


def embed(mirante, model, images=(), texts=()):
    """L2-normalised embeddings of image paths, then texts, from `mirante embed`."""
    cmd = [mirante, "embed", "--model", model]
    for path in images:
        cmd += ["--image", path]
    for t in texts:
        cmd += ["--text", t]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return np.array([json.loads(line) for line in out.splitlines() if line.strip()])


def probes(args, rows):
    """Cross-validated accuracy of linear probes on the image embeddings, with the share of the
    most frequent class (what a probe that learnt nothing scores)."""
    rows = rows[: args.probe_rows]
    vectors = embed(args.mirante, args.model, [os.path.join(args.data, r["file_name"]) for r in rows])
    single = [i for i, r in enumerate(rows) if r["objects"] == 1]
    print(f"linear probes on the image embeddings of {len(rows)} scenes (5-fold accuracy / majority class):")
    for name, idx, labels in [
        ("number of objects", list(range(len(rows))), [r["objects"] for r in rows]),
        ("shape, one-object scenes", single, [rows[i]["shapes"] for i in single]),
        ("colour, one-object scenes", single, [rows[i]["colors"] for i in single]),
    ]:
        y = np.array(labels)
        accuracy = cross_val_score(LogisticRegression(max_iter=3000, C=10), vectors[idx], y, cv=5).mean()
        majority = max(collections.Counter(labels).values()) / len(labels)
        print(f"  {name}: {accuracy:.3f} / {majority:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a `mirante dataset shapes` output folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--mirante", default="target/release/mirante")
    ap.add_argument("--examples", type=int, default=10)
    ap.add_argument("--probe-rows", type=int, default=1200)
    args = ap.parse_args()
    with open(os.path.join(args.data, "metadata.jsonl")) as f:
        every = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in every if r["split"] == args.split]
    captions, gold = [], []
    for i, r in enumerate(rows):
        for t in r["text"]:
            captions.append(t)
            gold.append(i)
    vectors = embed(
        args.mirante, args.model, [os.path.join(args.data, r["file_name"]) for r in rows], captions
    )
    images, texts = vectors[: len(rows)], vectors[len(rows) :]
    first = (texts @ images.T).argmax(axis=1)
    counts = collections.Counter()
    by_language = collections.Counter()
    examples = []
    for q, (g, t) in enumerate(zip(gold, first)):
        if g == t:
            counts["right"] += 1
            continue
        k = kind(rows[g], rows[t])
        counts[k] += 1
        by_language[(rows[g]["language"], k)] += 1
        if len(examples) < args.examples:
            examples.append((captions[q], rows[g]["text"][0], rows[t]["text"][0]))
    total = len(captions)
    print(f"{total} captions of {len(rows)} {args.split} images; recall@1 {counts['right'] / total:.4f}")
    print("wrong first image, by how it differs from the right one:")
    for k, v in counts.most_common():
        if k == "right":
            continue
        langs = ", ".join(
            f"{lang} {by_language[(lang, k)]}" for lang in sorted({l for l, _ in by_language})
        )
        print(f"  {v:5d}  {k}  ({langs})")
    print("examples (query / a caption of the right image / a caption of the first image):")
    for q, g, t in examples:
        print(f"  {q}\n    right: {g}\n    first: {t}")
    probes(args, every)


if __name__ == "__main__":
    main()
