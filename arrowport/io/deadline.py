"""A store whose writes check a gRPC call's deadline in the thread that commits.

A DoPut past its ``grpc-timeout`` must be answered DEADLINE_EXCEEDED with
nothing committed, and an answer must never say DEADLINE_EXCEEDED for data
that was committed. Cancelling the ingest cannot give both: a commit runs in
a worker thread, which a cancellation waits for, so a deadline that passes
during the commit would cancel a request whose data is already stored. So
the ingest is not cancelled. The decision is made where the commit is:
``finish()`` (the request's one commit) and ``insert()`` (which commits in
per-batch mode) raise DEADLINE_EXCEEDED, before they write, once the
deadline has passed; the ingest then rolls back as for any refusal. A commit
that started before the deadline completes and is answered as committed.
"""

from __future__ import annotations

import time
from typing import Any

from ..protocol.grpc import deadline_exceeded


class DeadlineStore:
    """``store``, with ``open_write`` returning writes that honour ``deadline`` (monotonic)."""

    def __init__(self, store: Any, deadline: float, timeout: float) -> None:
        self._store = store
        self._deadline = deadline
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @property
    def inner(self) -> Any:
        """The store itself (a group commit is made on it, checking each part's deadline)."""
        return self._store

    def check_deadline(self) -> None:
        """Raise DEADLINE_EXCEEDED once the deadline has passed (before a group commit)."""
        if time.monotonic() >= self._deadline:
            raise deadline_exceeded(
                self._timeout, "the request was abandoned before its commit; nothing was committed"
            )

    def open_write(self, *args: Any, **kwargs: Any) -> DeadlineWrite:
        write = self._store.open_write(*args, **kwargs)
        batch = kwargs.get("commit") == "batch"
        return DeadlineWrite(write, self._deadline, self._timeout, batch)


class DeadlineWrite:
    """A store write whose commits refuse to start past the deadline."""

    def __init__(self, write: Any, deadline: float, timeout: float, batch: bool) -> None:
        self._write = write
        self._deadline = deadline
        self._timeout = timeout
        self._abandoned = (
            "the request was abandoned; what was acknowledged stays committed, nothing after it"
            if batch
            else "the request was abandoned before its commit; nothing was committed"
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._write, name)

    def _check(self, what: str) -> None:
        if time.monotonic() >= self._deadline:
            raise deadline_exceeded(self._timeout, what)

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        self._check(self._abandoned)
        return self._write.insert(*args, **kwargs)

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        self._check(self._abandoned)
        return self._write.finish(*args, **kwargs)
