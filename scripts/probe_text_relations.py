#!/usr/bin/env python3
"""Does a model's text embedding encode which object is where?

For random two-object captions "a C1 S1 to the left of a C2 S2", embeds the caption, the swapped
scene ("a C2 S2 to the left of a C1 S1": same words, other meaning) and a paraphrase of the same
scene ("a C2 S2 to the right of a C1 S1"), with `mirante embed`. Prints the mean cosines, and the
5-fold accuracy of a logistic probe telling same-scene pairs from swapped pairs (0.5 = the
embedding holds no trace of the order). ELIP conditions its visual prompts on this embedding and
scores against it, so it cannot separate what the embedding does not.

Usage: python3 scripts/probe_text_relations.py --model <folder or registry path>
       [--mirante target/release/mirante] [--pairs 600]
Needs numpy and scikit-learn.
"""

import argparse
import json
import random
import subprocess

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond"]
COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "black", "white"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--mirante", default="target/release/mirante")
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    texts = []
    for _ in range(args.pairs):
        s1, s2 = rng.sample(SHAPES, 2)
        c1, c2 = rng.sample(COLOURS, 2)
        texts += [
            f"a {c1} {s1} to the left of a {c2} {s2}",
            f"a {c2} {s2} to the left of a {c1} {s1}",
            f"a {c2} {s2} to the right of a {c1} {s1}",
        ]
    cmd = [args.mirante, "embed", "--model", args.model]
    for t in texts:
        cmd += ["--text", t]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    v = np.array([json.loads(line) for line in out.strip().splitlines()])
    v = v.reshape(args.pairs, 3, -1)
    caption, swapped, paraphrase = v[:, 0], v[:, 1], v[:, 2]
    print(f"mean cosine with the swapped scene:       {(caption * swapped).sum(1).mean():.4f}")
    print(f"mean cosine with a same-scene paraphrase: {(caption * paraphrase).sum(1).mean():.4f}")
    features = []
    labels = []
    for a, sw, pa in zip(caption, swapped, paraphrase):
        features.append(np.concatenate([a * pa, np.abs(a - pa)]))
        labels.append(1)
        features.append(np.concatenate([a * sw, np.abs(a - sw)]))
        labels.append(0)
    accuracy = cross_val_score(
        LogisticRegression(max_iter=2000, C=10), np.array(features), np.array(labels), cv=5
    ).mean()
    print(f"probe accuracy, same scene vs swapped (chance 0.5): {accuracy:.3f}")


if __name__ == "__main__":
    main()
