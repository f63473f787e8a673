"""Mirante: an embedded image-text retrieval database.

Search images by text and text by images, evaluate retrieval (Recall@K, MRR, nDCG@K),
fine-tune CLIP/SigLIP models on your collection and re-embed it, all in one local database
folder, from Python::

    import mirante

    db = mirante.connect("photos.db")
    images = db.create_collection("images")        # the built-in model; or model="org/name"
    images.add(dataset)                             # pyarrow, pandas, datasets, list of dicts
    images.search(text="a dog on the beach", limit=5).to_pandas()
    images.search(image=PIL.Image.open("query.jpg")).to_pylist()
    db.execute("EVALUATE recall@1, recall@10 ON images WHERE split = 'test'").to_pandas()

Every statement of the query language runs with :meth:`Database.execute` (one statement) or
:meth:`Database.sql` (a script); results are :class:`Result` objects that convert to pyarrow,
pandas, polars and Python lists, and speak the Arrow PyCapsule stream interface
(``pyarrow.table(result)``, ``polars.DataFrame(result)``, ``duckdb.sql("SELECT * FROM result")``).

Long calls release the GIL, so other Python threads keep running and many threads can search
one :class:`Database` at once; Ctrl-C (KeyboardInterrupt) stops the running statement with
nothing half-committed. Imports, embedding, fine-tuning and re-ranking show tqdm progress bars
in notebooks and terminals (``connect(path, progress=False)`` turns them off). Errors are
:class:`Error` subclasses whose messages are the CLI's.

Across processes: open the database in each process (after ``fork``, open it again in the
child). Any number of processes read; one writes at a time (the others get
:class:`LockedError` while a statement writes).

On object storage: ``connect("s3://bucket/prefix")`` (also ``gs://``, ``az://``; credentials and
endpoint from the usual environment variables) works on a local cache folder
(``$MIRANTE_CACHE_DIR``, else ``~/.cache/mirante``). Writers on different machines are
serialised by the store: of two commits of the same version one wins, the other raises
:class:`ConflictError` and commits nothing (publishing built segments retries on its own).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from . import _mirante, _progress
from ._mirante import (
    CancelledError,
    ConflictError,
    CorruptionError,
    DataError,
    Error,
    InternalError,
    InvalidInputError,
    LockedError,
    NotFoundError,
    QueryError,
    RowsFailedError,
)

if TYPE_CHECKING:
    import pandas
    import polars
    from PIL import Image as PILImage

__version__: str = _mirante.__version__

#: The model of collections created without one: a small CLIP Mirante trained on its bundled
#: shapes dataset (for the demo and tests, not for real photographs).
DEFAULT_MODEL = "mirante-shapes-clip"

__all__ = [
    "DEFAULT_MODEL",
    "BuiltColumns",
    "BuiltSegments",
    "CancelledError",
    "Collection",
    "ConflictError",
    "CorruptionError",
    "DamagedVersionWarning",
    "DataError",
    "Database",
    "Error",
    "InternalError",
    "InvalidInputError",
    "LockedError",
    "NotFoundError",
    "QueryError",
    "Result",
    "RowsFailedError",
    "connect",
]


def connect(
    path: str | os.PathLike[str],
    *,
    device: str | None = None,
    progress: bool | None = None,
    busy_timeout: float = 5.0,
    allowed_paths: Sequence[str | os.PathLike[str]] | None = None,
    downloads: bool = True,
    read_only: bool = False,
) -> Database:
    """Opens the database in folder ``path``, creating it if the folder holds none.

    ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (default: ``MIRANTE_DEVICE``, else the
    CPU). ``progress`` shows tqdm bars of long statements (imports, embedding, fine-tuning,
    re-ranking): widgets in notebooks, text on terminals (default: in a Jupyter kernel or when
    stderr is a terminal). ``busy_timeout`` is how many seconds a writing statement waits for
    another process's writer before raising :class:`LockedError` (0 fails at once).

    For a server that runs statements its users send: ``allowed_paths`` confines the files
    statements read (imports, image paths, model folders) and write (``INTO`` reports,
    ``EXPORT MODEL``) to those folders (the database and the Hugging Face cache stay readable)
    and turns downloads off; ``downloads=False`` alone keeps models to the local Hugging Face
    cache. ``read_only`` opens an existing database for reading only: statements that would
    change it or write a file raise :class:`InvalidInputError` before they run.

    Issues a :class:`DamagedVersionWarning` when the newest version cannot be read.
    """
    if progress is None:
        progress = _progress.wanted()
    drawer = _progress.Bars if progress else None
    db = Database(
        _mirante.Database(
            os.fspath(path),
            device=device,
            progress=drawer,
            busy_timeout=busy_timeout,
            allowed_paths=None if allowed_paths is None else [os.fspath(p) for p in allowed_paths],
            downloads=downloads,
            read_only=read_only,
        )
    )
    for message in db.warnings:
        warnings.warn(message, DamagedVersionWarning, stacklevel=2)
    return db


class DamagedVersionWarning(UserWarning):
    """The newest version's manifest cannot be read, so an older version is shown: the commits
    after it are missing. Writes raise :class:`CorruptionError` until an intact copy of the file
    is put back or ``RESTORE VERSION n`` accepts the older version."""


def _quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


class Result:
    """One statement's result: a status line, rows, search hits, an evaluation or a training
    run, with typed columns (from the statement and the collection, even when empty).

    ``len(result)`` counts rows (hits); ``str(result)`` is the table as the shell prints it.
    """

    __slots__ = ("_output",)

    def __init__(self, output: _mirante.Output) -> None:
        self._output = output

    @property
    def kind(self) -> str:
        """``status``, ``table``, ``search``, ``evaluation`` or ``training``."""
        return self._output.kind

    @property
    def status(self) -> str | None:
        """The status line ("imported 7 rows into images"), if the statement has one."""
        return self._output.status

    @property
    def columns(self) -> list[str]:
        """The column names."""
        return self._output.columns

    @property
    def timings(self) -> dict[str, float] | None:
        """Where a search's time went inside the engine, in seconds (``embed`` the query,
        ``search`` the index, ``rerank``, ``fetch`` the rows); ``None`` for other results."""
        return self._output.timings

    def __len__(self) -> int:
        return len(self._output)

    def to_arrow(self) -> pa.Table:
        """The result as a ``pyarrow.Table`` (a status alone: one ``status`` column)."""
        return self._output.to_arrow()

    def to_pandas(self) -> pandas.DataFrame:
        """The result as a pandas DataFrame (needs pandas)."""
        return self.to_arrow().to_pandas()

    def to_polars(self) -> polars.DataFrame:
        """The result as a polars DataFrame (needs polars)."""
        import polars

        frame = polars.from_arrow(self.to_arrow())
        assert isinstance(frame, polars.DataFrame)
        return frame

    def to_pylist(self) -> list[dict[str, Any]]:
        """The rows as dictionaries, column name to value."""
        return self.to_arrow().to_pylist()

    def images(self) -> list[PILImage.Image | None]:
        """The hits' images as ``PIL.Image`` objects (a search with ``with_images=True``)."""
        from PIL import Image

        if "image_bytes" not in self.columns:
            raise InvalidInputError("the result carries no images; search with with_images=True")
        return [
            None if b is None else Image.open(io.BytesIO(b))
            for b in self.to_arrow().column("image_bytes").to_pylist()
        ]

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        """The Arrow PyCapsule stream interface: pyarrow, polars and duckdb read the result
        through it without copies."""
        return self._output.__arrow_c_stream__(requested_schema)

    def __str__(self) -> str:
        return self._output.to_table()

    def __repr__(self) -> str:
        return repr(self._output)


