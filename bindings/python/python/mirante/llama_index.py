"""LlamaIndex retriever over a Mirante collection (``pip install mirante[llama-index]``).

Mirante embeds queries with the collection's own model, text and images in one space, so the
retriever takes no embedding model: a text retrieves images (``retrieve``,
``text_to_image_retrieve``) and an image file retrieves similar images
(``image_to_image_retrieve``, or ``retrieve`` of a ``QueryBundle`` with ``image_path``). Each
hit is a ``NodeWithScore`` of an ``ImageNode``: the row's captions as its text, the image's path,
the metadata columns, and with ``with_images`` the image itself (base64), for multimodal LLMs.

.. code-block:: python

    from mirante.llama_index import MiranteRetriever
    retriever = MiranteRetriever("photos.db", collection="images", similarity_top_k=4)
    nodes = retriever.retrieve("a dog on the beach")
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Mapping
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.image_retriever import BaseImageRetriever
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle

from mirante import Database, connect
from mirante._filters import to_where

__all__ = ["MiranteRetriever"]


class MiranteRetriever(BaseRetriever, BaseImageRetriever):
    """Retrieves the rows of ``collection`` in ``database`` (a path or a
    :class:`mirante.Database`) whose images best match a text or an image.

    ``similarity_top_k`` hits per query (``image_similarity_top_k`` for image queries, default
    the same); ``filters`` a ``WHERE`` condition or a metadata dict applied before ranking;
    ``with_images`` puts the stored image bytes into each node (``ImageNode.image``).
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | Database,
        collection: str,
        *,
        similarity_top_k: int = 5,
        image_similarity_top_k: int | None = None,
        filters: str | Mapping[str, Any] | None = None,
        with_images: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._db = database if isinstance(database, Database) else connect(database)
        self._collection = self._db.collection(collection)
        self._top_k = similarity_top_k
        self._image_top_k = image_similarity_top_k or similarity_top_k
        self._where = to_where(filters)
        self._with_images = with_images

    def _nodes(self, limit: int, **query: Any) -> list[NodeWithScore]:
        result = self._collection.search(
            **query, match="images", where=self._where, limit=limit, with_images=self._with_images
        )
        nodes = []
        for hit in result.to_pylist():
            captions = hit.pop("text") or []
            image_bytes = hit.pop("image_bytes", None)
            node = ImageNode(
                id_=str(hit["id"]),
                text="\n".join(captions),
                image_path=hit.pop("image"),
                image=base64.b64encode(image_bytes).decode() if image_bytes else None,
                metadata={k: v for k, v in hit.items() if k not in ("rank", "score")},
            )
            nodes.append(NodeWithScore(node=node, score=hit["score"]))
        return nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if query_bundle.image_path:
            return self._image_to_image_retrieve(query_bundle)
        return self._text_to_image_retrieve(query_bundle)

    def _text_to_image_retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._nodes(self._top_k, text=query_bundle.query_str)

    def _image_to_image_retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if not query_bundle.image_path:
            raise ValueError("image_to_image_retrieve needs a QueryBundle with image_path")
        return self._nodes(self._image_top_k, image=query_bundle.image_path)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)

    async def _atext_to_image_retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._text_to_image_retrieve, query_bundle)

    async def _aimage_to_image_retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._image_to_image_retrieve, query_bundle)
