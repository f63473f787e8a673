"""Benchmarks of the Python package, each against its peer in the same run:

1. the per-call overhead of ``Collection.search`` from Python over the Rust API: the same top-10
   text searches on the same database (``--rows`` rows, the built-in model), timed through the
   Rust API by ``api_search_bench`` and through Python in the same run;
2. ``Result.to_arrow()`` of a 10,000-row ``SELECT``;
3. four Python threads searching one database against one thread;
4. flat and filtered vector searches against LanceDB's Python API on the same vectors (the
   collection's stored image vectors, read with ``Collection.embeddings``).

    python bindings/python/bench/bench_python.py [--rows 100000] [--queries 50] [--out DIR]

Needs the package built in release (``maturin develop --release -m bindings/python/Cargo.toml``),
``lancedb`` (``pip install lancedb==0.40.0``), and two release binaries: the ``mirante``
command-line tool, which renders the images, and ``api_search_bench``
(``cargo build --release -p mirante-cli -p mirante-tests --bins``; ``MIRANTE_BIN`` and
``MIRANTE_API_BENCH`` override where they are looked for).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

import mirante

REPO = Path(__file__).resolve().parents[3]


def release_binary(name: str, variable: str) -> str:
    for c in (os.environ.get(variable), REPO / "target/release" / name):
        if c and Path(c).is_file():
            return str(c)
    raise SystemExit(f"build target/release/{name} or set {variable}")


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def rows_table(data: Path, rows: int, seed: int) -> pa.Table:
    """``rows`` rows drawn from the rendered scenes: image paths, captions, a 10% test split."""
    scenes = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    picked = [rng.choice(scenes) for _ in range(rows)]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.table(
        {
            "image": pa.array(
                [{"bytes": None, "path": str(data / s["file_name"])} for s in picked],
                type=image_type,
            ),
            "text": [s["text"] for s in picked],
            "split": ["test" if rng.random() < 0.1 else "train" for _ in range(rows)],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="mirante-pybench-"))
    if work.exists():
        shutil.rmtree(work)
    data = work / "data"
    subprocess.run(
        [release_binary("mirante", "MIRANTE_BIN"), "dataset", "shapes", "--out", str(data)]
        + ["--rows", "3000", "--seed", "3"],
        check=True,
        capture_output=True,
    )
    db = mirante.connect(work / "bench.db", progress=False)
    coll = db.create_collection("shapes", index="Flat")
    started = time.perf_counter()
    coll.add(rows_table(data, args.rows, seed=1))
    db.execute("COMPACT shapes")
    print(f"# Python package benchmarks: {args.rows} rows, built-in model")
    print(f"(added in {time.perf_counter() - started:.0f} s)\n")
    scenes = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    queries = [s["text"][0] for s in scenes[: args.queries]]

    # 1. Python over the Rust API, per call: the same searches, rounds and warm-up.
    rounds = 3
    query_file = work / "queries.txt"
    query_file.write_text("\n".join(queries) + "\n")
    rust = json.loads(
        subprocess.run(
            [
                release_binary("api_search_bench", "MIRANTE_API_BENCH"),
                str(work / "bench.db"),
                "shapes",
                str(query_file),
                "10",
                str(rounds),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    for q in queries[:5]:
        coll.search(text=q, limit=10)
    walls, engines = [], []
    for _ in range(rounds):
        for q in queries:
            t0 = time.perf_counter()
            r = coll.search(text=q, limit=10)
            walls.append(time.perf_counter() - t0)
            engines.append(sum(r.timings.values()))
    wall, rust_wall = statistics.median(walls), rust["wall"]
    print(f"## Collection.search(text=..., limit=10), median of {len(walls)} searches\n")
    print("| part | ms |\n|---|---|")
    print(f"| Python call, end to end | {wall * 1e3:.3f} |")
    print(f"| the same searches through the Rust API | {rust_wall * 1e3:.3f} |")
    overhead = wall - rust_wall
    share = 100 * overhead / rust_wall
    print(f"| Python's overhead per call | {overhead * 1e3:.3f} ({share:.1f}%) |")
    print("| the engine's timed parts (embed + search + fetch), Python / Rust | ", end="")
    print(f"{median_ms(engines):.3f} / {rust['engine'] * 1e3:.3f} |\n")

    # 2. to_arrow of 10,000 rows.
    result = db.execute("SELECT id, text, split FROM shapes LIMIT 10000")
    conversions = []
    for _ in range(10):
        t0 = time.perf_counter()
        table = result.to_arrow()
        conversions.append(time.perf_counter() - t0)
    assert table.num_rows == 10_000
    print(f"## Result.to_arrow() of 10,000 rows: {median_ms(conversions):.2f} ms\n")

    # 3. Threads.
    def searches(qs: list[str]) -> None:
        for q in qs:
            coll.search(text=q, limit=10)

    n = len(queries)
    t0 = time.perf_counter()
    searches(queries * 4)
    one_thread = time.perf_counter() - t0
    threads = [threading.Thread(target=searches, args=(queries,)) for _ in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    four_threads = time.perf_counter() - t0
    speedup = one_thread / four_threads
    print(f"## {4 * n} searches: one thread {4 * n / one_thread:.0f}/s, four threads ", end="")
    print(f"{4 * n / four_threads:.0f}/s ({speedup:.2f}x) on {os.cpu_count()} cores\n")

    # 4. LanceDB on the same vectors.
    ids, vectors = coll.embeddings()
    splits = db.execute("SELECT id, split FROM shapes").to_arrow()
    split_of = dict(
        zip(splits.column("id").to_pylist(), splits.column("split").to_pylist(), strict=True)
    )
    dim = vectors.shape[1]
    lance = lancedb.connect(str(work / "lance"))
    table = lance.create_table(
        "shapes",
        pa.table(
            {
                "id": pa.array(ids),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.ravel(), type=pa.float32()), dim
                ),
                "split": [split_of[i] for i in ids.tolist()],
            }
        ),
    )
    query_vectors = db.embed(texts=queries)

    def timed(run) -> float:
        for qv in query_vectors[:3]:
            run(qv)
        samples = []
        for qv in query_vectors:
            t0 = time.perf_counter()
            run(qv)
            samples.append(time.perf_counter() - t0)
        return median_ms(samples)

    cases = {
        "flat, top 10": (
            lambda qv: coll.search(vector=qv, limit=10).to_arrow(),
            lambda qv: table.search(qv).distance_type("cosine").limit(10).to_arrow(),
        ),
        "filtered (split = 'test', about 10% of rows), top 10": (
            lambda qv: coll.search(vector=qv, limit=10, where="split = 'test'").to_arrow(),
            lambda qv: (
                table.search(qv)
                .distance_type("cosine")
                .where("split = 'test'", prefilter=True)
                .limit(10)
                .to_arrow()
            ),
        ),
    }
    print("## Vector search against LanceDB", lancedb.__version__, "(median ms per query)\n")
    print("| search | Mirante | LanceDB | LanceDB / Mirante |\n|---|---|---|---|")
    for name, (ours, theirs) in cases.items():
        a, b = timed(ours), timed(theirs)
        print(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    same = [
        set(coll.search(vector=qv, limit=10).to_arrow().column("id").to_pylist())
        == set(table.search(qv).distance_type("cosine").limit(10).to_arrow()["id"].to_pylist())
        for qv in query_vectors
    ]
    print(f"\nsame top 10 ids in {sum(same)} of {len(same)} queries")
    if args.out is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
