"""The parts of the ingest pipeline's vocabulary that its modules share."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..protocol import BatchReceived
from ..protocol.events import Event, _NeedData
from ..stats import Stats
from .budget import MemoryBudget
from .group_commit import GroupCommitter
from .ingest_results import TableLocks


class Decoder(Protocol):
    @property
    def wire_bytes(self) -> int: ...
    @property
    def decoded_bytes(self) -> int: ...

    announce: bool

    def decode_announced(self) -> BatchReceived: ...
    def receive_data(self, data: bytes | bytearray | memoryview) -> None: ...
    def next_event(self) -> Event | _NeedData: ...
    @property
    def trailing_data(self) -> tuple[bytes, bool]: ...


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What every upload to one server shares."""

    locks: TableLocks = field(default_factory=TableLocks)
    stats: Stats = field(default_factory=Stats)
    limiter: trio.CapacityLimiter | None = None  # the writers' worker threads
    budget: MemoryBudget | None = None  # in-flight memory
    groups: GroupCommitter | None = None  # None: no group commit


# a batch this small (decoded) is decoded and validated on the event loop: a thread hop
# would cost more than the work (tens of microseconds)
INLINE_DECODE_BYTES = 64 * 1024


class Phase(enum.Enum):
    SCHEMA = "schema"  # no schema yet
    HOLDING = "holding"  # small so far: held whole, for a group commit
    STREAMING = "streaming"  # the writer has the table; batches are queued to it
    HELD = "held"  # the stream ended cleanly while held: it joins a group commit
    ENDED = "ended"  # the stream ended cleanly while streaming: the writer commits
