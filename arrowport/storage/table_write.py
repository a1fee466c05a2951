"""One request's write into one DuckDB table (used from worker threads).

Invariants: methods are short synchronous steps (start, insert a group,
finish, roll back), never called concurrently; no method waits on the
network. A failed step rolls the open transaction back before it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from .errors import TableExistsError, TableNotFoundError
from .modes import APPEND, CREATE, CREATE_APPEND
from .recovery import StorageUnavailable
from .tables import table_names

if TYPE_CHECKING:
    from .duckdb import DuckDBStore
    from .ducklake_claim import KeyClaim
    from .typemap import TypePlan


@dataclass(frozen=True, slots=True)
class WriteResult:
    table: str
    rows: int
    batches: int
    created: bool
    version: int | None = None  # Delta: the table version this write committed
    replayed: bool = False  # an idempotency key already committed: nothing was written


class TableWrite:
    """One request's write into one table: a transaction, or one per batch.

    Each method is short, synchronous work for a worker thread; the caller
    collects batches (from the network) without holding a thread, and calls
    ``insert`` with whole groups. Methods are never called concurrently.
    ``rows`` and ``batches`` count what ``insert`` has written (committed, in
    batch mode).
    """

    def __init__(
        self,
        store: DuckDBStore,
        cur: duckdb.DuckDBPyConnection,
        table: str,
        schema: pa.Schema,
        mode: str,
        *,
        key: str | None = None,
        plan: TypePlan | None = None,
        table_mode: str = CREATE_APPEND,
    ) -> None:
        self.store, self.cur, self.table, self.schema, self.mode = store, cur, table, schema, mode
        self.table_mode = table_mode  # what to do with the table (``modes.py``)
        self.plan = plan  # the stream's columns in the types stored (schema is its target)
        self.key = key  # an idempotency key, recorded in the ledger with the commit
        self.replayed = False
        self.replay: tuple[int, int] | None = None  # the key was committed meanwhile
        self._key_checked = False  # looked up in this transaction's snapshot
        self.claim: KeyClaim | None = None  # DuckLake: the key's claim, held until close
        self.rows = 0
        self.batches = 0
        self.version: int | None = None  # DuckLake: the snapshot committed (DuckDB: None)
        self.created = False
        self._prepared = False
        self._creating = False
        self._in_transaction = False
        self._closed = False
        self.generation = store.gate.generation  # of the connection ``cur`` belongs to

    # grouping: DuckDB keeps every Arrow batch a statement scanned alive until
    # the statement ends, so an INSERT takes a bounded group, not a request;
    # a few row groups per INSERT still let DuckDB insert on all its threads.
    def group_full(self, rows: int, size: int, count: int) -> bool:
        if self.mode == "batch":
            return count >= 1
        store = self.store
        return (
            rows >= store.insert_group_rows
            or size >= store.insert_group_bytes
            or count >= store.insert_group_batches
        )

    def groups(self, batches: Iterable[pa.RecordBatch]) -> Iterator[list[pa.RecordBatch]]:
        group: list[pa.RecordBatch] = []
        rows = size = 0
        for batch in batches:
            group.append(batch)
            rows += batch.num_rows
            size += batch.get_total_buffer_size()
            if self.group_full(rows, size, len(group)):
                yield group
                group, rows, size = [], 0, 0
        if group:
            yield group

    def start(self) -> None:
        """Request mode: BEGIN and create or check the table. Batch mode: check only."""
        self._run(self._start)

    def _start(self) -> None:
        if self.table_mode != CREATE_APPEND:
            self._start_in_mode()
            return
        if self.mode == "request" and self._start_appending():
            return
        if self.key is not None:
            # the table is missing (dropped since?): look the key up before creating it
            self.replay = self.store.ledger_entry(self.cur, self.table, self.key)
            if self.replay is not None:  # open_write answers it as a replay
                return
        # a store shared with other processes creates a missing table in a snapshot of
        # its own first: two transactions creating one table conflict, and the loser's
        # data would be lost with it (see DuckLakeStore.create_shared_table)
        precreated = self.store.create_shared_table(self.cur, self.table, self.schema)
        # a write that may create its table holds off the store's snapshot expiry
        self._creating = self.store.enter_create(self.cur, self.table)
        if self.mode == "batch":
            existing = self.store.table_columns(self.cur, self.table)
            if existing is not None:  # refuse a mismatch before any batch is read
                self.store.check_fits(self.cur, self.table, self.schema, existing)
            self.created = precreated
            return
        self._begin()
        self.created = self.store.prepare_table(self.cur, self.table, self.schema) or precreated
        self._prepared = True

    def _start_appending(self) -> bool:
        """Request mode into an existing table (the usual case): BEGIN, then check the
        schema in that snapshot. False, with nothing begun, if the table is missing.

        The table is looked up after the BEGIN, not before: on DuckLake each read
        outside a transaction is a transaction of its own, which loads the catalog.
        (The cursor's ``USE lake`` still is one.)
        """
        self._begin()
        existing = self.store.table_columns(self.cur, self.table)
        if existing is None:
            self.cur.rollback()
            self._in_transaction = False
            return False
        if self.key is not None:
            # the snapshot the commit is made from: no need to look again at the end
            self.replay = self.store.ledger_entry(self.cur, self.table, self.key)
            self._key_checked = True
            if self.replay is not None:  # open_write answers it as a replay
                return True
        self.store.check_fits(self.cur, self.table, self.schema, existing)
        self._prepared = True
        return True

    def _start_in_mode(self) -> None:
        """create, append or replace (request mode): BEGIN, then look up the key and the
        table in that snapshot (the store's caller holds the table's lock), so that
        what is decided is what the commit finds. A key committed before is a replay
        whatever the table's state (a retried ``create`` finds its own table).
        """
        self._begin()
        if self.key is not None:
            self.replay = self.store.ledger_entry(self.cur, self.table, self.key)
            self._key_checked = True
            if self.replay is not None:  # open_write answers it as a replay
                return
        existing = self.store.table_columns(self.cur, self.table)
        if self.table_mode == APPEND:
            if existing is None:
                raise TableNotFoundError.named(self.table, table_names(self.cur))
            self.store.check_fits(self.cur, self.table, self.schema, existing)
        elif existing is not None and self.table_mode == CREATE:
            raise TableExistsError.named(self.table, self.store.backend)
        else:  # create the missing table, or replace: drop it and create it, in this transaction
            replacing = existing is not None
            self._creating = self.store.enter_create(self.cur, self.table, replacing=replacing)
            if replacing:
                self.store.drop_in(self.cur, self.table)
            self.store.prepare_table(self.cur, self.table, self.schema)
            self.created = True
        self._prepared = True

    def insert(self, group: list[pa.RecordBatch]) -> None:
        """Insert ``group`` (batch mode: commit each batch on its own)."""
        self._run(self._insert_group, group)

    def _insert_group(self, group: list[pa.RecordBatch]) -> None:
        if self.plan is not None and not self.plan.identity:
            group = [self.plan.convert(batch) for batch in group]
        if self.mode != "batch":
            self.store.insert_rows(self.cur, self.table, self.schema, group)
            self.rows += sum(b.num_rows for b in group)
            self.batches += len(group)
            return
        for batch in group:
            self._begin()
            self._prepare_once()
            self.store.insert_rows(self.cur, self.table, self.schema, [batch])
            self._commit()
            self._created_now()  # the table exists: the rest of the stream only appends
            self.rows += batch.num_rows
            self.batches += 1

    def finish(self) -> WriteResult:
        """Commit (request mode), or create the table of a schema-only batch stream."""
        self._run(self._finish)
        if self.replay is not None:
            return WriteResult(self.table, *self.replay, False, replayed=True)
        return WriteResult(self.table, self.rows, self.batches, self.created, self.version)

    def _finish(self) -> None:
        if self.mode == "batch":
            if not self._prepared:
                self._begin()
                self._prepare_once()
                self._commit()
        else:
            if self.key is None:
                try:
                    self._commit()
                except duckdb.Error:
                    self._created_by_a_rival()
                    raise
            else:
                try:
                    if not self._record_key():
                        return
                    self._commit()
                except duckdb.Error:
                    if not self._committed_by_a_rival():
                        self._created_by_a_rival()
                        raise
                    return
                self.store.keyed_commits += 1
        self.close()

    def _committed_by_a_rival(self) -> bool:
        """After a failed keyed commit: whether another request committed the key (its
        ledger row conflicted with ours); then this one rolls back and replays."""
        assert self.key is not None
        self.rollback()
        with self.store._cursor() as cur:  # a fresh snapshot, which sees the rival's commit
            replay = self.store.ledger_entry(cur, self.table, self.key)
        if replay is None:
            return False
        self.replay = replay
        self.store.replays += 1
        return True

    def _created_by_a_rival(self) -> None:
        """After a failed commit of a ``create``: if another writer (another instance on a
        shared DuckLake catalog) created the table meanwhile, say so (TableExistsError)."""
        if self.table_mode != CREATE:
            return
        self.rollback()
        with self.store._cursor() as cur:  # a fresh snapshot, which sees the rival's commit
            if self.store.table_columns(cur, self.table) is not None:
                raise TableExistsError.named(self.table, self.store.backend)

    def _record_key(self) -> bool:
        """Put the key in the ledger, in this transaction; False (rolled back) if a
        request with the same key committed first."""
        assert self.key is not None
        replay = (
            None if self._key_checked else self.store.ledger_entry(self.cur, self.table, self.key)
        )
        if replay is None:  # DuckLake: wait out rivals with this key, then look again
            self.claim = self.store.claim_key(self.table, self.key)
            replay = None if self.claim is None else self.claim.replay
        if replay is not None:
            self.replay = replay
            self.store.replays += 1
            self.rollback()
            return False
        self.store.record_key(self.cur, self.key, self.table, self.rows, self.batches)
        return True

    def rollback(self) -> None:
        """Roll back an open transaction (safe to call at any time, and twice)."""
        if self._in_transaction:
            self._in_transaction = False
            if self._quietly(self.cur.rollback):
                self.store.rollbacks += 1
        self.close()

    def abandon(self) -> None:
        """End a write that wrote nothing (its key was found): no rollback is counted."""
        if self._in_transaction:
            self._in_transaction = False
            self._quietly(self.cur.rollback)  # it read only: nothing to undo
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._quietly(self.cur.close)
        if self.claim is not None:  # after the commit or rollback: rivals may look now
            claim, self.claim = self.claim, None
            claim.release()
        self._created_now()

    def _quietly(self, step: Callable[[], object]) -> bool:
        """Run ``step`` on the cursor unless its connection is invalidated or replaced (whose
        closing ends the transaction anyway); True if it ran without a DuckDB error."""
        try:
            self.store.gate.enter(self.generation)
        except StorageUnavailable:
            return False
        try:
            step()
            return True
        except duckdb.Error:
            return False
        finally:
            self.store.gate.exit()

    def _created_now(self) -> None:
        """The write can no longer create its table: release the store's hold."""
        if self._creating:
            self._creating = False
            self.store.exit_create()

    def _begin(self) -> None:
        self.cur.begin()
        self._in_transaction = True

    def _commit(self) -> None:
        self.cur.commit()
        self._in_transaction = False
        self.store.commits += 1
        self.version = self.store.committed_version(self.cur)

    def _prepare_once(self) -> None:
        if not self._prepared:  # batch mode: the table appears with its first commit
            created = self.store.prepare_table(self.cur, self.table, self.schema)
            self.created = created or self.created  # or created ahead (create_shared_table)
            self._prepared = True

    def _run(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            with self.store.gate.use(self.generation):  # never on a replaced connection
                fn(*args)
        except BaseException as exc:
            self.rollback()
            raise self.store.translate(exc) from None


class ReplayWrite:
    """The write of a request whose idempotency key is already committed.

    It takes the batches (the body is still read and validated) but writes
    nothing, and ``finish()`` answers the original result, flagged replayed.
    """

    def __init__(self, table: str, rows: int, batches: int) -> None:
        self.table = table
        self.original = (rows, batches)
        self.replayed = True
        self.version: int | None = None
        self.rows = 0
        self.batches = 0

    def group_full(self, rows: int, size: int, count: int) -> bool:
        return True  # nothing to gather: let each batch go at once

    def groups(self, batches: Iterable[pa.RecordBatch]) -> Iterator[list[pa.RecordBatch]]:
        for batch in batches:
            yield [batch]

    def insert(self, group: list[pa.RecordBatch]) -> None:
        self.rows += sum(b.num_rows for b in group)
        self.batches += len(group)

    def finish(self) -> WriteResult:
        return WriteResult(self.table, *self.original, False, replayed=True)

    def rollback(self) -> None:
        pass
