"""A push-style, sans-IO decoder for the Arrow IPC streaming format.

Invariants:

* Bytes go in through ``receive_data`` (``b""`` means EOF); events come out of
  ``next_event``, which never blocks and returns ``NEED_DATA`` when it cannot
  make progress. The decoder buffers at most one partial message beyond what
  the caller fed it, so the caller owns backpressure.
* Every limit is checked from the prefix and the message's flatbuffer before
  the message buffer is allocated, and compressed sizes are checked before
  pyarrow decompresses anything.
* A message's body is copied once, straight from the received chunks into an
  Arrow-allocated (aligned) buffer; the metadata goes into a small canonical
  framed buffer. ``MessageReader`` (shared with the Flight path) checks,
  reads and validates the message from those two buffers zero-copy.
* With ``announce=True`` the decoder emits ``BodyAnnounced`` before it
  allocates a message body (the allocation happens at the next
  ``next_event``), ``BatchAnnounced`` instead of decoding a record batch
  (``decode_announced`` decodes it, in a worker thread if the caller likes;
  the next ``next_event`` would decode it inline), and ``DictionaryReceived``
  for a dictionary. So the caller can reserve memory before any of it is
  allocated or decompressed.
* Any error moves the decoder to ``ERROR`` for good.

Framing: each message is ``0xFFFFFFFF``, an int32 metadata length, the
``Message`` flatbuffer and the body; a length of 0 ends the stream. Legacy
(pre-0.15) streams omit the ``0xFFFFFFFF`` marker.
"""

from __future__ import annotations

import enum
import struct

import pyarrow as pa

from ._flatbuf import MessageHeader, parse_message
from .errors import LocalProtocolError, RemoteProtocolError, invalid, limit_exceeded
from .events import NEED_DATA, BatchReceived, BodyAnnounced, Event, StreamEnded, _NeedData
from .input import InputBuffer
from .messages import (
    GiB,
    KiB,
    MessageReader,
    MiB,
    count_fields,
    frame_metadata,
    nesting_depth,
)

_CONTINUATION = b"\xff\xff\xff\xff"
_FILE_MAGIC = b"ARROW1"
_ZERO = b"\x00\x00\x00\x00"
_I32 = struct.Struct("<i")

__all__ = ["GiB", "IPCStreamDecoder", "MiB", "State", "count_fields", "nesting_depth"]


class State(enum.Enum):
    PREFIX = enum.auto()
    METADATA = enum.auto()
    BODY = enum.auto()
    DONE = enum.auto()
    ERROR = enum.auto()


class _Input(enum.Enum):
    LENGTH = enum.auto()  # a non-zero metadata length was read
    END_MARKER = enum.auto()  # a zero length was read
    METADATA = enum.auto()  # the metadata was read and checked
    BODY = enum.auto()  # the body is complete
    CLEAN_EOF = enum.auto()  # EOF on a message boundary


_TRANSITIONS: dict[tuple[State, _Input], State] = {
    (State.PREFIX, _Input.LENGTH): State.METADATA,
    (State.PREFIX, _Input.END_MARKER): State.DONE,
    (State.PREFIX, _Input.CLEAN_EOF): State.DONE,
    (State.METADATA, _Input.METADATA): State.BODY,
    (State.BODY, _Input.BODY): State.PREFIX,
}


