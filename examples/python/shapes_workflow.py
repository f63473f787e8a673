"""The classic image-text retrieval workflow with Mirante from Python, offline, on the bundled
shapes dataset: load it with Hugging Face `datasets`, add it to a collection, search text to
image and image to text, evaluate into pandas, fine-tune on the train split, re-embed, compare
both models, and write an HTML report of the comparison.

    python examples/python/shapes_workflow.py [--rows 3000] [--epochs 5] [--out shapes-py]

Needs the `mirante` package (`pip install ./bindings/python`) with `datasets` and `pandas`, and
the `mirante` command-line tool, which renders the dataset (`MIRANTE_BIN`, else `mirante` on the
PATH, else this repository's `target/release/mirante` or `target/debug/mirante`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import datasets
import mirante
import pandas as pd
from shapes_data import render_shapes


def step(title: str) -> None:
    print(f"\n== {title}")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("shapes-py"))
    args = parser.parse_args(argv)
    pd.set_option("display.width", 160)
    pd.set_option("display.max_colwidth", 60)

    step("the dataset: rendered shape scenes with English and Portuguese captions")
    data = args.out / "data"
    if args.out.exists():
        shutil.rmtree(args.out)
    render_shapes(data, args.rows, seed=1)
    dataset = datasets.load_dataset("imagefolder", data_dir=str(data), split="train")
    print(dataset)

    step("a collection with the built-in model, and the dataset added to it")
    db = mirante.connect(args.out / "shapes.db")
    shapes = db.create_collection("shapes")
    ids = shapes.add(dataset)
    print(f"added {len(ids)} rows")

    step("search: text to image, then image to text (a PIL image of the test split)")
    hits = shapes.search(
        text="a small red triangle to the left of a blue circle",
        where="split = 'test'",
        limit=5,
    ).to_pandas()
    print(hits[["rank", "id", "score", "text"]])
    test = dataset.filter(lambda row: row["split"] == "test")
    query = test[0]["image"]
    captions = shapes.search(image=query, limit=5).to_pandas()
    print(f"query: the scene captioned {test[0]['text'][0]!r}")
    print(captions[["rank", "id", "score", "matched_text"]])

    step("evaluate the built-in model on the test split")
    print(shapes.evaluate(where="split = 'test'").to_pandas())

    step("fine-tune on the train split, validated on the validation split")
    training = db.execute(
        "FINETUNE MODEL 'mirante-shapes-clip' ON shapes WHERE split = 'train' "
        "VALIDATE WHERE split = 'validation' "
        f"WITH (epochs = {args.epochs}, batch_size = 64, lr = 2e-4, warmup_steps = 20, "
        "hard_negatives = true, seed = 0) AS 'shapes-finetuned'"
    )
    print(training.to_pandas())
    print(training.status)
    print(db.execute("REEMBED shapes USING MODEL 'shapes-finetuned'").status)

    step("both models side by side on the test split, and the report")
    report = args.out / "report.html"
    both = db.execute(
        "EVALUATE recall@1, recall@5, recall@10, mrr, ndcg@10 ON shapes WHERE split = 'test' "
        f"USING MODEL 'mirante-shapes-clip', 'shapes-finetuned' INTO '{report}'"
    )
    frame = both.to_pandas()
    print(
        frame[["model", "direction", "recall@1", "recall@10", "mrr", "delta_recall@1"]]
    )
    print(f"report: {report}")
    return frame


if __name__ == "__main__":
    main()