def _is_image(value: object) -> bool:
    return type(value).__module__.startswith("PIL.")


def _png(value: Any) -> bytes:
    """A PIL image or an HxW(x3|x4) uint8 array, encoded as PNG (lossless: its pixels decode
    back exactly)."""
    from PIL import Image

    if isinstance(value, np.ndarray):
        value = Image.fromarray(value)
    buffer = io.BytesIO()
    value.save(buffer, format="PNG")
    return buffer.getvalue()


def _image_cell(value: Any) -> dict[str, Any] | None:
    """An image as the Arrow struct {bytes, path} Hugging Face datasets use."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {"bytes": value.get("bytes"), "path": value.get("path")}
    if isinstance(value, (str, os.PathLike)):
        return {"bytes": None, "path": os.path.abspath(os.fspath(value))}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value), "path": None}
    if _is_image(value) or isinstance(value, np.ndarray):
        return {"bytes": _png(value), "path": None}
    raise InvalidInputError(
        f"an image is a {type(value).__name__}; expected a path, bytes, a PIL.Image or a "
        "numpy array"
    )


_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _table_of_rows(rows: Sequence[Mapping[str, Any]], image_column: str) -> pa.Table:
    """Rows given as dictionaries, with their images as {bytes, path} structs."""
    if not rows:
        raise InvalidInputError("no rows to add")
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    if image_column not in names:
        raise InvalidInputError(
            f"the rows have no '{image_column}' key; give each row its image (a path, bytes, "
            "a PIL.Image or a numpy array) or name the key with image_column="
        )
    arrays = {}
    for name in names:
        values = [r.get(name) for r in rows]
        if name == image_column:
            arrays[name] = pa.array([_image_cell(v) for v in values], type=_IMAGE_TYPE)
            continue
        if any(isinstance(v, (list, tuple)) for v in values):
            # Captions: one string stands for a list of one.
            values = [[v] if isinstance(v, str) else v for v in values]
        arrays[name] = pa.array(values)
    return pa.table(arrays)


def _table_of_frame(frame: Any, image_column: str) -> pa.Table:
    """A pandas DataFrame, its image column converted as rows' images are."""
    if image_column not in frame.columns:
        return pa.Table.from_pandas(frame, preserve_index=False)
    cells = [_image_cell(v) for v in frame[image_column].tolist()]
    rest = pa.Table.from_pandas(frame.drop(columns=[image_column]), preserve_index=False)
    return rest.append_column(image_column, pa.array(cells, type=_IMAGE_TYPE))


