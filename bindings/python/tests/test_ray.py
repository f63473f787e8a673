"""Distributed import with Ray: a local Ray cluster's workers build segments of one collection
at once, the driver publishes them in one commit; a worker killed in the middle of its write
is retried without losing or duplicating rows."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

import mirante
from mirante.ray import MiranteDatasink, embed, write

from conftest import TINY_CLIP

QUERIES = ["a red circle", "two blue squares", "a green triangle above a yellow star"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster with two worker processes."""
    # Workers unpickle this module's sink subclass by value (it is not importable there).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def shapes_rows(data: Path) -> list[dict[str, Any]]:
    rows = []
    for line in (data / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["image"] = str(data / row.pop("file_name"))
        rows.append(row)
    return rows


def stored(db: mirante.Database, collection: str) -> list[dict[str, Any]]:
    """A collection's rows without their ids, in a canonical order."""
    rows = db.execute(f"SELECT * FROM {collection}").to_pylist()
    for r in rows:
        del r["id"]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def hits(db: mirante.Database, collection: str, query: str) -> list[tuple[str, float]]:
    """Captions and scores of a search (ids aside; ties ordered by caption)."""
    result = db.execute(f"SEARCH {collection} BY TEXT '{query}' LIMIT 80").to_pylist()
    return sorted((json.dumps(r["text"]), round(r["score"], 6)) for r in result)


def single_process(tmp_path: Path, data: Path) -> mirante.Database:
    db = mirante.connect(tmp_path / "db", progress=False)
    db.sql(
        f"CREATE COLLECTION single; IMPORT INTO single FROM '{data}'; CREATE COLLECTION parallel"
    )
    return db


def built_files(db: mirante.Database) -> set[str]:
    return {p.name for p in (db.path / "files").iterdir() if p.name.startswith("s")}


def test_two_workers_import_the_bundled_dataset_like_one_process(
    cluster: None, shapes: tuple[mirante.Database, Path], tmp_path: Path
) -> None:
    _, data = shapes
    db = single_process(tmp_path, data)
    dataset = ray.data.from_items(shapes_rows(data), override_num_blocks=4)
    sink = write(dataset, str(db.path), "parallel", concurrency=2)
    assert sink.version is not None
    assert sum(b.rows for b in sink.built) == 80
    assert len(sink.built) == 4, "one build per block"
    assert stored(db, "parallel") == stored(db, "single")
    ids = sorted(i for b in sink.built for i in b.ids)
    assert len(set(ids)) == 80
    assert ids == sorted(r["id"] for r in db.execute("SELECT id FROM parallel").to_pylist())
    for query in QUERIES:
        assert hits(db, "parallel", query) == hits(db, "single", query), query
    # Every built file is part of the database: nothing was left over.
    snapshot_files = built_files(db)
    assert snapshot_files, "the published segments are the builders' files"


class KilledOnceSink(MiranteDatasink):
    """Kills its worker process after building its first block's segments and before
    returning them, once across the cluster (the marker file says who did)."""

    def __init__(self, marker: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marker = marker

    def write(self, blocks: Iterable[Any], ctx: Any) -> list[mirante.BuiltSegments]:
        built = super().write(blocks, ctx)
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return built
        with open(self.marker, "w") as f:
            f.write(json.dumps([i for b in built for i in b.ids]))
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def test_a_worker_killed_mid_write_is_retried_without_losing_or_duplicating_rows(
    cluster: None, shapes: tuple[mirante.Database, Path], tmp_path: Path
) -> None:
    _, data = shapes
    db = single_process(tmp_path, data)
    marker = tmp_path / "killed"
    sink = KilledOnceSink(str(marker), str(db.path), "parallel")
    ray.data.from_items(shapes_rows(data), override_num_blocks=4).write_datasink(
        sink, concurrency=2
    )
    # A worker died after writing its segments; Ray ran its task again.
    orphaned_ids = json.loads(marker.read_text())
    assert orphaned_ids
    published = sorted(r["id"] for r in db.execute("SELECT id FROM parallel").to_pylist())
    assert len(published) == 80 == len(set(published))
    assert not set(orphaned_ids) & set(published), "the killed attempt's rows are not published"
    assert stored(db, "parallel") == stored(db, "single")
    for query in QUERIES:
        assert hits(db, "parallel", query) == hits(db, "single", query), query
    # The killed attempt's files are orphans, kept for the grace period and never read.
    referenced = {f for b in sink.built for f in built_names(b)}
    orphans = built_files(db) - referenced
    assert orphans, "the killed attempt wrote files"
    db.execute("VACUUM")
    assert orphans <= built_files(db), "young builds survive a vacuum (they may be running)"


def built_names(built: mirante.BuiltSegments) -> Iterable[str]:
    description = json.loads(built.data)
    for segment in description["segments"]:
        for key in ("rows_file", "blob_file"):
            yield segment[key]["name"]
        for column in segment["columns"]:
            yield column["file"]["name"]
            if column["index"]:
                yield column["index"]["file"]["name"]


def test_stale_segments_are_refused_at_publishing(
    shapes: tuple[mirante.Database, Path], tmp_path: Path
) -> None:
    _, data = shapes
    db = mirante.connect(tmp_path / "db", progress=False)
    target = db.create_collection("target")
    rows = shapes_rows(data)[:10]
    built = target.build_segments(rows)
    assert built.rows == 10 and len(target) == 0
    # The model changes between building and publishing: the vectors would not fit.
    db.execute(f"REEMBED target USING MODEL '{TINY_CLIP}'")
    with pytest.raises(mirante.InvalidInputError, match="model changed after they were built"):
        db.publish([built])
    assert len(target) == 0


def test_reembedding_spread_over_ray_tasks_equals_reembed(
    cluster: None, shapes: tuple[mirante.Database, Path], tmp_path: Path
) -> None:
    _, data = shapes
    db = mirante.connect(tmp_path / "db", progress=False)
    for name in ("plain", "parallel"):
        db.execute(f"CREATE COLLECTION {name}")
        for _ in range(3):
            db.execute(f"IMPORT INTO {name} FROM '{data}'")
    db.execute(f"REEMBED plain USING MODEL '{TINY_CLIP}'")
    status = embed(str(db.path), "parallel", str(TINY_CLIP), segments_per_task=1)
    assert status.startswith("published 6 segment columns"), status
    assert db.collection("parallel").model == str(TINY_CLIP)
    for query in QUERIES:
        assert hits(db, "parallel", query) == hits(db, "plain", query), query
