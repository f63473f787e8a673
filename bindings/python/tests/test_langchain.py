"""`mirante.langchain.MiranteVectorStore`: LangChain's own standard test suite for vector stores
(unmodified, with its fake embeddings stored as an external space), real retrieval on the bundled
shapes dataset with Mirante's model, and the multimodal RAG example driven by LangChain's fake
chat model."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests

import mirante
from mirante.langchain import MiranteVectorStore

from conftest import first_image, load_example, search_ids

QUERY = "a red circle"


class TestMiranteStandard(VectorStoreIntegrationTests):
    """LangChain's standard tests, sync and async, as every LangChain vector store runs them."""

    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[MiranteVectorStore]:
        db = mirante.connect(tmp_path / "db", progress=False)
        yield MiranteVectorStore(db, "docs", self.get_embeddings())


@pytest.fixture
def store(shapes) -> MiranteVectorStore:
    db, _ = shapes
    return MiranteVectorStore(db, "shapes", with_images=True)


def test_text_search_ranks_documents_as_search_does(shapes, store):
    db, _ = shapes
    scored = store.similarity_search_with_score(QUERY, k=5)
    expected = db.execute(f"SEARCH shapes BY TEXT '{QUERY}' LIMIT 5").to_pylist()
    assert [doc.id for doc, _ in scored] == [str(r["id"]) for r in expected]
    assert [score for _, score in scored] == pytest.approx([r["score"] for r in expected])
    top, _ = scored[0]
    row = db.execute(f"SELECT * FROM shapes WHERE id = {top.id}").to_pylist()[0]
    assert top.page_content == "\n".join(row["text"])
    assert top.metadata["image"] == row["image"] and top.metadata["split"] == row["split"]
    # The image itself, for a vision model: the stored bytes.
    assert base64.b64decode(top.metadata["image_base64"]) == Path(row["image"]).read_bytes()
    relevance = store.similarity_search_with_relevance_scores(QUERY, k=5)
    assert [r for _, r in relevance] == pytest.approx([(1 + s) / 2 for _, s in scored])


def test_filters_apply_before_ranking(shapes, store):
    db, _ = shapes
    expected = [str(i) for i in search_ids(db, f"BY TEXT '{QUERY}' WHERE split = 'test' LIMIT 4")]
    for spelled in ({"split": "test"}, "split = 'test'", {"split": {"$in": ["test"]}}):
        documents = store.similarity_search(QUERY, k=4, filter=spelled)
        assert [d.id for d in documents] == expected
        assert all(d.metadata["split"] == "test" for d in documents)
    with pytest.raises(mirante.InvalidInputError, match="built-in column"):
        store.similarity_search(QUERY, filter={"id": 3})


def test_image_queries_rank_images_as_search_does(shapes, store):
    db, data = shapes
    image = first_image(data)
    expected = search_ids(db, f"BY IMAGE '{image}' MATCH IMAGES LIMIT 3")
    documents = store.similarity_search_by_image(image, k=3)
    assert [d.id for d in documents] == [str(i) for i in expected]
    assert Path(documents[0].metadata["image"]).samefile(image)
    scored = store.similarity_search_by_image_with_relevance_score(image, k=1)
    assert scored[0][1] == pytest.approx(1.0, abs=1e-4)


def test_mmr_picks_diverse_documents_among_the_nearest(shapes, store):
    db, _ = shapes
    assert store.collection.model == mirante.DEFAULT_MODEL
    nearest = [str(i) for i in search_ids(db, f"BY TEXT '{QUERY}' LIMIT 20")]
    diverse = store.max_marginal_relevance_search(QUERY, k=4, fetch_k=20, lambda_mult=0.3)
    assert len(diverse) == 4 and {d.id for d in diverse} <= set(nearest)
    assert diverse[0].id == nearest[0]
    # The vectors MMR reads, by id: the stored ones, a missing row marked.
    ids, stored = store.collection.embeddings("image")
    vectors, live = store.collection.image_vectors([int(ids[3]), 999_999, int(ids[0])])
    assert live.tolist() == [True, False, True] and not vectors[1].any()
    assert np.array_equal(vectors[[0, 2]], stored[[3, 0]])
    # lambda 1 is plain similarity.
    plain = store.max_marginal_relevance_search(QUERY, k=4, fetch_k=20, lambda_mult=1.0)
    assert [d.id for d in plain] == nearest[:4]


def test_add_images_with_the_mirante_model_upserts_by_id(tmp_path, shapes):
    _, data = shapes
    images = sorted(data.rglob("*.png"))[:3]
    store = MiranteVectorStore(tmp_path / "db", "photos")
    ids = store.add_images(
        images, metadatas=[{"n": i} for i in range(3)], texts=["one", "two", "three"]
    )
    assert [d.page_content for d in store.get_by_ids(ids)] == ["one", "two", "three"]
    top = store.similarity_search_by_image(images[1], k=1)[0]
    assert top.id == ids[1] and top.metadata == {"n": 1, "image": str(images[1].resolve())}
    # Same id again: replaced in one commit, not duplicated.
    store.add_images([images[2]], metadatas=[{"n": 7}], ids=[ids[1]], texts=["replaced"])
    assert len(store.collection) == 3
    assert store.get_by_ids([ids[1]])[0].page_content == "replaced"
    assert [d.id for d in store.similarity_search("x", k=5, filter={"n": 7})] == [ids[1]]
    # A text alone cannot be embedded by an image-text model's image tower.
    with pytest.raises(mirante.InvalidInputError, match="metadata\\['image'\\]"):
        store.add_texts(["a caption without its image"])
    store.delete([ids[0]])
    assert [d.id for d in store.get_by_ids(ids)] == ids[1:]


