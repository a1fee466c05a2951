"""Group commit: several small requests to one table in one transaction.

``commit_group`` runs in a worker thread with the parts of the requests that
waited for one table (io/group_commit.py gathers them) and returns one
``Outcome`` per part, in order: its ``WriteResult``, or the error it alone
is answered with.

Invariants:

* Each part's rows are in exactly one commit, all or none of them.
* A part that cannot be written (its schema does not fit, its key was
  committed before, its deadline passed, its rows break a NOT NULL column) is
  left out before anything is inserted, and the others commit without it.
  A failure that spoils the transaction before its COMMIT (DuckDB refused an
  INSERT, a deadline passed, a rival committed a key meanwhile) rolls the whole
  group back, and then each part is written alone, in a transaction of its own,
  so that only the culprit fails. A COMMIT that fails is not retried part by
  part: it may have landed (a catalog that failed mid-commit), so every part in
  it is answered with the error, as a single write's would be.
* Idempotency keys are recorded in the transaction of the rows they name; a
  key already committed, or twice in one group, is answered as a replay.
* DuckDB and DuckLake stores group parts into one transaction (one snapshot,
  for DuckLake); Delta stores into one Delta version (``delta_group.py``).
  Other stores write each part alone, in order: correct but not faster.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import duckdb
import pyarrow as pa

from ..protocol.errors import ArrowportError
from .duckdb import DuckDBStore
from .port import Outcome, Part
from .table_write import WriteResult


class _Spoiled(Exception):
    """The group's transaction cannot go on: write each part alone."""


def commit_group(store: Any, table: str, parts: list[Part]) -> list[Outcome]:
    """Commit ``parts`` into ``table``; one outcome per part (see the module's doc)."""
    if len(parts) > 1 and getattr(store, "backend", None) == "delta":
        from . import delta_group  # imported here: deltalake only loads for Delta

        return delta_group.commit_group(store, table, parts)
    if isinstance(store, DuckDBStore):  # one part too: the same work, with fewer steps
        try:
            if len(parts) == 1 and parts[0].key is None and store.backend == "duckdb":
                outcomes = _one_statement(store, table, parts[0])
            else:
                outcomes = _one_transaction(store, table, parts)
        except _Spoiled:
            outcomes = None
        if outcomes is not None:
            return outcomes
    return [write_alone(store, table, part) for part in parts]


def write_alone(store: Any, table: str, part: Part) -> Outcome:
    """``part`` in a transaction of its own (the usual streaming write, all at once)."""
    try:
        write = store.open_write(
            table, part.schema, commit="request", options=part.options, idempotency_key=part.key
        )
        try:
            if part.batches and not write.replayed:
                write.insert(list(part.batches))
            if part.deadline is not None and not write.replayed:
                part.deadline()
            result: WriteResult = write.finish()
            return result
        except BaseException:
            write.rollback()
            raise
    except Exception as exc:
        return exc


def _one_statement(store: DuckDBStore, table: str, part: Part) -> list[Outcome] | None:
    """A lone part without a key, into a DuckDB file's existing table: one INSERT, which is
    a transaction of its own (autocommit costs DuckDB about half what BEGIN ... COMMIT
    does). The table's columns are read just before; the server is the file's only
    writer and holds the table's lock, so they cannot change in between. None if the table
    is missing; raises ``_Spoiled`` if the INSERT fails (nothing is written)."""
    try:
        plan = store.check_stream(part.schema, "request", None)
    except ArrowportError as exc:
        return [exc]
    with store.gate.use(store.gate.generation):
        cur = store.new_cursor()
        try:
            existing = store.table_columns(cur, table)
            if existing is None:
                return None
            try:
                store.check_fits(cur, table, plan.target, existing)
                batches = [plan.convert(b) for b in part.batches] if not plan.identity else None
                rows = batches if batches is not None else list(part.batches)
                if part.deadline is not None:
                    part.deadline()
            except ArrowportError as exc:
                return [exc]
            if rows:
                _commit_statement(store, cur, table, plan.target, rows, part)
        except duckdb.Error as exc:
            store.translate(exc)  # a fatal engine error invalidates the connection
            raise _Spoiled from None
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.close()
    store.commits += 1
    return [WriteResult(table, part.rows, len(part.batches), False)]


def _commit_statement(
    store: DuckDBStore,
    cur: duckdb.DuckDBPyConnection,
    table: str,
    schema: pa.Schema,
    rows: list[pa.RecordBatch],
    part: Part,
) -> None:
    """The INSERT that commits a lone part (one step of its own, which the crash-safety
    tests' probes wrap, as ``_commit``)."""
    store.insert_rows(cur, table, schema, rows)


