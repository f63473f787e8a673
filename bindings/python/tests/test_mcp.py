"""`mirante mcp`, the Model Context Protocol server, driven over stdio by the official MCP
Python SDK's client, as an LLM host would drive it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from PIL import Image

from conftest import PHOTOS, cli


def session(
    db: Path, *flags: str, calls: list[tuple[str, dict[str, Any]]]
) -> tuple[Any, list[Any]]:
    """Starts `mirante mcp db flags`, lists its tools and makes `calls`; returns both."""

    async def run() -> tuple[Any, list[Any]]:
        server = StdioServerParameters(command=str(cli()), args=["mcp", str(db), *flags])
        async with stdio_client(server) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            tools = await s.list_tools()
            return tools, [await s.call_tool(name, arguments) for name, arguments in calls]

    return asyncio.run(run())


def texts(result: Any) -> list[str]:
    return [c.text for c in result.content if c.type == "text"]


def test_the_server_lists_its_tools_and_searches_with_images(db, images):
    expected = images.search("a photograph", match="images", limit=3, with_images=True)
    tools, (search, by_image, filtered, show) = session(
        db.path,
        calls=[
            ("search", {"collection": "images", "text": "a photograph", "limit": 3}),
            ("search", {"collection": "images", "image": str(PHOTOS / "chelsea.png"), "limit": 2}),
            ("search", {"collection": "images", "text": "a photograph", "where": "split = 'test'"}),
            ("list_collections", {}),
        ],
    )
    names = {t.name for t in tools.tools}
    assert {"search", "list_collections", "describe_collection", "sql", "evaluate"} <= names
    search_tool = next(t for t in tools.tools if t.name == "search")
    assert {"collection", "text", "image", "where", "limit"} <= set(
        search_tool.input_schema["properties"]
    )

    # The hits are the engine's, in its order, and the top ones come back as images whose
    # bytes decode to the stored images.
    assert not search.is_error, texts(search)
    hits = json.loads(texts(search)[0])["hits"]
    assert [h["id"] for h in hits] == [r["id"] for r in expected.to_pylist()]
    pictures = [c for c in search.content if c.type == "image"]
    assert len(pictures) == 3
    for picture, stored in zip(pictures, expected.images(), strict=True):
        got = Image.open(io.BytesIO(base64.b64decode(picture.data)))
        assert picture.mime_type == f"image/{got.format.lower()}"
        assert got.size == stored.size
        assert got.convert("RGB").tobytes() == stored.convert("RGB").tobytes()

    assert not by_image.is_error, texts(by_image)
    assert len(json.loads(texts(by_image)[0])["hits"]) == 2
    test_rows = {
        r["id"] for r in db.execute("SELECT id FROM images WHERE split = 'test'").to_pylist()
    }
    filtered_hits = json.loads(texts(filtered)[0])["hits"]
    assert filtered_hits and {h["id"] for h in filtered_hits} <= test_rows
    assert [r["name"] for r in json.loads(texts(show)[0])["rows"]] == ["images"]


def test_a_read_only_server_refuses_writes_and_reports_errors_as_tool_errors(db, images):
    before = len(images)
    _, (delete, select, missing, bad_where, injected) = session(
        db.path,
        calls=[
            ("sql", {"statements": "DELETE FROM images"}),
            ("sql", {"statements": "SELECT count(*) FROM images"}),
            ("describe_collection", {"collection": "nope"}),
            ("search", {"collection": "images", "text": "x", "where": "split = "}),
            (
                "evaluate",
                {"collection": "images", "metrics": "recall@1 ON images; DELETE FROM images"},
            ),
        ],
    )
    assert delete.is_error and "read-only" in texts(delete)[0]
    assert not select.is_error
    assert json.loads(texts(select)[0])["rows"] == [{"count": before}]
    assert missing.is_error and "nope" in texts(missing)[0]
    assert bad_where.is_error
    assert injected.is_error
    assert len(images) == before


def test_a_read_write_server_runs_writes(db, images):
    _, (delete,) = session(
        db.path,
        "--read-write",
        calls=[("sql", {"statements": "DELETE FROM images WHERE split = 'test'"})],
    )
    assert not delete.is_error, texts(delete)
    assert db.execute("SELECT count(*) FROM images WHERE split = 'test'").to_pylist() == [
        {"count": 0}
    ]
