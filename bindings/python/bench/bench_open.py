"""Open-to-first-result: the time from opening a database to the first search's hits, on a
collection of ``--rows`` 384-d vectors (precomputed, so no model runs), stored

- in a local folder (warm page cache: the files were just written);
- on S3, a moto server on loopback (a fresh cache folder: every file is downloaded);
- on S3 again with the cache folder of the previous run (nothing to download).

    python bindings/python/bench/bench_open.py [--rows 100000] [--dim 384]

Each figure is one cold open in a new process, so no handle's caches help. Needs the package and
``moto[server]``; the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa

import mirante

# Runs in a new process: opens the database, searches once, prints the seconds of each part.
PROBE = """
import json, sys, time
import numpy as np
import mirante
start = time.perf_counter()
db = mirante.connect(sys.argv[1], progress=False)
opened = time.perf_counter()
query = np.load(sys.argv[2])
hits = db.collection("vectors").search(vector=query, limit=10).to_pylist()
done = time.perf_counter()
print(json.dumps({"open": opened - start, "first_search": done - opened, "hits": len(hits)}))
"""


def probe(location: str, query: Path, cache: Path) -> dict[str, float]:
    env = {**os.environ, "MIRANTE_CACHE_DIR": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, location, str(query)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout)
    assert result["hits"] == 10
    return result


def fill(db: mirante.Database, rows: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    db.execute("CREATE COLLECTION vectors WITH (model = NULL)")
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)
    table = pa.table(
        {
            "image": pa.nulls(rows, pa.string()),
            "text": pa.array([[f"row {i}"] for i in range(rows)]),
            "vector": column,
            "captions": pa.array([[v] for v in vectors.tolist()]),
        }
    )
    db.collection("vectors").add(table, embeddings=("vector", "captions", "random"))
    return vectors[0]


def moto(root: Path) -> subprocess.Popen[bytes]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ALLOW_HTTP": "true",
        }
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = moto(root)
        try:
            local = str(root / "local.db")
            query = fill(mirante.connect(local, progress=False), args.rows, args.dim)
            np.save(root / "query.npy", query)
            os.environ["MIRANTE_CACHE_DIR"] = str(root / "writer-cache")
            fill(mirante.connect("s3://bench/db", progress=False), args.rows, args.dim)
            q = root / "query.npy"
            results = {
                "local folder": probe(local, q, root / "unused"),
                "S3 (moto, loopback), empty cache": probe("s3://bench/db", q, root / "c1"),
                "S3 (moto, loopback), warm cache": probe("s3://bench/db", q, root / "c1"),
            }
        finally:
            server.terminate()
    print(f"{args.rows} rows x {args.dim}, seconds:")
    for name, r in results.items():
        total = r["open"] + r["first_search"]
        print(
            f"{name:36s} open {r['open']:6.3f}  first search {r['first_search']:6.3f}  "
            f"total {total:6.3f}"
        )


if __name__ == "__main__":
    main()
