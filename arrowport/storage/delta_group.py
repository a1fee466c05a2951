"""Group commit for Delta: the parts of a group in one Delta version.

``commit_group`` (called by ``group_write.commit_group`` for a ``DeltaStore``)
opens one ``DeltaWrite`` per part, which checks the part's schema and finds
its key's replay, writes each part's data files, and then commits the files
of every part that passed in one commit (``GroupWrite``), with a ``txn``
action per idempotency key and the keys' own rows and batches in the
``commitInfo`` (``META_KEYS``, read by ``DeltaStore.find_replay``).

Invariants (those of ``group_write``, for Delta):

* Each part's rows are in exactly one commit, all or none of them: a part
  whose files are not in the group's commit has them deleted.
* A part that cannot be written (its schema does not fit, its rows cannot be
  cast, its deadline passed, its key is committed) is left out, and the
  others commit without it; a key found committed only at the commit (by
  another writer meanwhile) has its part's files taken out of that commit.
  A key twice in the group: the first part is written, the later ones are
  answered as its replay.
* Only parts with the first's table schema, partition columns and options
  share the commit (they write identical files); the others are written
  alone after it, in order, as is a part whose key an earlier one of those
  has.
* A shared commit that failed and did not land is rolled back and each part
  is written alone, so that only the culprit fails. One that may have landed
  (the log cannot be read) keeps its files, as ``DeltaWrite`` does, and every
  part in it is answered with that error: never written twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from deltalake import DeltaTable
from deltalake.transaction import AddAction, CommitProperties, Transaction

from .delta import DeltaStore
from .delta_write import (
    KEY_PREFIX,
    META_BATCHES,
    META_COMMIT,
    META_KEYS,
    META_READ,
    META_ROWS,
    DeltaWrite,
    Replay,
    _Files,
)
from .group_write import write_alone
from .port import Outcome, Part
from .table_write import WriteResult


@dataclass(slots=True)
class _Member:
    """One part's share of a group commit."""

    index: int
    key: str | None
    rows: int
    batches: int
    pending: list[AddAction]
    made: list[str]
    replay: Replay | None = None  # its key was committed before the group's commit


class GroupWrite(DeltaWrite):
    """The commit of several parts' files (each written by its own ``DeltaWrite``)."""

    def __init__(self, first: DeltaWrite) -> None:
        super().__init__(
            first.store,
            first.table,
            first.path,
            first.delta_schema,
            "request",
            first.options,
            first.partition_by,
            created=first.created,
        )
        self.members: list[_Member] = []
        self.uncertain = False  # the commit may have landed: its files are kept

    def absorb(self, index: int, write: DeltaWrite) -> None:
        """Take over ``write``'s closed files (it ends: its rollback deletes nothing)."""
        files = write._files
        assert not files.open
        self.members.append(
            _Member(index, write.key, write.rows, write.batches, files.pending, files.made)
        )
        self._files.pending.extend(files.pending)
        self._files.made.extend(files.made)
        self._made_dirs.extend(write._made_dirs)
        write._files, write._made_dirs, write._done = _Files(), [], True

    def commit(self) -> dict[int, WriteResult]:
        """Commit the members' files in one version; each member's result."""
        self._run(self._commit_all)
        results: dict[int, WriteResult] = {}
        created = self.created
        for m in self.members:
            if m.replay is None:
                results[m.index] = WriteResult(
                    self.table, m.rows, m.batches, created, version=self.version
                )
                created = False
            else:
                self.store.replays += 1
                replay = m.replay
                results[m.index] = WriteResult(
                    self.table, replay.rows, replay.batches, False, replay.version, replayed=True
                )
        return results

    def _commit_all(self) -> None:
        if (
            self._files.pending
            or any(m.key is not None for m in self.members)
            or self.store.open_table(self.table) is None
        ):
            self._commit(0, 0)  # the counts come from the members (_properties)
        self._done = True

    def _live(self) -> list[_Member]:
        return [m for m in self.members if m.replay is None]

    def _replayed(self, existing: DeltaTable) -> bool:
        """Take out the members whose key another writer committed meanwhile."""
        for m in self._live():
            if m.key is not None:
                m.replay = self.store.find_replay(existing, m.key)
                if m.replay is not None:
                    self._drop(m)
        if not self._live():
            self.replay = Replay(0, 0, None)  # nothing left to commit
        return self.replay is not None

    def _drop(self, member: _Member) -> None:
        """Delete ``member``'s files, and leave them out of the commit."""
        dropped = {id(action) for action in member.pending}
        self._files.pending = [a for a in self._files.pending if id(a) not in dropped]
        gone = set(member.made)
        self._files.made = [f for f in self._files.made if f not in gone]
        for done, file in enumerate(member.made):
            try:
                self.location.delete(file)
            except Exception as exc:  # store unavailable: the rest stay, as orphans
                self._orphaned(member.made[done:], exc)
                break

    def _keep_files(self, exc: BaseException) -> None:
        self.uncertain = True
        super()._keep_files(exc)

    def _properties(
        self,
        batches: int,
        rows: int,
        commit_id: str,
        *,
        retries: int | None = None,
        read_version: int = -1,
    ) -> CommitProperties:
        live = self._live()
        keys = {m.key: [m.rows, m.batches] for m in live if m.key is not None}
        meta: dict[str, Any] = {
            META_COMMIT: commit_id,
            META_ROWS: sum(m.rows for m in live),
            META_BATCHES: sum(m.batches for m in live),
            META_READ: read_version,
        }
        if keys:
            meta[META_KEYS] = json.dumps(keys, separators=(",", ":"))
        return CommitProperties(
            custom_metadata=meta,
            app_transactions=[Transaction(KEY_PREFIX + key, 1) for key in keys] or None,
            max_commit_retries=retries,
        )