def _one_transaction(store: DuckDBStore, table: str, parts: list[Part]) -> list[Outcome] | None:
    """The group in one DuckDB transaction; None if the table is missing (the parts are
    then written alone: the first creates it). Raises ``_Spoiled`` after a rollback."""
    outcomes: list[Outcome | None] = [None] * len(parts)
    plans: dict[int, Any] = {}
    for index, part in enumerate(parts):
        try:
            plans[index] = store.check_stream(part.schema, "request", part.key)
        except ArrowportError as exc:
            outcomes[index] = exc
    if any(part.key is not None for part in parts):
        try:
            store.before_keyed_write()
        except ArrowportError:
            raise _Spoiled from None  # alone, only the keyed parts meet it again
    generation = store.gate.generation
    claims: list[Any] = []
    with store.gate.use(generation):
        cur = store.new_cursor()
        try:
            cur.begin()
            existing = store.table_columns(cur, table)
            if existing is None:
                cur.rollback()
                return None
            written = _insert_parts(store, cur, table, parts, plans, outcomes, existing)
            for index in written:
                if parts[index].deadline is not None:
                    try:
                        parts[index].deadline()  # type: ignore[misc]
                    except ArrowportError:
                        raise _Spoiled from None  # alone, it is refused and the rest commit
            # DuckLake: wait out a rival committing one of the keys (another instance), in
            # key order; one that committed meanwhile makes its part a replay: alone, then
            for key in sorted({k for i in written if (k := parts[i].key) is not None}):
                claim = store.claim_key(table, key)
                if claim is not None:
                    claims.append(claim)
                    if claim.replay is not None:
                        raise _Spoiled
            for index in written:
                part = parts[index]
                if part.key is not None:
                    store.record_key(cur, part.key, table, part.rows, len(part.batches))
            try:
                _commit(cur, [parts[i] for i in written])
            except (duckdb.Error, ArrowportError) as exc:
                # it may have landed (a catalog that failed mid-commit): never written again;
                # every part in it is answered with the error (a keyed retry is exact)
                _rollback(cur)
                failed = store.translate(exc)
                return [
                    outcome if outcome is not None else copy.copy(failed) for outcome in outcomes
                ]
            try:
                version = store.committed_version(cur) if written else None
            except duckdb.Error:
                version = None  # committed; only its number is unknown
        except _Spoiled:
            _rollback(cur)
            raise
        except (duckdb.Error, ArrowportError) as exc:
            _rollback(cur)
            store.translate(exc)  # a fatal engine error invalidates the connection
            raise _Spoiled from None
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.close()
            for claim in claims:  # after the commit or rollback
                claim.release()
        store.commits += 1
    store.keyed_commits += sum(1 for i in written if parts[i].key is not None)
    firsts: dict[str, WriteResult] = {}
    for index in written:
        part = parts[index]
        result = WriteResult(table, part.rows, len(part.batches), False, version)
        outcomes[index] = result
        if part.key is not None:
            firsts[part.key] = result
    for index, outcome in enumerate(outcomes):
        if outcome is None:  # a key twice in the group: the later ones replay the first
            twice = parts[index].key
            assert twice is not None and twice in firsts
            first = firsts[twice]
            outcomes[index] = WriteResult(table, first.rows, first.batches, False, replayed=True)
            store.replays += 1
    return [outcome for outcome in outcomes if outcome is not None]


def _insert_parts(
    store: DuckDBStore,
    cur: duckdb.DuckDBPyConnection,
    table: str,
    parts: list[Part],
    plans: dict[int, Any],
    outcomes: list[Outcome | None],
    existing: Any,
) -> list[int]:
    """Check each part, then insert those that pass: one INSERT per distinct schema.
    Returns the indexes inserted; a part left out gets its outcome (a replayed key, or
    its error); a later part with the key of one inserted keeps None (a replay)."""
    keys: set[str] = set()
    ready: dict[pa.Schema, list[int]] = {}
    batches: dict[int, list[pa.RecordBatch]] = {}
    for index, plan in plans.items():
        part = parts[index]
        if part.key is not None:
            if part.key in keys:
                continue  # answered as a replay of the first (None until then)
            replay = store.ledger_entry(cur, table, part.key)
            if replay is not None:
                outcomes[index] = WriteResult(table, *replay, False, replayed=True)
                store.replays += 1
                continue
        try:
            store.check_fits(cur, table, plan.target, existing)
            converted = [plan.convert(b) for b in part.batches] if not plan.identity else None
            batches[index] = converted if converted is not None else list(part.batches)
            store.check_rows(cur, table, plan.target, batches[index], existing)
            if part.deadline is not None:
                part.deadline()
        except ArrowportError as exc:  # SchemaMismatchError, WriteRejectedError, deadline
            outcomes[index] = exc
            continue
        if part.key is not None:
            keys.add(part.key)
        ready.setdefault(plan.target, []).append(index)
    written: list[int] = []
    for schema, indexes in ready.items():
        group = [batch for index in indexes for batch in batches[index]]
        if group:
            DuckDBStore.insert_rows(store, cur, table, schema, group)  # rows checked above
        written.extend(indexes)
    return sorted(written)


def _commit(cur: duckdb.DuckDBPyConnection, parts: list[Part]) -> None:
    """COMMIT the group's transaction, which holds ``parts`` (one step of its own, which
    the crash-safety tests' probes wrap)."""
    cur.commit()


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):
        cur.rollback()