def _arrow_input(data: Any, image_column: str) -> Any:
    """Anything `Collection.add` takes, as an object with ``__arrow_c_stream__``."""
    package = type(data).__module__.split(".")[0]
    if package == "datasets":
        # A Hugging Face Dataset: its Arrow table, images as {bytes, path} structs.
        return data.data.table
    if package == "pandas":
        return _table_of_frame(data, image_column)
    if hasattr(data, "__arrow_c_stream__"):
        return data
    if isinstance(data, Mapping):
        return _table_of_rows([data], image_column)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        return _table_of_rows(list(data), image_column)
    raise InvalidInputError(
        f"cannot add a {type(data).__name__}; give a pyarrow Table or RecordBatchReader, a "
        "pandas DataFrame, a Hugging Face Dataset, or a list of dicts"
    )


class Database:
    """An open Mirante database (see :func:`connect`). Safe to share between threads."""

    __slots__ = ("_db",)

    def __init__(self, inner: _mirante.Database) -> None:
        self._db = inner

    @property
    def path(self) -> Path:
        """The database's folder."""
        return Path(self._db.path)

    @property
    def warnings(self) -> list[str]:
        """What is wrong with the database, one message each (see
        :class:`DamagedVersionWarning`, which :func:`connect` also issues); empty when
        healthy."""
        return self._db.warnings()

    def execute(self, statement: str) -> Result:
        """Runs one statement (``SEARCH``, ``EVALUATE``, ``FINETUNE``, ...; see
        docs/query.md) and returns its result."""
        results = self.sql(statement)
        if len(results) != 1:
            raise InvalidInputError(
                f"execute runs one statement; this text holds {len(results)} (use sql())"
            )
        return results[0]

    def sql(self, script: str) -> list[Result]:
        """Runs ``;``-separated statements in order; one result per statement. The text is
        parsed whole first, so a syntax error anywhere runs nothing; a statement that fails
        stops the ones after it (those before it are committed)."""
        return [Result(o) for o in self._db.sql(script)]

    def collections(self) -> list[str]:
        """The names of the collections."""
        return self._db.collections()

    def create_collection(
        self,
        name: str,
        model: str | None = DEFAULT_MODEL,
        *,
        index: str | None = None,
        columns: Mapping[str, str] | None = None,
        if_not_exists: bool = False,
    ) -> Collection:
        """Creates a collection embedding with ``model`` (a registry name, a checkpoint folder
        or a Hugging Face Hub id; ``None``: no model, rows stored without embeddings).
        ``index`` is a FAISS factory string (default ``Flat``); ``columns`` declares metadata
        columns, name to type (``STRING``, ``INT``, ``FLOAT``, ``BOOL``, with ``NOT NULL``)."""
        declared = ""
        if columns:
            declared = " (" + ", ".join(f'"{c}" {t}' for c, t in columns.items()) + ")"
        options = ["model = NULL" if model is None else f"model = {_quote(model)}"]
        if index is not None:
            options.append(f"index = {_quote(index)}")
        exists = "IF NOT EXISTS " if if_not_exists else ""
        self.execute(f'CREATE COLLECTION {exists}"{name}"{declared} WITH ({", ".join(options)})')
        return Collection(self, name)

    def collection(self, name: str) -> Collection:
        """A collection of the database."""
        if name not in self.collections():
            raise NotFoundError(
                f"collection '{name}' does not exist; collections are: "
                + (", ".join(self.collections()) or "none")
            )
        return Collection(self, name)

    def embed(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        model: str | None = None,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings of ``texts`` or ``images`` (paths, bytes,
        ``PIL.Image`` objects or uint8 arrays) by ``model`` (default: the built-in model),
        one row each."""
        if (texts is None) == (images is None):
            raise InvalidInputError("embed takes texts or images (one of them)")
        if texts is not None:
            return self._db.embed_texts(list(texts), model=model)
        assert images is not None
        items = [v if isinstance(v, (str, os.PathLike, bytes)) else _png(v) for v in images]
        return self._db.embed_images(items, model=model)

    def publish(self, built: Iterable[BuiltSegments]) -> int:
        """Publishes segments made by :meth:`Collection.build_segments` (in this process or
        others) in one commit and returns its version. Each is checked against its collection
        as it is now; one that no longer fits (the model or index changed since it was built,
        or it was published before) fails the call and nothing is committed."""
        version, _rows = self._db.publish([b.data for b in built])
        return version

    def __repr__(self) -> str:
        return f"mirante.Database('{self._db.path}')"


@dataclass(frozen=True)
class BuiltSegments:
    """Segments of a collection written by :meth:`Collection.build_segments` and not yet
    visible: pass them (from any process: they pickle) to :meth:`Database.publish`."""

    #: The collection they belong to.
    collection: str
    #: The ids the rows will have once published, in the order of the data.
    ids: list[int]
    #: The rows left out with ``skip_errors``: (location, image, reason).
    skipped: list[tuple[str, str | None, str]]
    #: The description the publishing commit checks (JSON).
    data: bytes

    @property
    def rows(self) -> int:
        """How many rows the segments hold."""
        return len(self.ids)


@dataclass(frozen=True)
class BuiltColumns:
    """A model's vectors for some segments, written by :meth:`Collection.embed_segments` and
    not yet attached: pass them (from any process: they pickle) to
    :meth:`Collection.publish_embedding`."""

    #: The collection they belong to.
    collection: str
    #: The model that computed them.
    model: str
    #: The description the publishing commit checks (JSON).
    data: bytes


class Collection:
    """A collection of a :class:`Database`: rows of an image, captions, a split and metadata."""

    __slots__ = ("db", "name")

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name

    @property
    def model(self) -> str | None:
        """The model that embeds the collection's rows and queries (``None`` without one), as
        :meth:`Database.embed` and ``model=`` arguments take it."""
        return self.db._db.collection_model(self.name)

    def __len__(self) -> int:
        result = self.db.execute(f'SELECT count(*) FROM "{self.name}"')
        return int(result.to_arrow().column(0)[0].as_py())

    def add(
        self,
        data: Any,
        *,
        skip_errors: bool = False,
        image_column: str = "image",
        text_column: str | None = None,
        split: str | None = None,
        columns: Sequence[str] | None = None,
        embeddings: tuple[str, str, str] | None = None,
        replace: str | None = None,
    ) -> list[int]:
        """Adds rows in one commit, embedded with the collection's model; returns their ids.

        ``data`` is a pyarrow Table or RecordBatchReader (anything with
        ``__arrow_c_stream__``), a pandas DataFrame, a Hugging Face ``datasets.Dataset``, or a
        list of dicts. Images are paths, bytes, ``PIL.Image`` objects, uint8 arrays or
        ``{bytes, path}`` structs; captions (``text`` by default) a string or a list of
        strings; ``split`` and scalar keys become metadata columns. A bad row fails the whole
        add (:class:`RowsFailedError` lists every bad row) and nothing is committed, unless
        ``skip_errors``, which leaves the bad rows out.

        ``embeddings=(image_vectors, caption_vectors, name)`` stores vectors made elsewhere
        instead of embedding: the columns holding each row's image vector and its captions'
        vectors (one per caption), kept as model ``name`` (see ``IMPORT``); such rows may have
        no image (a null image). ``replace`` is a ``WHERE`` predicate: the rows it selects are
        deleted in the same commit, so an upsert is never seen half done.
        """
        stream = _arrow_input(data, image_column)
        ids, _skipped = self.db._db.add(
            self.name,
            stream,
            skip_errors=skip_errors,
            image_column=image_column,
            text_column=text_column,
            split=split,
            columns=list(columns) if columns is not None else None,
            embeddings=embeddings,
            replace=replace,
        )
        return ids

    def build_segments(
        self,
        data: Any,
        *,
        skip_errors: bool = False,
        image_column: str = "image",
        text_column: str | None = None,
        split: str | None = None,
        columns: Sequence[str] | None = None,
        embeddings: tuple[str, str, str] | None = None,
        expected_rows: int | None = None,
    ) -> BuiltSegments:
        """Embeds and writes ``data`` (as :meth:`add` takes it) as segments of this
        collection without taking the writer lock, and returns them unpublished.

        This is the first phase of a two-phase write: many processes (Ray workers, one per
        GPU) build at once, then one :meth:`Database.publish` makes all their rows visible in
        one commit. Row ids are reserved in short commits (the first sized by
        ``expected_rows``, by default the length of ``data`` when it has one); segments never
        published are removed by ``VACUUM`` once older than a week.
        """
        stream = _arrow_input(data, image_column)
        if expected_rows is None:
            expected_rows = getattr(stream, "num_rows", None) or 1024
        built, ids, skipped = self.db._db.build_segments(
            self.name,
            stream,
            expected_rows=max(1, expected_rows),
            skip_errors=skip_errors,
            image_column=image_column,
            text_column=text_column,
            split=split,
            columns=list(columns) if columns is not None else None,
            embeddings=embeddings,
        )
        return BuiltSegments(self.name, ids, skipped, built)

    def prepare_embedding(self, model: str) -> list[int]:
        """First phase of an ``EMBED``/``REEMBED`` spread over processes: registers ``model``'s
        embedding spaces (searches keep using the current model) and returns the ids of the
        segments lacking its vectors, to share among workers."""
        return self.db._db.prepare_embedding(self.name, model)

    def embed_segments(self, model: str, segments: Sequence[int]) -> list[BuiltColumns]:
        """Second phase: embeds ``segments`` (ids from :meth:`prepare_embedding`) with
        ``model``, both towers, and writes the vectors without taking the writer lock. Runs in
        any process that opened the database."""
        return [
            BuiltColumns(self.name, model, data)
            for data in self.db._db.embed_segments(self.name, model, list(segments))
        ]

    def publish_embedding(
        self, model: str, built: Iterable[BuiltColumns], *, switch: bool = True
    ) -> str:
        """Last phase: attaches every worker's vectors in one commit, embeds here the segments
        they did not cover (merged meanwhile), and, with ``switch``, makes the collection
        search with ``model`` as ``REEMBED`` does (otherwise as ``EMBED``). Returns the
        status message."""
        return self.db._db.publish_embedding(self.name, model, [b.data for b in built], switch)

    def search(
        self,
        text: str | None = None,
        image: Any = None,
        row: int | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        *,
        where: str | None = None,
        limit: int = 10,
        model: str | None = None,
        rerank: str | None = None,
        top: int | None = None,
        match: str | None = None,
        with_images: bool = False,
    ) -> Result:
        """Searches by one of ``text``, ``image`` (a path, bytes, a ``PIL.Image`` or a uint8
        array, preprocessed exactly as a file with those pixels), ``row`` (a stored row's
        image) or ``vector`` (an embedding of the searched space).

        Text ranks images and an image ranks captions unless ``match`` is ``"images"`` or
        ``"texts"``. ``where`` filters rows before ranking (``"split = 'test' AND year >
        1900"``); ``model`` searches another model's embeddings of the collection; ``rerank``
        re-ranks the first ``top`` images with an ELIP model. Hits carry id, rank, score,
        captions, metadata and, with ``with_images``, the image bytes
        (:meth:`Result.images` gives ``PIL.Image`` objects).
        """
        given = [q for q in (text, image, row, vector) if q is not None]
        if len(given) != 1:
            raise InvalidInputError("search takes one of text, image, row or vector")
        if text is not None:
            kind, query = "text", text
        elif row is not None:
            kind, query = "row", int(row)
        elif vector is not None:
            kind, query = "vector", [float(x) for x in np.asarray(vector, dtype=np.float32).ravel()]
        elif isinstance(image, (str, os.PathLike)):
            kind, query = "image", os.fspath(image)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            kind, query = "image_bytes", bytes(image)
        else:
            kind, query = "image_bytes", _png(image)
        return Result(
            self.db._db.search(
                self.name,
                kind,
                query,
                where=where,
                limit=limit,
                model=model,
                rerank=rerank,
                top=top,
                match_=match,
                image_bytes=with_images,
            )
        )

    def embeddings(
        self, kind: str = "image", model: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of ``kind`` (``"image"``: one per row, ``"text"``: one per
        caption) of the collection's model, or ``model``'s: ``(ids, vectors)``, the row id of
        each vector and a read-only float32 array. When the collection is one segment without
        deleted rows (``COMPACT`` makes it so) the array reads the memory-mapped column file in
        place, without copying."""
        ids, _captions, vectors, _mapped = self.db._db.embeddings(self.name, kind=kind, model=model)
        return ids, vectors

    def image_vectors(
        self, ids: Sequence[int], model: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The stored image vectors of rows ``ids`` (of the collection's model, or ``model``'s),
        reading only those rows: ``(vectors, live)``, float32 rows in the order of ``ids`` and
        per id whether it is a live row (a row that is not has zeros)."""
        vectors, live = self.db._db.image_vectors(self.name, [int(i) for i in ids], model=model)
        return vectors, np.asarray(live, dtype=bool)

    def evaluate(
        self,
        metrics: Sequence[str] = ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"),
        *,
        where: str | None = None,
        models: Sequence[str] | None = None,
        direction: str | None = None,
    ) -> Result:
        """``EVALUATE`` of the collection: one row per (model, direction) with each metric
        (and deltas against the first model when several are compared)."""
        sql = f'EVALUATE {", ".join(metrics)} ON "{self.name}"'
        if where:
            sql += f" WHERE {where}"
        if direction:
            sql += f" DIRECTION {direction}"
        if models:
            sql += " USING MODEL " + ", ".join(_quote(m) for m in models)
        return self.db.execute(sql)

    def __repr__(self) -> str:
        return f"mirante.Collection('{self.name}')"
