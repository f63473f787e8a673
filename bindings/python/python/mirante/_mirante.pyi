"""Type stubs of the extension module (the engine's calls under the `mirante` package)."""

from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

__version__: str

class Error(Exception): ...

class QueryError(Error):
    line: int
    column: int

class NotFoundError(Error): ...
class InvalidInputError(Error): ...

class RowsFailedError(InvalidInputError):
    failures: list[tuple[str, str | None, str]]

class LockedError(Error): ...
class ConflictError(LockedError): ...
class CorruptionError(Error): ...
class DataError(Error): ...
class CancelledError(Error): ...
class InternalError(Error): ...

class ProgressDrawer(Protocol):
    """Draws one call's jobs: (what, position, length or None, message, finished) each."""

    def update(self, tasks: list[tuple[str, int, int | None, str, bool]]) -> None: ...
    def close(self) -> None: ...

class Output:
    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> str | None: ...
    @property
    def columns(self) -> list[str]: ...
    @property
    def timings(self) -> dict[str, float] | None: ...
    def __len__(self) -> int: ...
    def to_arrow(self) -> pa.Table: ...
    def to_reader(self) -> pa.RecordBatchReader: ...
    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object: ...
    def to_table(self) -> str: ...
    def to_fitted(self, width: int = 120) -> str: ...

class Database:
    def __init__(
        self,
        path: str | PathLike[str],
        *,
        device: str | None = None,
        progress: Callable[[], ProgressDrawer] | None = None,
        busy_timeout: float = 5.0,
        allowed_paths: list[str | PathLike[str]] | None = None,
        downloads: bool = True,
        read_only: bool = False,
    ) -> None: ...
    @property
    def path(self) -> str: ...
    def warnings(self) -> list[str]: ...
    def sql(self, script: str, *, image_bytes: bool = False) -> list[Output]: ...
    def collections(self) -> list[str]: ...
    def add(
        self,
        collection: str,
        data: Any,
        *,
        skip_errors: bool = False,
        image_column: str | None = None,
        text_column: str | None = None,
        split: str | None = None,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        embeddings: tuple[str, str, str] | None = None,
        replace: str | None = None,
    ) -> tuple[list[int], list[tuple[str, str | None, str]]]: ...
    def search(
        self,
        collection: str,
        kind: str,
        query: Any,
        *,
        where: str | None = None,
        limit: int = 10,
        model: str | None = None,
        rerank: str | None = None,
        top: int | None = None,
        match_: str | None = None,
        image_bytes: bool = False,
    ) -> Output: ...
    def embeddings(
        self, collection: str, *, kind: str = "image", model: str | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, bool]: ...
    def collection_model(self, collection: str) -> str | None: ...
    def image_vectors(
        self, collection: str, ids: Sequence[int], *, model: str | None = None
    ) -> tuple[np.ndarray, list[bool]]: ...
    def build_segments(
        self,
        collection: str,
        data: Any,
        *,
        expected_rows: int,
        skip_errors: bool = False,
        image_column: str | None = None,
        text_column: str | None = None,
        split: str | None = None,
        columns: Sequence[str] | None = None,
        embeddings: tuple[str, str, str] | None = None,
    ) -> tuple[bytes, list[int], list[tuple[str, str | None, str]]]: ...
    def publish(self, built: Sequence[bytes]) -> tuple[int, int]: ...
    def prepare_embedding(self, collection: str, model: str) -> list[int]: ...
    def embed_segments(
        self, collection: str, model: str, segments: Sequence[int]
    ) -> list[bytes]: ...
    def publish_embedding(
        self, collection: str, model: str, built: Sequence[bytes], switch: bool
    ) -> str: ...
    def embed_texts(self, texts: Sequence[str], *, model: str | None = None) -> np.ndarray: ...
    def embed_images(
        self, images: Sequence[str | PathLike[str] | bytes], *, model: str | None = None
    ) -> np.ndarray: ...
