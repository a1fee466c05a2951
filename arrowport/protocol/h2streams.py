"""The streams of one HTTP/2 session: handler slots, the queue, and who waits on whom.

h2 counts a stream the client reset as closed at once, while its handler may
still be running; this table counts handlers instead. A stream that arrives
while ``limit`` handlers run is queued with its events and started when a
handler finishes (``finish``). A stream whose handler waits on the client, or
that was answered while the client never ends it, has ``waiting_since`` set:
``overdue`` lists those waiting longer than a deadline. No h2 here: the
session turns the table's answers into frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from .h2events import DataReceived, Event, RequestStarted, StreamEnded, StreamReset


class Stream:
    """A stream handed to a handler, or answered and still open on the client's side."""

    __slots__ = ("remote_ended", "reset", "running", "waiting_since")

    def __init__(self) -> None:
        self.running = True  # its handler has not finished
        self.remote_ended = False
        self.reset = False
        self.waiting_since: float | None = None  # since when it waits on the client


@dataclass(frozen=True, slots=True)
class SessionStats:
    """What a connection cost, for logs and metrics."""

    streams_started: int
    streams_queued: int
    streams_expired: int


class StreamTable:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streams: dict[int, Stream] = {}
        self.queued: dict[int, list[Event]] = {}
        self.running = 0
        self._started = self._queued_total = self.expired = 0

    def request(self, started: RequestStarted, out: list[Event]) -> None:
        """Start the stream's handler now, or queue it until a slot frees."""
        if self.running < self.limit:
            self._start(started, [], out)
        else:
            self.queued[started.stream_id] = [started]
            self._queued_total += 1

    def _start(self, started: RequestStarted, later: list[Event], out: list[Event]) -> None:
        stream = self.streams[started.stream_id] = Stream()
        self.running += 1
        self._started += 1
        out.append(started)
        for event in later:
            out.append(event)
            if isinstance(event, StreamEnded):
                stream.remote_ended = True

    def data(self, event: DataReceived, out: list[Event]) -> bool:
        """Deliver (or queue) a payload; False: nobody will read it, acknowledge it."""
        queued = self.queued.get(event.stream_id)
        if queued is not None:
            queued.append(event)
            return True
        stream = self.streams.get(event.stream_id)
        if stream is not None and stream.running:
            out.append(event)
            return True
        return False  # answered already (or gone): acknowledged and dropped

    def ended(self, sid: int, out: list[Event]) -> None:
        if sid in self.queued:
            self.queued[sid].append(StreamEnded(sid))
            return
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.remote_ended = True
        if stream.running:
            out.append(StreamEnded(sid))
        else:
            del self.streams[sid]

    def reset(self, sid: int, code: int, by_peer: bool, out: list[Event]) -> list[DataReceived]:
        """The stream is gone; returns the queued payloads nobody will read."""
        queued = self.queued.pop(sid, None)
        if queued is not None:  # never started
            return [e for e in queued if isinstance(e, DataReceived)]
        stream = self.streams.get(sid)
        if stream is None:
            return []
        if stream.running:  # the handler still counts until it finishes
            stream.reset = True
            out.append(StreamReset(sid, code, by_peer))
        else:
            del self.streams[sid]
        return []

    def is_reset(self, sid: int) -> bool:
        stream = self.streams.get(sid)
        return stream is not None and stream.reset

    def waiting(self, sid: int, waiting: bool, now: float) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.waiting_since = now if waiting else None

    def finish(self, sid: int, now: float, answered: bool, out: list[Event]) -> bool | None:
        """The handler returned; None if it was not running, else True if the stream
        must be reset (no answer). Starts queued streams into ``out``."""
        stream = self.streams.get(sid)
        if stream is None or not stream.running:
            return None
        stream.running = False
        self.running -= 1
        unanswered = not answered and not stream.reset
        if unanswered or stream.remote_ended or stream.reset:
            del self.streams[sid]
        else:  # answered early: the client must still end it, and may not take forever
            stream.waiting_since = now
        while self.queued and self.running < self.limit:
            first = next(iter(self.queued))
            later = self.queued.pop(first)
            started = later.pop(0)
            assert isinstance(started, RequestStarted)
            self._start(started, later, out)
        return unanswered

    def overdue(self, now: float, timeout: float) -> list[int]:
        """Streams that have waited on their client for ``timeout`` or longer."""
        return [
            sid
            for sid, s in self.streams.items()
            if s.waiting_since is not None and not s.reset and now - s.waiting_since >= timeout
        ]

    def expire(self, sid: int, code: int, out: list[Event]) -> None:
        """Reset ``sid`` on our side: its handler, if running, gets ``StreamReset``."""
        stream = self.streams.get(sid)
        if stream is None:
            return
        self.expired += 1
        if stream.running:
            stream.reset = True
            out.append(StreamReset(sid, code, by_peer=False))
        else:
            del self.streams[sid]

    @property
    def busy(self) -> bool:
        """A handler works (neither waiting on its client nor reset), or a stream waits."""
        return bool(self.queued) or any(
            s.running and not s.reset and s.waiting_since is None for s in self.streams.values()
        )

    @property
    def stats(self) -> SessionStats:
        return SessionStats(self._started, self._queued_total, self.expired)
