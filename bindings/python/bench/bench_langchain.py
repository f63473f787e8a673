"""The LangChain vector store against langchain-core's ``InMemoryVectorStore`` in the same run,
on the same documents and vectors: adding ``--docs`` documents, top-4 ``similarity_search``
(with and without a metadata filter) and an upsert of 1% of the documents by id.

    python bindings/python/bench/bench_langchain.py [--docs 20000] [--dim 384] [--queries 100]

The embedding is a table lookup of precomputed random vectors, so both stores spend their time
storing and searching, not embedding. Needs the package with its LangChain extra (built in
release for representative numbers: ``maturin develop --release -m bindings/python/Cargo.toml``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore

import mirante
from mirante.langchain import MiranteVectorStore


class TableEmbeddings(Embeddings):
    """Vectors looked up by text: the documents' and the queries' precomputed ones."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[text]


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def measure(
    store: VectorStore, documents: list[Document], queries: list[str], upsert: list[Document]
) -> dict[str, float]:
    ids = [d.id for d in documents]
    out = {"add": timed(lambda: store.add_documents(documents, ids=ids))}
    out["search"] = median_ms([timed(lambda q=q: store.similarity_search(q, k=4)) for q in queries])
    out["filtered"] = median_ms(
        [timed(lambda q=q: store.similarity_search(q, k=4, filter=_filter(store))) for q in queries]
    )
    out["upsert"] = timed(lambda: store.add_documents(upsert, ids=[d.id for d in upsert]))
    return out


def _filter(store: VectorStore) -> object:
    """Documents of one decade: a dict for Mirante (applied before ranking), a function over
    documents for the in-memory store (its only filter)."""
    if isinstance(store, MiranteVectorStore):
        return {"decade": 1950}
    return lambda doc: doc.metadata["decade"] == 1950


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.docs + args.queries, args.dim)).astype(np.float32)
    texts = [f"document {i}" for i in range(args.docs)]
    queries = [f"query {i}" for i in range(args.queries)]
    table = dict(zip(texts + queries, vectors.tolist(), strict=True))
    documents = [
        Document(id=str(i), page_content=t, metadata={"decade": 1900 + 10 * (i % 10), "n": i})
        for i, t in enumerate(texts)
    ]
    upsert = [
        Document(id=d.id, page_content=d.page_content, metadata={**d.metadata, "edited": True})
        for d in documents[::100]
    ]
    embedding = TableEmbeddings(table)
    with tempfile.TemporaryDirectory() as tmp:
        db = mirante.connect(Path(tmp) / "db", progress=False)
        results = {
            "Mirante": measure(
                MiranteVectorStore(db, "docs", embedding), documents, queries, upsert
            ),
            "InMemoryVectorStore": measure(
                InMemoryVectorStore(embedding), documents, queries, upsert
            ),
        }
    mine, peer = results["Mirante"], results["InMemoryVectorStore"]
    print(f"{args.docs} documents, {args.dim}-d, {args.queries} queries, {len(upsert)} upserted")
    print(f"{'':34} {'Mirante':>10} {'InMemory':>10} {'ratio':>7}")
    for key, what, unit in (
        ("add", "add_documents (all)", "s"),
        ("search", "similarity_search k=4 (median)", "ms"),
        ("filtered", "  with a metadata filter (median)", "ms"),
        ("upsert", "add_documents of existing ids", "s"),
    ):
        ratio = peer[key] / mine[key]
        print(f"{what:34} {mine[key]:>9.3f}{unit:<1} {peer[key]:>9.3f}{unit:<1} {ratio:>6.2f}x")


if __name__ == "__main__":
    main()
