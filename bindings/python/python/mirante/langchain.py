"""LangChain vector store over a Mirante collection (``pip install mirante[langchain]``).

Two ways to embed:

* ``embedding=None``: Mirante embeds with the collection's own model, images and captions in one
  space. Every document is an image with its captions: ``add_images`` (or ``add_texts`` /
  ``add_documents`` whose metadata names the image under ``"image"``). A text query retrieves
  images, ``similarity_search_by_image`` similar images.
* a LangChain ``Embeddings`` object: its vectors are stored as an external embedding space of
  the collection (named ``embedding_name``), so documents may be texts alone. Each row keeps one
  vector for the whole document (its image's, from ``embedding.embed_image`` as in
  ``OpenCLIPEmbeddings``, or its text's) that the searches rank, and one per caption.

LangChain's string ids, and the metadata exactly as given (JSON), are kept in the columns
``lc_id`` and ``lc_metadata``; scalar metadata keys that are plain names are also stored as
columns of their own, so ``filter`` (a Mirante ``WHERE`` string, or a Mongo-like dict as
Chroma takes) applies inside the search, before ranking. Adding a document whose id exists
replaces it in the same commit.

.. code-block:: python

    from mirante.langchain import MiranteVectorStore
    store = MiranteVectorStore("photos.db", collection="images")
    docs = store.similarity_search("a dog on the beach", k=4, filter={"split": "test"})
    store.similarity_search_by_image("query.jpg", k=4)
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from mirante import DEFAULT_MODEL, Collection, Database, Error, InvalidInputError, connect
from mirante._filters import to_where

__all__ = ["MiranteVectorStore"]

#: Metadata keys that cannot be columns of their own: Mirante's built-in columns and the store's.
_RESERVED = frozenset({"id", "image", "text", "split", "lc_id", "lc_metadata"})
#: Metadata keys a dict filter cannot name: the built-in column would answer, not the metadata.
_UNFILTERABLE = frozenset({"id", "lc_id", "lc_metadata"})
#: Result keys that are not metadata.
_ROW_KEYS = frozenset(
    {"rank", "id", "score", "text", "matched_text", "image", "image_bytes", "lc_id", "lc_metadata"}
)
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VECTOR = "lc_vector"
_CAPTION_VECTORS = "lc_caption_vectors"
_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class MiranteVectorStore(VectorStore):
    """A LangChain ``VectorStore`` on ``collection`` of ``database`` (a path or a
    :class:`mirante.Database`), created when missing.

    ``embedding`` (a LangChain ``Embeddings``) stores its vectors as the external space
    ``embedding_name`` (default: the class name); ``None`` uses the collection's Mirante model
    (``model``, for a new collection). ``with_images`` puts each hit's stored image, base64, into
    ``metadata["image_base64"]`` for multimodal prompts.
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | Database,
        collection: str = "langchain",
        embedding: Embeddings | None = None,
        *,
        embedding_name: str | None = None,
        model: str = DEFAULT_MODEL,
        with_images: bool = False,
    ) -> None:
        self._db = database if isinstance(database, Database) else connect(database)
        self._embedding = embedding
        self._space = None if embedding is None else embedding_name or type(embedding).__name__
        self._with_images = with_images
        self._collection = self._db.create_collection(
            collection,
            model=model if embedding is None else None,
            columns={"lc_id": "STRING", "lc_metadata": "STRING"},
            if_not_exists=True,
        )

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    @property
    def collection(self) -> Collection:
        """The Mirante collection behind the store."""
        return self._collection

    # ------------------------------------------------------------------ writing

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Adds texts as documents (with ``embedding=None``, each needs ``metadata["image"]``:
        Mirante's model embeds images with their captions). An id that exists is replaced."""
        texts = list(texts)
        metadatas = _metadatas(metadatas, len(texts))
        images = [m.get("image") for m in metadatas]
        if self._embedding is None:
            missing = [i for i, image in enumerate(images) if image is None]
            if missing:
                raise InvalidInputError(
                    f"document {missing[0]} has no metadata['image']: with embedding=None "
                    "Mirante's model embeds images with their captions; add images with "
                    "add_images(), or give MiranteVectorStore a LangChain Embeddings to store "
                    "texts alone"
                )
            vectors = None
        else:
            vectors = self._embedding.embed_documents(texts)
        captions = [[t] if t else [] for t in texts]
        return self._add(images, captions, metadatas, ids, vectors, None)

    def add_images(
        self,
        uris: Sequence[str | os.PathLike[str]],
        metadatas: list[dict] | None = None,
        ids: list[str | None] | None = None,
        *,
        texts: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Adds image files as documents, with optional captions ``texts`` (one each). With an
        ``embedding``, it must have ``embed_image`` (as ``OpenCLIPEmbeddings`` has)."""
        paths = [os.path.abspath(os.fspath(u)) for u in uris]
        metadatas = _metadatas(metadatas, len(paths))
        if texts is not None and len(texts) != len(paths):
            raise InvalidInputError(f"{len(texts)} texts for {len(paths)} images")
        captions = [[t] if t else [] for t in texts] if texts is not None else [[] for _ in paths]
        vectors = caption_vectors = None
        if self._embedding is not None:
            vectors = self._embed_images(paths)
            flat = [c for cs in captions for c in cs]
            embedded = iter(self._embedding.embed_documents(flat) if flat else [])
            caption_vectors = [[next(embedded) for _ in cs] for cs in captions]
        return self._add(paths, captions, metadatas, ids, vectors, caption_vectors)

    def _embed_images(self, paths: list[str]) -> list[list[float]]:
        embed_image: Callable[[list[str]], list[list[float]]] | None = getattr(
            self._embedding, "embed_image", None
        )
        if embed_image is None:
            raise InvalidInputError(
                f"{type(self._embedding).__name__} cannot embed images (it has no embed_image); "
                "use an image-text Embeddings such as OpenCLIPEmbeddings, or embedding=None to "
                "let Mirante's model embed them"
            )
        return embed_image(paths)

    def _add(
        self,
        images: list[Any],
        captions: list[list[str]],
        metadatas: list[dict],
        ids: list[str | None] | None,
        vectors: list[list[float]] | None,
        caption_vectors: list[list[list[float]]] | None,
    ) -> list[str]:
        n = len(images)
        if ids is not None and len(ids) != n:
            raise InvalidInputError(f"{len(ids)} ids for {n} documents")
        given = list(ids) if ids is not None else [None] * n
        doc_ids = [str(i) if i is not None else str(uuid.uuid4()) for i in given]
        # The last of documents sharing an id wins, as if they were added one by one.
        last = {doc_id: i for i, doc_id in enumerate(doc_ids)}
        keep = sorted(last.values())
        if not keep:
            return []
        columns: dict[str, pa.Array] = {
            "image": pa.array([_image_cell(images[i]) for i in keep], type=_IMAGE_TYPE),
            "text": pa.array([captions[i] for i in keep], type=pa.list_(pa.string())),
            "lc_id": pa.array([doc_ids[i] for i in keep], type=pa.string()),
            "lc_metadata": pa.array([_json(metadatas[i], i) for i in keep], type=pa.string()),
        }
        existing = self._column_types()
        columns.update(_mirrored([metadatas[i] for i in keep], existing))
        embeddings = None
        if vectors is not None:
            rows = _vector_array([vectors[i] for i in keep])
            if caption_vectors is None:
                # A text document's caption vector is its own.
                counts = [len(captions[i]) for i in keep]
                values = rows.filter(pa.array([c > 0 for c in counts]))
            else:
                counts = [len(caption_vectors[i]) for i in keep]
                values = _vector_array([v for i in keep for v in caption_vectors[i]], rows.type)
            offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), type=pa.int32())
            columns[_VECTOR] = rows
            columns[_CAPTION_VECTORS] = pa.ListArray.from_arrays(offsets, values)
            assert self._space is not None
            embeddings = (_VECTOR, _CAPTION_VECTORS, self._space)
        # A collection made outside the store gets the lc_id column with these rows.
        replace = _id_filter([doc_ids[i] for i in keep], existing) if "lc_id" in existing else None
        self._collection.add(
            pa.table(columns),
            image_column="image",
            text_column="text",
            embeddings=embeddings,
            replace=replace,
        )
        return doc_ids

    def _column_types(self) -> dict[str, pa.DataType]:
        name = self._collection.name
        schema = self._db.execute(f'SELECT * FROM "{name}" LIMIT 0').to_arrow().schema
        return {f.name: f.type for f in schema}

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Deletes the documents with these ids (unknown ids are ignored); ``None``: all."""
        name = self._collection.name
        if ids is None:
            self._db.execute(f'DELETE FROM "{name}"')
        elif ids and (where := _id_filter(ids, self._column_types())):
            self._db.execute(f'DELETE FROM "{name}" WHERE {where}')
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids, in the order of ``ids`` (unknown ids left out)."""
        where = _id_filter(ids, self._column_types()) if ids else None
        if where is None:
            return []
        name = self._collection.name
        rows = self._db.execute(f'SELECT * FROM "{name}" WHERE {where}').to_pylist()
        by_id = {doc.id: doc for doc in map(self._document, rows)}
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    # ------------------------------------------------------------------ searching

    def _hits(
        self, k: int, filter: str | Mapping[str, Any] | None, **query: Any
    ) -> list[dict[str, Any]]:
        """The search's rows, best first (none while a new store has no embedding space)."""
        where = to_where(filter, reserved=_UNFILTERABLE)
        try:
            result = self._collection.search(
                **query,
                match="images",
                where=where,
                limit=k,
                model=self._space,
                with_images=self._with_images,
            )
        except Error:
            if len(self._collection) == 0:
                return []
            raise
        return result.to_pylist()

    def _search(
        self, k: int, filter: str | Mapping[str, Any] | None, **query: Any
    ) -> list[tuple[Document, float]]:
        hits = self._hits(k, filter, **query)
        return [(self._document(hit), float(hit["score"])) for hit in hits]

    def _query_vector(self, query: str) -> list[float]:
        if self._embedding is not None:
            return self._embedding.embed_query(query)
        vector = self._db.embed(texts=[query], model=self._collection.model)
        return vector[0].tolist()

    def similarity_search(
        self,
        query: str,
        k: int = 4,
        filter: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter)]

    def similarity_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Documents with their cosine similarity to ``query`` (higher is closer)."""
        if self._embedding is None:
            return self._search(k, filter, text=query)
        return self._search(k, filter, vector=self._embedding.embed_query(query))

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return [doc for doc, _ in self._search(k, filter, vector=embedding)]

    def similarity_search_by_image(
        self,
        uri: str | os.PathLike[str],
        k: int = 4,
        filter: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Documents whose images (or, with an ``embedding``, whose vectors) are closest to
        the image file ``uri``."""
        return [
            doc for doc, _ in self.similarity_search_by_image_with_relevance_score(uri, k, filter)
        ]

    def similarity_search_by_image_with_relevance_score(
        self,
        uri: str | os.PathLike[str],
        k: int = 4,
        filter: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """:meth:`similarity_search_by_image` with each document's cosine similarity."""
        path = os.fspath(uri)
        if self._embedding is None:
            return self._search(k, filter, image=path)
        return self._search(k, filter, vector=self._embed_images([path])[0])

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Cosine similarity in [-1, 1] to a relevance in [0, 1].
        return lambda score: (1.0 + score) / 2.0

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self._query_vector(query), k, fetch_k, lambda_mult, filter
        )

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Picks ``k`` of the ``fetch_k`` nearest documents, trading similarity to the query
        against similarity to the documents already picked (``lambda_mult`` 1: similarity
        only), with the stored vectors."""
        hits = self._hits(fetch_k, filter, vector=embedding)
        vectors, live = self._collection.image_vectors(
            [hit["id"] for hit in hits], model=self._space
        )
        # A row deleted since the search is left out.
        hits = [hit for hit, kept in zip(hits, live, strict=True) if kept]
        if not hits:
            return []
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32),
            vectors[live],
            lambda_mult=lambda_mult,
            k=min(k, len(hits)),
        )
        return [self._document(hits[i]) for i in chosen]

    # ------------------------------------------------------------------ documents

    def _document(self, row: Mapping[str, Any]) -> Document:
        raw = row.get("lc_metadata")
        if raw is not None:
            metadata = json.loads(raw)
        else:
            metadata = {k: v for k, v in row.items() if k not in _ROW_KEYS and v is not None}
        if row.get("image") is not None:
            metadata.setdefault("image", row["image"])
        if row.get("image_bytes") is not None:
            metadata["image_base64"] = base64.b64encode(row["image_bytes"]).decode()
        return Document(
            page_content="\n".join(row.get("text") or []),
            metadata=metadata,
            id=row.get("lc_id") or str(row["id"]),
        )

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        database: str | os.PathLike[str] | Database | None = None,
        collection: str = "langchain",
        **kwargs: Any,
    ) -> MiranteVectorStore:
        """A store on ``collection`` of ``database`` holding ``texts``."""
        if database is None:
            raise InvalidInputError("from_texts needs database= (a path or a mirante.Database)")
        store = cls(database, collection, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


def _mirrored(metadatas: list[dict], existing: Mapping[str, pa.DataType]) -> dict[str, pa.Array]:
    """Scalar metadata keys as columns of their own (for filters), typed as the collection
    already types them; a key whose values do not fit stays in ``lc_metadata`` only."""
    keys: list[str] = []
    for m in metadatas:
        keys.extend(k for k in m if k not in keys)
    out = {}
    for key in keys:
        if key in _RESERVED or not _PLAIN_NAME.fullmatch(key):
            continue
        values = [m.get(key) for m in metadatas]
        present = [v for v in values if v is not None]
        if not present or not all(isinstance(v, (str, int, float, bool)) for v in present):
            continue
        wanted = existing.get(key) or _arrow_type(present)
        try:
            out[key] = pa.array(values, type=wanted)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            warnings.warn(
                f"metadata key {key!r} is kept in the documents' metadata but not as a "
                f"filterable column: its values do not all fit the column's type {wanted}",
                stacklevel=5,
            )
    return out


def _metadatas(metadatas: list[dict] | None, n: int) -> list[dict]:
    if metadatas is None:
        return [{} for _ in range(n)]
    if len(metadatas) != n:
        raise InvalidInputError(f"{len(metadatas)} metadatas for {n} documents")
    return [dict(m) for m in metadatas]


def _json(metadata: Mapping[str, Any], position: int) -> str:
    # The image is the row's own column, given back from there.
    stored = {k: v for k, v in metadata.items() if k != "image"}
    try:
        return json.dumps(stored)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"the metadata of document {position} cannot be stored as JSON: {e}"
        ) from e


def _vector_array(
    vectors: Sequence[Sequence[float]], like: pa.DataType | None = None
) -> pa.FixedSizeListArray:
    """Vectors as a fixed-size list array of float32 (converted by numpy, not per value)."""
    dim = like.list_size if like is not None else len(vectors[0]) if vectors else 0
    try:
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), dim)
    except ValueError as e:
        lengths = sorted({len(v) for v in vectors})
        raise InvalidInputError(
            f"the embedding gave vectors of different lengths ({lengths}); one store keeps "
            "vectors of one length"
        ) from e
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dim)


def _image_cell(image: Any) -> dict[str, Any] | None:
    if image is None:
        return None
    if isinstance(image, (bytes, bytearray)):
        return {"bytes": bytes(image), "path": None}
    return {"bytes": None, "path": os.path.abspath(os.fspath(image))}


def _arrow_type(values: list[Any]) -> pa.DataType:
    if all(isinstance(v, bool) for v in values):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pa.float64()
    return pa.string()


def _id_filter(ids: Sequence[str], columns: Mapping[str, Any]) -> str | None:
    """Rows by LangChain id (a row added outside LangChain goes by its Mirante id); ``None``
    when no row can have these ids."""
    numbers = [str(i) for i in ids if str(i).isdigit()]
    by_row = f"id IN ({', '.join(numbers)})" if numbers else None
    if "lc_id" not in columns:
        return by_row
    by_lc_id = "lc_id IN (" + ", ".join(_quote(str(i)) for i in ids) + ")"
    return by_lc_id if by_row is None else f"{by_lc_id} OR (lc_id IS NULL AND {by_row})"
