"""Haystack retriever component over a Mirante collection (``pip install mirante[haystack]``).

Returns ``Document``s whose ``meta["file_path"]`` is the row's image, so that Haystack's
``DocumentToImageContent`` turns them into image content for a vision model; ``content`` holds
the row's captions, ``score`` the similarity, and ``meta`` the metadata columns. A text query
ranks images; an ``image_path`` query ranks similar images.

.. code-block:: python

    from haystack import Pipeline
    from haystack.components.converters.image import DocumentToImageContent
    from mirante.haystack import MiranteRetriever

    pipe = Pipeline()
    pipe.add_component("retriever", MiranteRetriever("photos.db", collection="images"))
    pipe.add_component("images", DocumentToImageContent())
    pipe.connect("retriever.documents", "images.documents")
    pipe.run({"retriever": {"query": "a dog on the beach"}})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from mirante import connect
from mirante._filters import to_where

__all__ = ["MiranteRetriever"]


@component
class MiranteRetriever:
    """Retrieves rows of ``collection`` in the database at ``database`` by a text or an image.

    ``top_k`` hits per query; ``filters`` a ``WHERE`` condition or a filter dict (Haystack's
    ``{"field": "meta.split", "operator": "==", "value": "test"}`` form) applied before
    ranking.
    """

    def __init__(
        self,
        database: str,
        collection: str,
        *,
        top_k: int = 5,
        filters: str | Mapping[str, Any] | None = None,
    ) -> None:
        self.database = str(database)
        self.collection = collection
        self.top_k = top_k
        self.filters = filters
        self._collection = connect(self.database).collection(collection)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            database=self.database,
            collection=self.collection,
            top_k=self.top_k,
            filters=self.filters,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MiranteRetriever:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str | None = None,
        image_path: str | None = None,
        top_k: int | None = None,
        filters: str | Mapping[str, Any] | None = None,
    ) -> dict[str, list[Document]]:
        """The best ``top_k`` rows for a text ``query`` or the image at ``image_path``;
        ``filters`` here replace the component's."""
        if (query is None) == (image_path is None):
            raise ValueError("give one of query or image_path")
        result = self._collection.search(
            text=query,
            image=image_path,
            match="images",
            where=to_where(filters if filters is not None else self.filters),
            limit=top_k or self.top_k,
        )
        documents = []
        for hit in result.to_pylist():
            captions = hit.pop("text") or []
            score = hit.pop("score")
            hit.pop("rank")
            hit["file_path"] = hit.pop("image")
            documents.append(
                Document(id=str(hit["id"]), content="\n".join(captions), meta=hit, score=score)
            )
        return {"documents": documents}
