"""The RAG frameworks' metadata filters as Mirante ``WHERE`` conditions.

Two dictionary dialects are read: the Mongo-like one of LangChain and Chroma
(``{"split": "test"}``, ``{"year": {"$gte": 1900}}``, ``{"$and": [...]}``, ``$in``, ``$nin``)
and Haystack's (``{"field": "meta.split", "operator": "==", "value": "test"}``,
``{"operator": "AND", "conditions": [...]}``). A string is taken as a ``WHERE`` condition
already. Column names must be plain identifiers and values are written as SQL literals, so a
filter can never add a statement.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from typing import Any

from mirante._mirante import InvalidInputError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMPARISONS = {
    "$eq": "=",
    "$ne": "<>",
    "$gt": ">",
    "$gte": ">=",
    "$lt": "<",
    "$lte": "<=",
    "==": "=",
    "!=": "<>",
    ">": ">",
    ">=": ">=",
    "<": "<",
    "<=": "<=",
}


def to_where(
    filter: str | Mapping[str, Any] | None, *, reserved: Collection[str] = ()
) -> str | None:
    """The ``WHERE`` condition of ``filter`` (``None`` for no filter). A dict naming a field in
    ``reserved`` (metadata keys a store keeps out of the columns) is refused."""
    if filter is None or isinstance(filter, str):
        return filter or None
    if not isinstance(filter, Mapping):
        raise InvalidInputError(
            f"a filter is a WHERE string or a dict, not {type(filter).__name__}"
        )
    if not filter:
        return None
    column = partial(_column, reserved=reserved)
    if "operator" in filter:
        return _haystack(filter, column)
    return _mongo(filter, column)


def _column(name: str, reserved: Collection[str]) -> str:
    for prefix in ("meta.", "metadata."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if name == "content":
        name = "text"
    if name in reserved:
        raise InvalidInputError(
            f"metadata key {name!r} cannot be filtered on: it is the name of a built-in column "
            "(the value stays in the documents' metadata); use another key"
        )
    if not _IDENTIFIER.fullmatch(name):
        raise InvalidInputError(f"filter field {name!r} is not a column name")
    return name


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise InvalidInputError(f"filter value {value!r} is not a string, number or boolean")


def _compare(column: str, op: str, value: Any) -> str:
    if op in ("$in", "in", "$nin", "not in"):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise InvalidInputError(f"{op} takes a non-empty list, got {value!r}")
        keyword = "IN" if op in ("$in", "in") else "NOT IN"
        return f"{column} {keyword} ({', '.join(_literal(v) for v in value)})"
    if op not in _COMPARISONS:
        raise InvalidInputError(f"filter operator {op!r} is not one of {sorted(_COMPARISONS)}")
    if value is None and op in ("$eq", "=="):
        return f"{column} IS NULL"
    if value is None and op in ("$ne", "!="):
        return f"{column} IS NOT NULL"
    return f"{column} {_COMPARISONS[op]} {_literal(value)}"


def _join(parts: list[str], keyword: str) -> str:
    if not parts:
        raise InvalidInputError(f"{keyword} of no conditions")
    return parts[0] if len(parts) == 1 else "(" + f" {keyword} ".join(parts) + ")"


def _mongo(filter: Mapping[str, Any], column: Callable[[str], str]) -> str:
    parts = []
    for key, value in filter.items():
        if key in ("$and", "$or"):
            parts.append(_join([_mongo(f, column) for f in value], key[1:].upper()))
        elif isinstance(value, Mapping):
            name = column(key)
            parts.append(_join([_compare(name, op, v) for op, v in value.items()], "AND"))
        else:
            parts.append(_compare(column(key), "$eq", value))
    return _join(parts, "AND")


def _haystack(filter: Mapping[str, Any], column: Callable[[str], str]) -> str:
    op = filter["operator"]
    if op in ("AND", "OR"):
        return _join([_haystack(f, column) for f in filter.get("conditions", [])], op)
    if op == "NOT":
        inner = [_haystack(f, column) for f in filter.get("conditions", [])]
        return f"NOT {_join(inner, 'AND')}"
    return _compare(column(filter["field"]), op, filter.get("value"))
