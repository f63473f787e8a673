"""Import throughput with Ray workers against one process, in the same run on the same rows:
the bundled shapes dataset (``--rows`` scenes rendered by the ``mirante`` binary) embedded with
the default model and written into a collection

- by one process, ``Collection.add`` (the engine's threads on every core);
- by ``mirante.ray.write`` with 1, then 2 Ray workers of one thread each
  (``RAYON_NUM_THREADS=1``), so the ratio shows how the build scales with workers and the
  one-worker figure is the per-worker throughput docs/scale-out.md extrapolates from.

    python bindings/python/bench/bench_ray_import.py [--rows 2000] [--blocks 8]

Needs the package with its Ray extra and the ``mirante`` binary (``cargo build``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

import mirante
import mirante.ray

REPO = Path(__file__).resolve().parents[3]


def render(rows: int, out: Path) -> list[dict[str, Any]]:
    binary = shutil.which("mirante") or str(REPO / "target/debug/mirante")
    subprocess.run(
        [binary, "dataset", "shapes", "--out", str(out), "--rows", str(rows)],
        check=True,
        capture_output=True,
    )
    items = []
    for line in (out / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["image"] = str(out / row.pop("file_name"))
        items.append(row)
    return items


def one_process(path: Path, items: list[dict[str, Any]]) -> float:
    db = mirante.connect(path, progress=False)
    images = db.create_collection("images")
    start = time.perf_counter()
    images.add(items)
    return time.perf_counter() - start


def with_ray(path: Path, items: list[dict[str, Any]], workers: int, blocks: int) -> float:
    db = mirante.connect(path, progress=False)
    db.create_collection("images")
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAYON_NUM_THREADS": "1"}},
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items(items, override_num_blocks=blocks).materialize()
        start = time.perf_counter()
        mirante.ray.write(dataset, str(path), "images", concurrency=workers)
        elapsed = time.perf_counter() - start
    finally:
        ray.shutdown()
    assert len(db.collection("images")) == len(items)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = render(args.rows, root / "data")
        single = one_process(root / "single.db", items)
        ray1 = with_ray(root / "ray1.db", items, 1, args.blocks)
        ray2 = with_ray(root / "ray2.db", items, 2, args.blocks)
    rate = args.rows / single
    print(f"{args.rows} rows, {args.blocks} blocks")
    print(f"one process (all cores) : {single:7.2f} s  {rate:7.1f} rows/s")
    print(f"Ray, 1 worker x 1 thread: {ray1:7.2f} s  {args.rows / ray1:7.1f} rows/s")
    print(f"Ray, 2 workers x 1 thread: {ray2:6.2f} s  {args.rows / ray2:7.1f} rows/s")
    print(
        f"2 workers / 1 worker: {ray1 / ray2:.2f}x;  2 workers / one process: {single / ray2:.2f}x"
    )


if __name__ == "__main__":
    main()