class ImageTextEmbeddings(DeterministicFakeEmbedding):
    """Fake embeddings that also embed image files (as OpenCLIPEmbeddings does), by content."""

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        return [self.embed_query(Path(u).read_bytes().hex()) for u in uris]


def test_langchain_embeddings_are_stored_as_an_external_space(tmp_path, shapes):
    _, data = shapes
    image = sorted(data.rglob("*.png"))[0]
    embedding = ImageTextEmbeddings(size=8)
    store = MiranteVectorStore(tmp_path / "db", "docs", embedding)
    text_ids = store.add_texts(
        ["the harbour at dawn", "a market street"], [{"year": 1901}, {"year": 1950}]
    )
    [image_id] = store.add_images([image], [{"year": 1930}], texts=["a shape"])
    # The stored vectors are the embedding's, normalised.
    _, vectors = store.collection.embeddings("image", model="ImageTextEmbeddings")
    wanted = np.array(embedding.embed_query("the harbour at dawn"), dtype=np.float32)
    assert np.allclose(vectors[0], wanted / np.linalg.norm(wanted), atol=1e-6)
    assert store.similarity_search("a market street", k=1)[0].id == text_ids[1]
    assert store.similarity_search_by_image(image, k=1)[0].id == image_id
    older = store.similarity_search("a market street", k=3, filter={"year": {"$lt": 1940}})
    assert {d.id for d in older} == {text_ids[0], image_id}
    # Values of another type than the column's stay in the metadata, with a warning.
    with pytest.warns(UserWarning, match="'year'"):
        [odd] = store.add_texts(["undated"], [{"year": "unknown"}])
    assert store.get_by_ids([odd])[0].metadata == {"year": "unknown"}


def test_an_existing_collection_gets_langchain_ids_on_first_add(tmp_path, shapes):
    _, data = shapes
    db = mirante.connect(tmp_path / "db", progress=False)
    db.sql(f"CREATE COLLECTION shapes; IMPORT INTO shapes FROM '{data}' WITH (limit = 5)")
    store = MiranteVectorStore(db, "shapes")
    # Rows imported with SQL go by their Mirante ids.
    assert [d.id for d in store.get_by_ids(["2", "9999", "x"])] == ["2"]
    image = sorted(data.rglob("*.png"))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [new] = store.add_images([image], ids=["mine"])
    assert new == "mine" and store.get_by_ids(["mine"])[0].id == "mine"
    store.delete(["2", "mine"])
    assert len(store.collection) == 4


class RecordingChatModel(FakeListChatModel):
    """LangChain's fake chat model, keeping the messages it was given."""

    received: list[list[BaseMessage]] = []

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.received.append(messages)
        return super()._generate(messages, *args, **kwargs)


def test_the_rag_example_sends_the_question_captions_and_images(tmp_path, monkeypatch):
    example = load_example("multimodal_rag", monkeypatch)
    store = example.open_store(tmp_path / "rag", rows=40)
    llm = RecordingChatModel(responses=["Scenes [1] and [2]."])
    reply, documents = example.answer(llm, store, QUERY, k=3)
    assert reply == "Scenes [1] and [2]."
    expected = [str(i) for i in store.collection.search(text=QUERY, limit=3).to_pandas()["id"]]
    assert [d.id for d in documents] == expected

    [[system, human]] = llm.received
    assert system.type == "system" and human.type == "human"
    parts = human.content
    assert parts[0] == {"type": "text", "text": f"Question: {QUERY}"}
    for number, document in enumerate(documents, start=1):
        text, image = parts[2 * number - 1], parts[2 * number]
        assert text == {"type": "text", "text": f"[{number}] {document.page_content}"}
        assert image["type"] == "image" and image["mime_type"] == "image/png"
        stored = Path(document.metadata["image"]).read_bytes()
        assert base64.b64decode(image["base64"]) == stored
    assert len(parts) == 1 + 2 * len(documents)
    # The command line runs offline with the stand-in model.
    assert "stand-in" in example.main([QUERY, "--db", str(tmp_path / "rag"), "--k", "2"])


def test_from_texts_needs_a_database_and_keeps_the_documents(tmp_path):
    with pytest.raises(mirante.InvalidInputError, match="database="):
        MiranteVectorStore.from_texts(["a"], DeterministicFakeEmbedding(size=4))
    store = MiranteVectorStore.from_texts(
        ["a", "b"],
        DeterministicFakeEmbedding(size=4),
        [{"k": 1}, {"k": 2}],
        ids=["x", "y"],
        database=tmp_path / "db",
    )
    assert store.get_by_ids(["y", "x"]) == [
        Document(id="y", page_content="b", metadata={"k": 2}),
        Document(id="x", page_content="a", metadata={"k": 1}),
    ]