def commit_group(store: DeltaStore, table: str, parts: list[Part]) -> list[Outcome]:
    """Commit ``parts`` into ``table`` in one version where they fit (see the module's doc)."""
    outcomes: list[Outcome | None] = [None] * len(parts)
    writes: dict[int, DeltaWrite] = {}
    try:
        _open(store, table, parts, outcomes, writes)
        members, alone = _choose(parts, writes)
        for index in alone:
            writes.pop(index).rollback()  # nothing written yet: reopened alone, later
        dups = _write_files(parts, members, writes, outcomes)
        alone += _commit_members(store, members, writes, outcomes)
    finally:
        for write in writes.values():
            write.rollback()
    for index in sorted(alone):
        outcomes[index] = write_alone(store, table, parts[index])
    for index, first in dups.items():
        outcomes[index] = _replay_of(store, table, outcomes[first], index, parts)
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def _open(
    store: DeltaStore,
    table: str,
    parts: list[Part],
    outcomes: list[Outcome | None],
    writes: dict[int, DeltaWrite],
) -> None:
    """Open each part's write: its schema and key checked; a replay answered now."""
    for index, part in enumerate(parts):
        try:
            write = store.open_write(
                table, part.schema, commit="request", options=part.options, idempotency_key=part.key
            )
        except Exception as exc:
            outcomes[index] = exc
            continue
        if write.replayed:
            try:
                outcomes[index] = write.finish()
            except Exception as exc:
                outcomes[index] = exc
        else:
            writes[index] = write


def _choose(parts: list[Part], writes: dict[int, DeltaWrite]) -> tuple[list[int], list[int]]:
    """The parts that share the commit (the first's schema, partitions and options), and
    those written alone: another target, or the key of an earlier one written alone."""
    members: list[int] = []
    alone: list[int] = []
    alone_keys: set[str] = set()
    for index in sorted(writes):
        write, first = writes[index], writes[members[0]] if members else None
        fits = first is None or (
            write.delta_schema == first.delta_schema
            and write.partition_by == first.partition_by
            and write.options == first.options
        )
        key = parts[index].key
        if fits and (key is None or key not in alone_keys):
            members.append(index)
        else:
            alone.append(index)
            if key is not None:
                alone_keys.add(key)
    return members, alone


def _write_files(
    parts: list[Part],
    members: list[int],
    writes: dict[int, DeltaWrite],
    outcomes: list[Outcome | None],
) -> dict[int, int]:
    """Write each member's files, then check its deadline; a member that fails is rolled
    back and left out (``members`` shrinks). A later member with the key of an earlier
    one is too: returns {its index: the first's}, to be answered as the first's replay."""
    for index in list(members):
        part, write = parts[index], writes[index]
        try:
            if part.batches:
                write.insert(list(part.batches))
            write._run(write._close_all)
        except Exception as exc:  # rolled back by the write
            outcomes[index] = exc
            members.remove(index)
            del writes[index]
    for index in list(members):  # just before the commit
        deadline = parts[index].deadline
        if deadline is None:
            continue
        try:
            deadline()
        except Exception as exc:
            outcomes[index] = exc
            members.remove(index)
            writes.pop(index).rollback()
    firsts: dict[str, int] = {}
    dups: dict[int, int] = {}
    for index in list(members):
        key = parts[index].key
        if key is None:
            continue
        if key in firsts:
            dups[index] = firsts[key]
            members.remove(index)
            writes.pop(index).rollback()
        else:
            firsts[key] = index
    return dups


def _commit_members(
    store: DeltaStore,
    members: list[int],
    writes: dict[int, DeltaWrite],
    outcomes: list[Outcome | None],
) -> list[int]:
    """Commit the members' files in one version; returns the members to write alone
    (all of them if the commit failed and did not land)."""
    if not members:
        return []
    if len(members) == 1:  # the usual write, with the usual commit metadata
        index = members[0]
        write = writes.pop(index)
        try:
            outcomes[index] = write.finish()
        except Exception as exc:
            outcomes[index] = exc
        return []
    group = GroupWrite(writes[members[0]])
    for index in members:
        group.absorb(index, writes.pop(index))
    try:
        results = group.commit()
    except Exception as exc:
        if not group.uncertain:
            return list(members)  # rolled back: each alone, so that only the culprit fails
        for index in members:  # it may have landed: never written twice
            outcomes[index] = exc
        return []
    for index, result in results.items():
        outcomes[index] = result
    return []


def _replay_of(
    store: DeltaStore, table: str, first: Outcome | None, index: int, parts: list[Part]
) -> Outcome:
    """A later part with the key of ``first``'s: the first's result, as a replay; if the
    first was not written, this one alone (it finds the key if the first's commit landed)."""
    if isinstance(first, WriteResult):
        store.replays += 1
        return WriteResult(table, first.rows, first.batches, False, first.version, replayed=True)
    return write_alone(store, table, parts[index])
