"""Writing Ray Datasets into a Mirante collection from many workers at once.

``pip install mirante[ray]``. Each write task opens the database inside its worker (once per
worker process), embeds its blocks with the collection's model (on the worker's GPU when it
has one) and writes them as segments without the writer lock
(:meth:`mirante.Collection.build_segments`); the driver then publishes every task's segments in
one commit (:meth:`mirante.Database.publish`). Readers see all the rows or none. A task that
dies is retried by Ray; what it had written is never published (``VACUUM`` removes it once
older than the grace period), so no row is lost or duplicated::

    import ray
    import mirante.ray

    ds = ray.data.read_parquet("s3://bucket/captions/")      # image paths or bytes + text
    mirante.ray.write(ds, "/shared/photos.db", "images", text_column="caption",
                      ray_remote_args={"num_gpus": 1})

Re-embedding an existing collection is spread the same way: :func:`embed` shares its
segments among Ray tasks and attaches their vectors in one commit::

    mirante.ray.embed("/shared/photos.db", "images", "org/better-clip",
                      ray_remote_args={"num_gpus": 1})

Every worker must reach the database: an object-storage URI (``s3://bucket/prefix``) or a
folder on a shared file system (docs/scale-out.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import ray
from ray.data import Dataset
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

from . import BuiltColumns, BuiltSegments, Database, _table_of_frame, connect

__all__ = ["MiranteDatasink", "embed", "write"]

# One open database per worker process and path: a handle caches the loaded model, which
# every task of the worker reuses.
_handles: dict[tuple[str, str | None], Database] = {}
_handles_lock = threading.Lock()


def _database(path: str, device: str | None) -> Database:
    with _handles_lock:
        key = (path, device)
        if key not in _handles:
            _handles[key] = connect(path, device=device, progress=False)
        return _handles[key]


def _arrow_block(block: Block, image_column: str) -> pa.Table:
    """A block as Mirante takes it: Arrow, with images Ray keeps as tensors (``read_images``)
    encoded losslessly."""
    accessor = BlockAccessor.for_block(block)
    table = accessor.to_arrow()
    if image_column in table.column_names and isinstance(
        table.schema.field(image_column).type, pa.ExtensionType
    ):
        return _table_of_frame(accessor.to_pandas(), image_column)
    return table


class MiranteDatasink(Datasink[list[BuiltSegments]]):
    """A Ray Data sink that adds a dataset's rows to ``collection`` of the database at
    ``path``, built in parallel by the write tasks and published in one commit when they all
    succeed. The options are :meth:`mirante.Collection.add`'s; ``device`` chooses where the
    workers embed (``"cuda"``, ``"cpu"``; by default ``MIRANTE_DEVICE`` or the CPU)."""

    def __init__(
        self,
        path: str,
        collection: str,
        *,
        image_column: str = "image",
        text_column: str | None = None,
        split: str | None = None,
        columns: list[str] | None = None,
        embeddings: tuple[str, str, str] | None = None,
        skip_errors: bool = False,
        device: str | None = None,
    ) -> None:
        self.path = str(path)
        self.collection = collection
        self.options: dict[str, Any] = {
            "image_column": image_column,
            "text_column": text_column,
            "split": split,
            "columns": columns,
            "embeddings": embeddings,
            "skip_errors": skip_errors,
        }
        self.device = device
        #: The version the rows were published in (set on the driver once the write ends).
        self.version: int | None = None
        #: Every task's built segments, as published.
        self.built: list[BuiltSegments] = []

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        # Fail before any task runs when the collection is missing.
        _database(self.path, None).collection(self.collection)

    def write(self, blocks: Iterable[Block], ctx: Any) -> list[BuiltSegments]:
        collection = _database(self.path, self.device).collection(self.collection)
        image_column = self.options["image_column"]
        return [
            collection.build_segments(_arrow_block(block, image_column), **self.options)
            for block in blocks
            if BlockAccessor.for_block(block).num_rows() > 0
        ]

    def on_write_complete(self, write_result: WriteResult[list[BuiltSegments]]) -> None:
        self.built = [b for task in write_result.write_returns for b in task]
        self.version = _database(self.path, None).publish(self.built)

    def get_name(self) -> str:
        return "Mirante"


def write(
    dataset: Dataset,
    path: str,
    collection: str,
    *,
    concurrency: int | None = None,
    ray_remote_args: dict[str, Any] | None = None,
    **options: Any,
) -> MiranteDatasink:
    """Adds ``dataset``'s rows to ``collection`` (see :class:`MiranteDatasink` for
    ``options``) with ``concurrency`` write tasks at a time, each with ``ray_remote_args``
    (``{"num_gpus": 1}`` to embed on GPUs). Returns the sink, whose ``version`` is the
    publishing commit and ``built`` the segments it published."""
    sink = MiranteDatasink(path, collection, **options)
    dataset.write_datasink(sink, concurrency=concurrency, ray_remote_args=ray_remote_args or {})
    return sink


def _embed_task(
    path: str, collection: str, model: str, segments: list[int], device: str | None
) -> list[BuiltColumns]:
    return _database(path, device).collection(collection).embed_segments(model, segments)


def embed(
    path: str,
    collection: str,
    model: str,
    *,
    switch: bool = True,
    segments_per_task: int = 1,
    device: str | None = None,
    ray_remote_args: dict[str, Any] | None = None,
) -> str:
    """``REEMBED`` (or, without ``switch``, ``EMBED``) of an existing collection with
    ``model``, its segments shared among Ray tasks (``segments_per_task`` each, run with
    ``ray_remote_args``, for example ``{"num_gpus": 1}``). Searches keep using the current
    model until the one commit that attaches every task's vectors and switches. Returns the
    status message."""
    target = _database(path, None).collection(collection)
    segments = target.prepare_embedding(model)
    task = ray.remote(_embed_task).options(**(ray_remote_args or {}))
    step = max(1, segments_per_task)
    pending = [
        task.remote(path, collection, model, segments[i : i + step], device)
        for i in range(0, len(segments), step)
    ]
    built = [b for result in ray.get(pending) for b in result]
    return target.publish_embedding(model, built, switch=switch)
