"""Errors raised by storage writers and readers (part of the one error tree).

They carry codes only; ``arrowport/io/status.py`` says what each is answered with.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from ..errors import ArrowportError


class SchemaMismatchError(ArrowportError):
    """The incoming schema does not fit the target table: 422."""

    error = "schema_mismatch"

    def __init__(
        self,
        detail: str,
        *,
        extra: tuple[str, ...] = (),
        missing: tuple[str, ...] = (),
        mistyped: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        super().__init__(detail)
        self.extra = extra
        self.missing = missing
        self.mistyped = mistyped

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        body["extra_columns"] = list(self.extra)
        body["missing_columns"] = list(self.missing)
        body["mistyped_columns"] = [
            {"column": c, "table_type": t, "stream_type": s} for c, t, s in self.mistyped
        ]
        return body


class UnsupportedTypeError(ArrowportError):
    """A column's Arrow type has no DuckDB equivalent: 422."""

    error = "unsupported_type"


class UnrepresentableValueError(ArrowportError):
    """A value the backend cannot store exactly (it would be cut or changed): 422."""

    error = "unrepresentable_value"


class WriteRejectedError(ArrowportError):
    """The database refused the rows (constraint, conversion): 422."""

    error = "write_rejected"


class StorageError(ArrowportError):
    """The storage layer failed (I/O, disk full, lock): 503."""

    error = "storage_error"


class IngestAborted(ArrowportError):
    """The request ended before its stream completed; nothing was committed."""

    error = "aborted"


class TableNotFoundError(ArrowportError):
    """The named table does not exist (reads and drops): 404."""

    error = "table_not_found"

    def __init__(self, detail: str, *, table: str, suggestions: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.table = table
        self.suggestions = suggestions

    @classmethod
    def named(cls, table: str, existing: Iterable[str]) -> TableNotFoundError:
        """The error for ``table``, suggesting close matches among ``existing``."""
        suggestions = close_matches(table, existing)
        detail = f"table {table!r} does not exist"
        if suggestions:
            detail += f"; did you mean {_alternatives(suggestions)}?"
        return cls(detail, table=table, suggestions=suggestions)

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        body["table"] = self.table
        body["did_you_mean"] = list(self.suggestions)
        return body


class TableExistsError(ArrowportError):
    """The table exists, and the write was to create it (Flight SQL ``create``): 409."""

    error = "table_exists"

    def __init__(self, detail: str, *, table: str) -> None:
        super().__init__(detail)
        self.table = table

    @classmethod
    def named(cls, table: str, backend: str) -> TableExistsError:
        return cls(
            f"table {table!r} already exists in the {backend} backend; append to it, "
            "replace it, or create another table",
            table=table,
        )


class InvalidReadError(ArrowportError):
    """A read asks for something impossible (a negative limit, a repeated column): 400."""

    error = "invalid_read"


class ColumnNotFoundError(InvalidReadError):
    """A read names columns the table does not have: 400."""

    error = "column_not_found"

    def __init__(
        self, detail: str, *, table: str, missing: tuple[str, ...], columns: tuple[str, ...]
    ) -> None:
        super().__init__(detail)
        self.table = table
        self.missing = missing
        self.columns = columns

    @classmethod
    def named(
        cls, table: str, missing: Sequence[str], columns: Sequence[str]
    ) -> ColumnNotFoundError:
        """The error for ``missing``, naming the table's ``columns`` and close matches."""
        names = ", ".join(repr(name) for name in missing)
        noun = "column" if len(missing) == 1 else "columns"
        detail = f"table {table!r} has no {noun} {names}"
        suggestions = [match for name in missing for match in close_matches(name, columns)]
        if suggestions:
            detail += f" (did you mean {_alternatives(tuple(dict.fromkeys(suggestions)))}?)"
        detail += f"; its columns are: {', '.join(columns)}"
        return cls(detail, table=table, missing=tuple(missing), columns=tuple(columns))

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        body["table"] = self.table
        body["missing_columns"] = list(self.missing)
        body["table_columns"] = list(self.columns)
        return body


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> tuple[str, ...]:
    """Up to ``n`` of ``candidates`` close to ``name``, ignoring case (as DuckDB does)."""
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=n)
    return tuple(by_lower[m] for m in matches)


def _alternatives(names: tuple[str, ...]) -> str:
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message: delta-rs appends Rust backtraces and paths."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
