#!/usr/bin/env python3
"""Writes the import fixtures under tests/fixtures/import/ with the real `datasets` library, so
the tests prove Mirante reads what Hugging Face writes:

- hf_parquet/data/{train,test}-00000-of-00001.parquet: a dataset with an `Image()` column
  (struct {bytes, path}), a `text` column holding a list of captions, and metadata columns,
  saved with Dataset.to_parquet in the Hub's data/ layout.
- photos/: small JPEG/PNG photographs from scikit-image (downscaled to keep the repo small),
  used by the imagefolder, CSV and JSONL import tests, which write their metadata files at run
  time.

Usage: python3 scripts/make_import_fixtures.py   (needs datasets, pillow, scikit-image)
"""
import io
import os

import datasets
import skimage.data
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "import")

# (skimage name, file name, captions, artist-ish metadata)
PHOTOS = [
    ("astronaut", "astronaut.jpg", ["an astronaut in a white suit", "a woman posing with a flag"], 1983),
    ("chelsea", "chelsea.png", ["a tabby cat looking sideways", "um gato listrado"], 2010),
    ("coffee", "coffee.jpg", ["a cup of coffee on a saucer"], 2009),
    ("rocket", "rocket.jpg", ["a rocket on the launch pad"], 1969),
    ("camera", "camera.png", ["a man with a camera on a tripod", "black and white photograph"], 1990),
    ("horse", "horse.png", ["the silhouette of a horse"], 2000),
]


def small(name):
    img = skimage.data.__getattribute__(name)()
    pil = Image.fromarray(img)
    pil.thumbnail((96, 96))
    return pil


def main():
    photos = os.path.join(ROOT, "photos")
    os.makedirs(photos, exist_ok=True)
    for name, file_name, _, _ in PHOTOS:
        img = small(name)
        if file_name.endswith(".jpg"):
            img.convert("RGB").save(os.path.join(photos, file_name), quality=90)
        else:
            img.save(os.path.join(photos, file_name))

    def split_rows(names):
        rows = {"image": [], "text": [], "year": [], "source": []}
        for name, file_name, captions, year in PHOTOS:
            if name not in names:
                continue
            buf = io.BytesIO()
            small(name).convert("RGB").save(buf, format="JPEG", quality=90)
            rows["image"].append({"bytes": buf.getvalue(), "path": file_name})
            rows["text"].append(captions)
            rows["year"].append(year)
            rows["source"].append("skimage." + name)
        return rows

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Sequence(datasets.Value("string")),
            "year": datasets.Value("int32"),
            "source": datasets.Value("string"),
        }
    )
    data = os.path.join(ROOT, "hf_parquet", "data")
    os.makedirs(data, exist_ok=True)
    train = ["astronaut", "chelsea", "coffee", "rocket"]
    test = ["camera", "horse"]
    for split, names in (("train", train), ("test", test)):
        ds = datasets.Dataset.from_dict(split_rows(names), features=features)
        ds.to_parquet(os.path.join(data, f"{split}-00000-of-00001.parquet"))
    write_vectors(split_rows(train + test))
    print("wrote", ROOT)


def write_vectors(rows):
    """vectors.parquet: the photos with precomputed embeddings made "elsewhere" (8-d): each
    caption's vector is its image's plus a little noise, so every pair retrieves its partner.
    The image column is a fixed-size list, the caption column a list of lists."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    dim = 8
    image_vecs = rng.standard_normal((len(rows["image"]), dim)).astype(np.float32)
    text_vecs = [
        [(v + 0.05 * rng.standard_normal(dim)).astype(np.float32).tolist() for _ in captions]
        for v, captions in zip(image_vecs, rows["text"])
    ]
    table = pa.table(
        {
            "image": pa.array(rows["image"]),
            "text": pa.array(rows["text"], type=pa.list_(pa.string())),
            "img_emb": pa.array(image_vecs.tolist(), type=pa.list_(pa.float32(), dim)),
            "txt_emb": pa.array(text_vecs, type=pa.list_(pa.list_(pa.float32()))),
            "year": pa.array(rows["year"], type=pa.int32()),
        }
    )
    pq.write_table(table, os.path.join(ROOT, "vectors.parquet"))


if __name__ == "__main__":
    main()
