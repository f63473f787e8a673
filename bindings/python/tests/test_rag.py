"""The RAG adapters (`mirante.llama_index`, `mirante.haystack`) on the bundled shapes dataset
with the default model: the same hits as SEARCH, filters that apply, image queries, and the
filter dialects they accept."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import pytest
from PIL import Image

import mirante
from mirante._filters import to_where

from conftest import first_image, search_ids

QUERY = "a red circle"


def test_filter_dicts_become_where_conditions_and_cannot_add_statements():
    assert to_where(None) is None and to_where({}) is None
    assert to_where("split = 'test'") == "split = 'test'"
    assert to_where({"split": "test", "year": {"$gte": 1900, "$lt": 2000}}) == (
        "(split = 'test' AND (year >= 1900 AND year < 2000))"
    )
    assert to_where({"$or": [{"shape": {"$in": ["circle", "star"]}}, {"sold": True}]}) == (
        "(shape IN ('circle', 'star') OR sold = TRUE)"
    )
    assert to_where({"artist": "O'Keeffe", "note": None}) == (
        "(artist = 'O''Keeffe' AND note IS NULL)"
    )
    haystack = {
        "operator": "AND",
        "conditions": [
            {"field": "meta.split", "operator": "==", "value": "test"},
            {"field": "meta.count", "operator": "not in", "value": [1, 2]},
            {
                "operator": "NOT",
                "conditions": [{"field": "content", "operator": "==", "value": "x"}],
            },
        ],
    }
    assert to_where(haystack) == "(split = 'test' AND count NOT IN (1, 2) AND NOT text = 'x')"
    for bad in (
        {"split; DROP COLLECTION shapes": "x"},
        {"year": {"$regex": "x"}},
        {"year": {"$in": "1900"}},
        {"year": [1, 2]},
        {"field": "meta.a", "operator": "~", "value": 1},
    ):
        with pytest.raises(mirante.InvalidInputError):
            to_where(bad)


def test_llama_index_retriever_returns_image_nodes_as_search_ranks_them(shapes):
    from llama_index.core.schema import ImageNode, QueryBundle

    from mirante.llama_index import MiranteRetriever

    db, data = shapes
    retriever = MiranteRetriever(db, "shapes", similarity_top_k=4, with_images=True)
    nodes = retriever.retrieve(QUERY)
    assert [int(n.node.node_id) for n in nodes] == search_ids(db, f"BY TEXT '{QUERY}' LIMIT 4")
    assert all(isinstance(n.node, ImageNode) for n in nodes)
    scores = [n.score for n in nodes]
    assert scores == sorted(scores, reverse=True)
    top = nodes[0].node
    row = db.execute(f"SELECT text, image FROM shapes WHERE id = {top.node_id}").to_pylist()[0]
    assert top.text == "\n".join(row["text"]) and top.image_path == row["image"]
    stored = Image.open(row["image"])
    assert Image.open(io.BytesIO(base64.b64decode(top.image))).size == stored.size
    assert "split" in top.metadata

    # Filters apply before ranking, as a WHERE string or a metadata dict.
    by_dict = MiranteRetriever(db, "shapes", similarity_top_k=3, filters={"split": "test"})
    expected = search_ids(db, f"BY TEXT '{QUERY}' WHERE split = 'test' LIMIT 3")
    assert [int(n.node.node_id) for n in by_dict.retrieve(QUERY)] == expected
    by_string = MiranteRetriever(db, "shapes", similarity_top_k=3, filters="split = 'test'")
    assert [int(n.node.node_id) for n in by_string.retrieve(QUERY)] == expected

    # An image finds itself first; async retrieval gives the same nodes.
    image = first_image(data)
    similar = retriever.image_to_image_retrieve(str(image))
    assert Path(similar[0].node.image_path).samefile(image)
    assert similar[0].score == pytest.approx(1.0, abs=1e-4)
    bundle = QueryBundle(query_str="", image_path=str(image))
    assert [n.node.node_id for n in retriever.retrieve(bundle)] == [n.node.node_id for n in similar]
    again = asyncio.run(retriever.atext_to_image_retrieve(QUERY))
    assert [n.node.node_id for n in again] == [n.node.node_id for n in nodes]


def test_haystack_retriever_feeds_document_to_image_content(shapes):
    from haystack import Pipeline
    from haystack.components.converters.image import DocumentToImageContent

    from mirante.haystack import MiranteRetriever

    db, data = shapes
    retriever = MiranteRetriever(str(db.path), "shapes", top_k=3)
    documents = retriever.run(query=QUERY)["documents"]
    assert [int(d.id) for d in documents] == search_ids(db, f"BY TEXT '{QUERY}' LIMIT 3")
    assert all(Path(d.meta["file_path"]).is_file() and d.content for d in documents)

    # Through a pipeline, the documents become image content for a vision model.
    pipe = Pipeline()
    pipe.add_component("retriever", MiranteRetriever.from_dict(retriever.to_dict()))
    pipe.add_component("images", DocumentToImageContent())
    pipe.connect("retriever.documents", "images.documents")
    contents = pipe.run({"retriever": {"query": QUERY}})["images"]["image_contents"]
    assert len(contents) == 3
    for content, document in zip(contents, documents, strict=True):
        decoded = Image.open(io.BytesIO(base64.b64decode(content.base64_image)))
        assert decoded.size == Image.open(document.meta["file_path"]).size

    # Haystack's filter dialect, and an image query.
    only_test = {"field": "meta.split", "operator": "==", "value": "test"}
    filtered = retriever.run(query=QUERY, filters=only_test)["documents"]
    expected = search_ids(db, f"BY TEXT '{QUERY}' WHERE split = 'test' LIMIT 3")
    assert [int(d.id) for d in filtered] == expected
    image = first_image(data)
    similar = retriever.run(image_path=str(image), top_k=2)["documents"]
    assert Path(similar[0].meta["file_path"]).samefile(image)
    with pytest.raises(ValueError):
        retriever.run()
