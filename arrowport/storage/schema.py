"""The schema policy: an incoming stream must be a subset of its table.

Columns are matched by name, case-insensitively (as DuckDB resolves
identifiers). A stream may omit nullable table columns. Types must match,
except for lossless numeric widenings that DuckDB performs on insert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..names import validate_idempotency_key
from .errors import SchemaMismatchError, WriteRejectedError

_SIGNED = ["TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"]
_UNSIGNED = ["UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"]

# stream type -> table types it may be inserted into without loss
WIDENINGS: dict[str, frozenset[str]] = {
    "TINYINT": frozenset([*_SIGNED[1:], "FLOAT", "DOUBLE"]),
    "SMALLINT": frozenset([*_SIGNED[2:], "FLOAT", "DOUBLE"]),
    "INTEGER": frozenset([*_SIGNED[3:], "DOUBLE"]),
    "BIGINT": frozenset(_SIGNED[4:]),
    "UTINYINT": frozenset(_UNSIGNED[1:] + _SIGNED[1:] + ["FLOAT", "DOUBLE"]),
    "USMALLINT": frozenset(_UNSIGNED[2:] + _SIGNED[2:] + ["FLOAT", "DOUBLE"]),
    "UINTEGER": frozenset(_UNSIGNED[3:] + _SIGNED[3:] + ["DOUBLE"]),
    "UBIGINT": frozenset(_UNSIGNED[4:] + _SIGNED[4:]),
    "FLOAT": frozenset(["DOUBLE"]),
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    nullable: bool = True


def duplicate_names(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    dupes = []
    for name in names:
        key = name.lower()
        if key in seen:
            dupes.append(name)
        seen.add(key)
    return dupes


def check_subset(table: str, incoming: Sequence[Column], existing: Sequence[Column]) -> None:
    """Raise ``SchemaMismatchError`` unless ``incoming`` fits ``existing``."""
    by_name = {c.name.lower(): c for c in existing}
    incoming_names = {c.name.lower() for c in incoming}
    extra = tuple(c.name for c in incoming if c.name.lower() not in by_name)
    mistyped = tuple(
        (c.name, by_name[c.name.lower()].type, c.type)
        for c in incoming
        if c.name.lower() in by_name
        and c.type != by_name[c.name.lower()].type
        and by_name[c.name.lower()].type not in WIDENINGS.get(c.type, ())
    )
    missing = tuple(
        c.name for c in existing if not c.nullable and c.name.lower() not in incoming_names
    )
    if not (extra or mistyped or missing):
        return
    problems = []
    if extra:
        problems.append(f"columns not in the table: {', '.join(extra)}")
    if mistyped:
        problems.append(
            "columns with conflicting types: "
            + ", ".join(f"{name} (table {t}, stream {s})" for name, t, s in mistyped)
        )
    if missing:
        problems.append(f"NOT NULL columns missing from the stream: {', '.join(missing)}")
    raise SchemaMismatchError(
        f"stream schema does not match table {table!r}: " + "; ".join(problems),
        extra=extra,
        missing=missing,
        mistyped=mistyped,
    )


def check_key(idempotency_key: str | None, commit: str) -> None:
    """A key must be well formed, and is for request mode only (every backend's rule)."""
    if idempotency_key is not None:
        validate_idempotency_key(idempotency_key)
        if commit != "request":
            raise WriteRejectedError(
                "idempotency keys need commit: request; in batch mode each commit is "
                "acknowledged as it happens, so resend only unacknowledged batches",
                error="idempotency_unsupported",
            )
