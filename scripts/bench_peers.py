#!/usr/bin/env python3
"""Peer measurements for Mirante's storage benchmark (tests/src/bin/storage_bench.rs).

The Rust bench writes the exact vectors and queries it uses to <dir>/vectors.f32 and
<dir>/queries.f32 (raw little-endian float32, row-major) and runs this script in the same run.
Prints one JSON object: faiss-cpu (PyPI) IndexFlatIP single-query and 1000-query batch times,
and LanceDB brute-force single-query time, on those vectors.

Needs: pip install faiss-cpu==1.15.1 numpy lancedb==0.40.0
"""
import json
import sys
import tempfile
import time

import numpy as np


def median_time(reps, fn):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main():
    folder, dim = sys.argv[1], int(sys.argv[2])
    db = np.fromfile(f"{folder}/vectors.f32", dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(f"{folder}/queries.f32", dtype="<f4").reshape(-1, dim)
    out = {"rows": int(db.shape[0])}

    import faiss

    index = faiss.IndexFlatIP(dim)
    index.add(db)
    nq = 30
    single = median_time(5, lambda: [index.search(queries[i : i + 1], 10) for i in range(nq)]) / nq
    batch = median_time(3, lambda: index.search(queries[:1000], 10))
    out["faiss_cpu"] = {
        "version": faiss.__version__,
        "single_query_ms": single * 1e3,
        "batch_1000_s": batch,
    }

    try:
        import lancedb
        import pyarrow as pa
    except ImportError:
        out["lancedb"] = None
    else:
        with tempfile.TemporaryDirectory() as tmp:
            conn = lancedb.connect(tmp)
            table = conn.create_table(
                "t",
                pa.table(
                    {
                        "id": pa.array(np.arange(db.shape[0], dtype=np.int64)),
                        "vector": pa.FixedSizeListArray.from_arrays(pa.array(db.reshape(-1)), dim),
                    }
                ),
            )
            lq = 5
            run = lambda: [
                table.search(queries[i]).metric("dot").limit(10).to_list() for i in range(lq)
            ]
            run()
            out["lancedb"] = {
                "version": lancedb.__version__,
                "single_query_ms": median_time(3, run) / lq * 1e3,
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
