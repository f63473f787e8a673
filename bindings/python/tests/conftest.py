"""Fixtures of the Python package's tests: the repository's committed data (the tiny CLIP
checkpoint with transformers' reference embeddings, real photographs, a Hugging Face parquet
dataset) and fresh databases."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import mirante

# The tests read committed files only; `datasets` must not look for the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[3]
TINY_CLIP = REPO / "training/tests/fixtures/clip-tiny"
PHOTOS = REPO / "training/tests/fixtures/images"
HF_PARQUET = REPO / "tests/fixtures/import/hf_parquet"


def cli() -> Path:
    """The `mirante` binary the Rust test suite built (`MIRANTE_BIN` overrides)."""
    explicit = os.environ.get("MIRANTE_BIN")
    candidates = [Path(explicit)] if explicit else []
    candidates += [REPO / "target/debug/mirante", REPO / "target/release/mirante"]
    for c in candidates:
        if c.is_file():
            return c
    found = shutil.which("mirante")
    if found:
        return Path(found)
    raise RuntimeError(
        "no mirante binary: run `cargo build --bin mirante` first (or set MIRANTE_BIN)"
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[mirante.Database]:
    yield mirante.connect(tmp_path / "db", progress=False)


@pytest.fixture
def images(db: mirante.Database) -> mirante.Collection:
    """Collection `images` of the tiny CLIP holding the parquet fixture (6 rows, 9 captions)."""
    collection = db.create_collection("images", model=str(TINY_CLIP))
    db.execute(f"IMPORT INTO images FROM '{HF_PARQUET}'")
    return collection


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[mirante.Database, Path]:
    """The bundled dataset (80 scenes, `mirante dataset shapes`) in collection `shapes`."""
    root = tmp_path_factory.mktemp("shapes")
    data = root / "data"
    subprocess.run(
        [str(cli()), "dataset", "shapes", "--out", str(data), "--rows", "80"],
        check=True,
        capture_output=True,
    )
    db = mirante.connect(root / "db", progress=False)
    db.sql(f"CREATE COLLECTION shapes; IMPORT INTO shapes FROM '{data}'")
    return db, data


def first_image(data: Path) -> Path:
    """The shapes dataset's first image file."""
    line = (data / "metadata.jsonl").read_text().splitlines()[0]
    return data / json.loads(line)["file_name"]


def search_ids(db: mirante.Database, clauses: str) -> list[int]:
    """The ids `SEARCH shapes <clauses>` returns, in rank order."""
    return [r["id"] for r in db.execute(f"SEARCH shapes {clauses}").to_pylist()]


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """`examples/python/<name>.py` as a module, run as its command line would (its folder on
    the path for its helpers, the test build's `mirante` binary rendering datasets)."""
    folder = REPO / "examples/python"
    monkeypatch.setenv("MIRANTE_BIN", str(cli()))
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