class IPCStreamDecoder:
    """Decode an Arrow IPC stream pushed in arbitrary chunks.

    Limits (all in bytes unless named otherwise) are checked before anything
    is allocated for the message that exceeds them. ``max_dictionary_bytes``
    bounds all dictionary messages of a stream together, each counted as its
    framed metadata plus its decompressed body.
    """

    def __init__(
        self,
        *,
        max_metadata_size: int = 64 * MiB,
        max_body_size: int = 256 * MiB,
        max_decompressed_size: int = 1 * GiB,
        max_dictionary_bytes: int = 256 * MiB,
        max_nesting_depth: int = 64,
        max_columns: int = 10_000,
        max_batch_rows: int = 64 * 1024 * 1024,
        max_schema_metadata_bytes: int = 256 * KiB,
        max_request_rows: int | None = None,
        max_request_decoded_bytes: int | None = None,
        validate: bool = True,
        announce: bool = False,
    ) -> None:
        self._messages = MessageReader(
            max_metadata_size=max_metadata_size,
            max_body_size=max_body_size,
            max_decompressed_size=max_decompressed_size,
            max_dictionary_bytes=max_dictionary_bytes,
            max_nesting_depth=max_nesting_depth,
            max_columns=max_columns,
            max_batch_rows=max_batch_rows,
            max_schema_metadata_bytes=max_schema_metadata_bytes,
            max_request_rows=max_request_rows,
            max_request_decoded_bytes=max_request_decoded_bytes,
            validate=validate,
            announce=announce,
        )
        self.max_metadata_size = max_metadata_size
        self._state = State.PREFIX
        self._input = InputBuffer()
        self._legacy: bool | None = None
        self._prefix_length = 0
        self._metadata_length = 0
        self._header: MessageHeader | None = None
        self._framed: pa.Buffer | None = None
        self._body: pa.Buffer | None = None
        self._body_view: memoryview | None = None
        self._filled = 0
        self.allocated_bytes = 0  # message bodies allocated so far

    # -- public API ---------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def announce(self) -> bool:
        return self._messages.announce

    @announce.setter
    def announce(self, value: bool) -> None:
        """Set before the first message body is reached."""
        self._messages.announce = value

    @property
    def schema(self) -> pa.Schema | None:
        return self._messages.schema

    @property
    def wire_bytes(self) -> int:
        return self._messages.wire_bytes

    @property
    def decoded_bytes(self) -> int:
        return self._messages.decoded_bytes

    @property
    def legacy_format(self) -> bool | None:
        """True if the stream used pre-0.15 framing (None before the first message)."""
        return self._legacy

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes; ``b""`` means the transport reached EOF."""
        self._input.feed(data)

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received after the stream ended, and whether EOF was seen."""
        return self._input.peek_all(), self._input.eof

    def next_event(self) -> Event | _NeedData:
        """Return the next event, or ``NEED_DATA``. Raises ``RemoteProtocolError``."""
        if self._state is State.ERROR:
            raise RemoteProtocolError("the IPC stream decoder is in an error state")
        try:
            return self._next_event()
        except LocalProtocolError as exc:
            self._state = State.ERROR
            raise exc._reraise_as_remote_protocol_error() from exc

    def decode_announced(self) -> BatchReceived:
        """Decode the batch the last ``BatchAnnounced`` stood for (the heavy step).

        Nothing else may use the decoder meanwhile. Raises ``RemoteProtocolError``.
        """
        try:
            return self._messages.decode_pending()
        except LocalProtocolError as exc:
            self._state = State.ERROR
            raise exc._reraise_as_remote_protocol_error() from exc

    def statistics(self) -> dict[str, int]:
        m = self._messages
        return {
            "messages": m.messages,
            "batches": m.batches,
            "rows": m.rows,
            "wire_bytes": m.wire_bytes,
            "decoded_bytes": m.decoded_bytes,
            "dictionary_bytes": m.dictionary_bytes,
            "buffered_bytes": self._input.size,
            "allocated_bytes": self.allocated_bytes,
        }

    # -- internals ----------------------------------------------------------

    def _transition(self, what: _Input) -> None:
        try:
            self._state = _TRANSITIONS[(self._state, what)]
        except KeyError:
            raise invalid(f"unexpected {what.name} in state {self._state.name}") from None

    def _truncated(self, where: str) -> LocalProtocolError:
        return invalid(f"stream truncated {where}", error="truncated_stream")

    def _next_event(self) -> Event | _NeedData:
        if self._messages.pending:  # announced, and the caller did not decode it
            return self._messages.decode_pending()
        while True:
            state = self._state
            if state is State.PREFIX:
                event = self._read_prefix()
            elif state is State.METADATA:
                event = self._read_metadata()
            elif state is State.BODY:
                event = self._read_body()
            else:  # DONE
                return NEED_DATA
            if event is not None:
                return event

    def _read_prefix(self) -> Event | _NeedData | None:
        buffered = self._input.size
        if buffered == 0 and self._input.eof:
            if self._messages.schema is None:
                raise invalid("empty body: no Arrow IPC stream received", error="empty_stream")
            self._transition(_Input.CLEAN_EOF)
            self._messages.finish()
            return StreamEnded(eos_marker=False)
        if buffered < 4:
            return self._need("in a message prefix")
        head = self._input.peek(4)
        legacy = head != _CONTINUATION
        # Framing never changes mid-stream, except that a bare zero word ends any
        # stream (the legacy end marker, which Arrow C++ also accepts).
        if self._legacy is not None and legacy != self._legacy and head != _ZERO:
            expected = "a legacy length prefix" if self._legacy else "the continuation marker"
            raise invalid(
                f"IPC message framing changed mid-stream: expected {expected}, got {head.hex()}",
                error="invalid_ipc_framing",
            )
        if legacy:
            length = _I32.unpack(self._input.take(4))[0]
            prefix = 4
        else:
            if buffered < 8:
                return self._need("in a message prefix")
            length = _I32.unpack(self._input.take(8)[4:])[0]
            prefix = 8
        first = self._legacy is None
        if first:
            self._legacy = legacy
        if length == 0:
            if self._messages.schema is None:
                raise invalid(
                    "end-of-stream marker before any schema message", error="empty_stream"
                )
            self._messages.count_wire(prefix)
            self._messages.finish()
            self._transition(_Input.END_MARKER)
            return StreamEnded(eos_marker=True)
        if length < 0:
            raise invalid(
                f"negative IPC metadata length {length}: not an Arrow IPC stream",
                error="invalid_ipc_framing",
            )
        if length > self.max_metadata_size:
            if first and legacy:
                # No continuation marker, and read as a legacy prefix the first
                # word is implausible: most likely not Arrow at all (JSON, CSV...).
                if head == _FILE_MAGIC[:4]:
                    raise invalid(
                        "this is the Arrow IPC file format (ARROW1 magic, as written by "
                        "Feather v2 or pyarrow.ipc.new_file); send the streaming format",
                        error="invalid_ipc_framing",
                    )
                raise invalid(
                    f"not an Arrow IPC stream: it starts with {head.hex()}, neither the "
                    "0xFFFFFFFF continuation marker nor a legacy metadata length within "
                    f"the limit of {self.max_metadata_size} bytes",
                    error="invalid_ipc_framing",
                )
            raise limit_exceeded(
                f"IPC message metadata of {length} bytes exceeds the limit of "
                f"{self.max_metadata_size} bytes"
            )
        self._prefix_length = prefix
        self._metadata_length = length
        self._transition(_Input.LENGTH)
        return None

    def _need(self, where: str) -> _NeedData:
        if self._input.eof:
            raise self._truncated(where)
        return NEED_DATA

    def _read_metadata(self) -> Event | _NeedData | None:
        length = self._metadata_length
        if self._input.size < length:
            return self._need("in message metadata")
        metadata = self._input.take(length)
        header = parse_message(metadata)
        self._messages.check(header, length)
        self._header = header
        self._framed = frame_metadata(metadata)
        self._filled = 0
        self._transition(_Input.METADATA)
        if self.announce and header.body_length:
            return BodyAnnounced(nbytes=header.body_length)  # allocated at the next call
        return None

    def _read_body(self) -> Event | _NeedData | None:
        if self._body is None:
            assert self._header is not None
            self._body = pa.allocate_buffer(self._header.body_length)
            self._body_view = memoryview(self._body).cast("B")
            self.allocated_bytes += self._body.size
        view = self._body_view
        header, framed, body = self._header, self._framed, self._body
        assert view is not None and header is not None and framed is not None and body is not None
        end = len(view)
        if self._filled < end:
            self._filled += self._input.take_into(view, self._filled, end - self._filled)
            if self._filled < end:
                return self._need("in a message body")
        self._header = self._framed = self._body = self._body_view = None
        wire = self._prefix_length + self._metadata_length + header.body_length
        self._transition(_Input.BODY)
        return self._messages.read(header, framed, body, wire=wire)
