"""The storage port: what the ingest pipeline asks of a backend.

``Store.open_write`` starts one request's streaming write (``Write``): a
transaction that takes groups of batches as they are decoded, and commits in
``finish()``. ``Part`` is a whole small request held in memory, for a group
commit (``group_write.commit_group``), where the parts of several requests
to one table are committed together.

A write's ``mode`` (``modes.py``) says what it does with its table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from .modes import APPEND, CREATE, CREATE_APPEND, REPLACE, TABLE_MODES
from .table_write import WriteResult

__all__ = [
    "APPEND",
    "CREATE",
    "CREATE_APPEND",
    "REPLACE",
    "TABLE_MODES",
    "Outcome",
    "Part",
    "Store",
    "Write",
]


class Write(Protocol):
    rows: int
    batches: int
    version: int | None  # Delta: the version the last commit made; None for DuckDB
    replayed: bool  # the key is already committed: nothing is written

    def group_full(self, rows: int, size: int, count: int) -> bool: ...
    def insert(self, group: list[pa.RecordBatch]) -> None: ...
    def finish(self) -> WriteResult: ...
    def rollback(self) -> None: ...


class Store(Protocol):
    backend: str

    def open_write(
        self,
        table: str,
        schema: pa.Schema,
        *,
        commit: str = ...,
        options: Any = ...,
        idempotency_key: str | None = ...,
        mode: str = ...,
    ) -> Write: ...


@dataclass(frozen=True, slots=True, eq=False)
class Part:
    """One request's whole write, for a group commit.

    ``deadline`` (a gRPC call's) raises once the request may no longer be
    committed; it is called in the committing thread, just before the commit.
    """

    schema: pa.Schema
    batches: tuple[pa.RecordBatch, ...]
    key: str | None = None  # the idempotency key, recorded in the same transaction
    options: Any = None  # Delta's write options for the table
    deadline: Callable[[], None] | None = None

    @property
    def rows(self) -> int:
        return sum(batch.num_rows for batch in self.batches)


# what a part's commit came to: its result, or why it was not written
Outcome = WriteResult | BaseException
