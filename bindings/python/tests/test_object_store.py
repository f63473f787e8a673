"""Databases on S3, against a real S3-compatible server (moto's) that the tests start on
loopback: two machines (two cache folders, two processes) share one database; writers racing
on it lose no acknowledged commit; a writer killed with SIGKILL loses nothing it acknowledged;
a damaged object is a corruption error, never a silent fallback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import mirante

BUCKET = "mirante"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback with bucket `mirante`; yields the environment that points
    clients at it (the variables the AWS SDKs and `object_store` read)."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
    }
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client().create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(timeout=10)


def client() -> Any:
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def on_machine(uri: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> mirante.Database:
    """The database at `uri` as a machine with its own cache folder sees it."""
    monkeypatch.setenv("MIRANTE_CACHE_DIR", str(cache))
    return mirante.connect(uri, progress=False)


def shapes_rows(data: Path, count: int) -> list[dict[str, Any]]:
    rows = []
    for line in (data / "metadata.jsonl").read_text().splitlines()[:count]:
        row = json.loads(line)
        rows.append({"image": str(data / row["file_name"]), "text": row["text"]})
    return rows


def searched(db: mirante.Database, query: str) -> list[tuple[str, float]]:
    result = db.execute(f"SEARCH shapes BY TEXT '{query}' LIMIT 20").to_pylist()
    return [(json.dumps(r["text"]), round(r["score"], 6)) for r in result]


def test_a_database_on_s3_is_shared_by_two_machines(
    s3: dict[str, str],
    shapes: tuple[mirante.Database, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local, data = shapes
    uri = f"s3://{BUCKET}/shared"
    a = on_machine(uri, tmp_path / "a", monkeypatch)
    a.sql(f"CREATE COLLECTION shapes; IMPORT INTO shapes FROM '{data}'")
    assert a.path == tmp_path / "a" / a.path.name
    keys = [o["Key"] for o in client().list_objects_v2(Bucket=BUCKET, Prefix="shared/")["Contents"]]
    assert any(k.startswith("shared/_versions/") for k in keys)
    assert any(k.startswith("shared/files/") for k in keys)

    b = on_machine(uri, tmp_path / "b", monkeypatch)
    for query in ["a red circle", "two blue squares"]:
        # The same rows and vectors as the local import of the same folder.
        assert searched(b, query) == searched(a, query) == searched(local, query), query
    assert len(b.collection("shapes")) == 80
    # B's commit is visible to A once A lists the store again.
    b.execute("DELETE FROM shapes WHERE split = 'test'")
    time.sleep(1.1)
    assert len(a.collection("shapes")) == len(b.collection("shapes")) < 80


# Adds `rows` rows to collection `docs` in a loop, printing each acknowledged caption: a plain add
# retried on ConflictError, then built segments published (which retry on their own).
WRITER = """
import json, sys, mirante
db = mirante.connect(sys.argv[1], progress=False)
docs = db.collection("docs")
rows = json.loads(sys.argv[2])
for i, row in enumerate(rows):
    while True:
        try:
            if i % 2:
                db.publish([docs.build_segments([row])])
            else:
                docs.add([row])
            break
        except mirante.ConflictError:
            continue
    print(row["text"], flush=True)
"""


def writer(uri: str, cache: Path, rows: list[dict[str, Any]]) -> subprocess.Popen[str]:
    env = {**os.environ, "MIRANTE_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, uri, json.dumps(rows)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def stored_captions(uri: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    db = on_machine(uri, cache, monkeypatch)
    return sorted(r["text"][0] for r in db.execute("SELECT text FROM docs").to_pylist())


def unique_rows(data: Path, prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {**row, "text": f"{prefix} {i}: {row['text']}"}
        for i, row in enumerate(shapes_rows(data, count))
    ]


def test_writers_racing_on_s3_lose_no_acknowledged_commit(
    s3: dict[str, str],
    shapes: tuple[mirante.Database, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, data = shapes
    uri = f"s3://{BUCKET}/race"
    on_machine(uri, tmp_path / "setup", monkeypatch).execute("CREATE COLLECTION docs")
    writers = [
        writer(uri, tmp_path / f"m{m}", unique_rows(data, f"machine {m}", 8)) for m in range(2)
    ]
    acknowledged = []
    for w in writers:
        out, _ = w.communicate(timeout=300)
        assert w.returncode == 0
        acknowledged += out.splitlines()
    assert len(acknowledged) == 16
    assert stored_captions(uri, tmp_path / "check", monkeypatch) == sorted(acknowledged)


def test_a_writer_killed_mid_commit_on_s3_loses_nothing_it_acknowledged(
    s3: dict[str, str],
    shapes: tuple[mirante.Database, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, data = shapes
    uri = f"s3://{BUCKET}/killed"
    on_machine(uri, tmp_path / "setup", monkeypatch).execute("CREATE COLLECTION docs")
    rows = unique_rows(data, "row", 40)
    for kill_after in (3, 7):
        w = writer(uri, tmp_path / f"killed-{kill_after}", rows[: kill_after * 3])
        assert w.stdout is not None
        acknowledged = [w.stdout.readline().strip() for _ in range(kill_after)]
        os.kill(w.pid, signal.SIGKILL)
        w.wait()
        stored = stored_captions(uri, tmp_path / f"check-{kill_after}", monkeypatch)
        assert set(acknowledged) <= set(stored)
        assert len(stored) == len(set(stored)), "no row twice"
        rows = rows[kill_after * 3 :]


def test_a_damaged_object_is_a_corruption_error(
    s3: dict[str, str],
    shapes: tuple[mirante.Database, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, data = shapes
    uri = f"s3://{BUCKET}/damaged"
    on_machine(uri, tmp_path / "a", monkeypatch).sql(
        f"CREATE COLLECTION shapes; IMPORT INTO shapes FROM '{data}'"
    )
    objects = client().list_objects_v2(Bucket=BUCKET, Prefix="damaged/files/")["Contents"]
    column = next(o for o in objects if o["Key"].endswith(".emb"))
    body = bytearray(client().get_object(Bucket=BUCKET, Key=column["Key"])["Body"].read())
    body[-5] ^= 0xFF
    client().put_object(Bucket=BUCKET, Key=column["Key"], Body=bytes(body))
    fresh = on_machine(uri, tmp_path / "b", monkeypatch)
    with pytest.raises(mirante.CorruptionError, match="checksum"):
        fresh.execute("SEARCH shapes BY TEXT 'a red circle'")
    # A truncated object too.
    client().put_object(Bucket=BUCKET, Key=column["Key"], Body=bytes(body[:100]))
    with pytest.raises(mirante.CorruptionError):
        on_machine(uri, tmp_path / "c", monkeypatch).execute("SEARCH shapes BY TEXT 'a red circle'")
