"""A push-style, sans-IO decoder for a stream of gRPC-framed ``FlightData``.

This is the request side of Flight ``DoPut`` (and ``DoExchange``): the DATA of
one HTTP/2 stream goes in, and the same events as for an HTTP body come out.

Invariants:

* Bytes go in through ``receive_data`` (``b""`` is the client's END_STREAM);
  events come out of ``next_event``, which never blocks. At most one partial
  message is held beyond what the caller fed.
* ``FlightData`` is parsed as it streams: the small fields (descriptor,
  ``data_header``, ``app_metadata``) are collected under their own limits, and
  ``data_body`` is copied once, from the received chunks into an aligned Arrow
  buffer allocated at its final size. Unknown fields are skipped unread.
* A ``data_header`` is checked (``MessageReader.check``) as soon as it is
  complete, before a body that follows it is allocated. The message then goes
  through the ``MessageReader`` the HTTP path uses: zero-copy, fully validated.
* With ``announce=True``, as for ``IPCStreamDecoder``: ``BodyAnnounced``
  before a ``data_body`` is allocated, ``BatchAnnounced`` before a batch is
  decoded (``decode_announced`` decodes it and attaches its
  ``app_metadata``), and ``DictionaryReceived``.
* Any error moves the decoder to ``ERROR`` for good.

Wire format: each gRPC message is a flag byte (0: uncompressed), a big-endian
uint32 length and a protobuf ``FlightData``: ``flight_descriptor`` = 1,
``data_header`` = 2, ``app_metadata`` = 3, ``data_body`` = 1000.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import struct

import pyarrow as pa

from ._flatbuf import MessageHeader, parse_message
from .errors import GrpcStatus, LocalProtocolError, RemoteProtocolError, invalid, limit_exceeded
from .events import (
    NEED_DATA,
    BatchAnnounced,
    BatchReceived,
    BodyAnnounced,
    Event,
    StreamEnded,
    _NeedData,
)
from .flight_events import DescriptorReceived, MetadataReceived, _varint
from .flight_pb import FlightDescriptor
from .input import InputBuffer
from .messages import GiB, KiB, MessageReader, MiB, frame_metadata

_PREFIX = struct.Struct(">BI")

__all__ = ["DescriptorReceived", "FlightDataDecoder", "MetadataReceived", "State"]

DESCRIPTOR = 1
DATA_HEADER = 2
APP_METADATA = 3
DATA_BODY = 1000
_NAMES = {DESCRIPTOR: "flight_descriptor", DATA_HEADER: "data_header", APP_METADATA: "app_metadata"}


class State(enum.Enum):
    PREFIX = enum.auto()  # between gRPC messages
    FIELD = enum.auto()  # at a protobuf field's tag
    COLLECT = enum.auto()  # in a small field kept whole
    SKIP = enum.auto()  # in an unknown field
    ALLOCATE = enum.auto()  # data_body announced, not yet allocated
    BODY = enum.auto()  # in data_body
    DONE = enum.auto()
    ERROR = enum.auto()


class FlightDataDecoder:
    """Decode the ``FlightData`` messages of one gRPC request stream."""

    def __init__(
        self,
        *,
        max_descriptor_size: int = 1 * MiB,
        max_app_metadata_size: int = 16 * MiB,  # per request, all messages together
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
        self.max_descriptor_size = max_descriptor_size
        self.max_app_metadata_size = max_app_metadata_size
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
        self._limits = {
            DESCRIPTOR: max_descriptor_size,
            DATA_HEADER: max_metadata_size,
            APP_METADATA: max_app_metadata_size,
        }
        self._state = State.PREFIX
        self._input = InputBuffer()
        self._events: collections.deque[Event] = collections.deque()
        self._reset_message(0)
        self._app_metadata_bytes = 0
        self._announced_metadata: bytes | None = None  # the announced batch's app_metadata
        self.flight_messages = 0
        self.allocated_bytes = 0  # data_body buffers allocated so far

    # -- public API ---------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def announce(self) -> bool:
        return self._messages.announce

    @announce.setter
    def announce(self, value: bool) -> None:
        """Set before the first data_body is reached (``ingest`` does, for DoPut)."""
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
    def trailing_data(self) -> tuple[bytes, bool]:
        """Nothing can follow a Flight stream's end; kept for the ingest loop."""
        return b"", self._input.eof

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed DATA frame payloads; ``b""`` means the client ended its stream."""
        self._input.feed(data)

    def next_event(self) -> Event | _NeedData:
        """Return the next event, or ``NEED_DATA``. Raises ``RemoteProtocolError``."""
        if self._state is State.ERROR:
            raise RemoteProtocolError("the FlightData decoder is in an error state")
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
            event = self._messages.decode_pending()
        except LocalProtocolError as exc:
            self._state = State.ERROR
            raise exc._reraise_as_remote_protocol_error() from exc
        app_metadata, self._announced_metadata = self._announced_metadata, None
        if app_metadata is not None:
            event = dataclasses.replace(event, app_metadata=app_metadata)
        return event

    def statistics(self) -> dict[str, int]:
        m = self._messages
        return {
            "flight_messages": self.flight_messages,
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

    def _reset_message(self, length: int) -> None:
        self._remaining = length  # bytes of the current message not yet parsed
        self._message_size = length
        self._field = 0
        self._left = 0  # bytes left in the current field
        self._fields: dict[int, bytes] = {}
        self._header: MessageHeader | None = None
        self._body: pa.Buffer | None = None
        self._body_view: memoryview | None = None
        self._filled = 0

    def _next_event(self) -> Event | _NeedData:
        while True:
            if self._events:
                return self._events.popleft()
            if self._messages.pending:  # announced, and the caller did not decode it
                return self.decode_announced()
            state = self._state
            if state is State.PREFIX:
                progressed = self._read_prefix()
            elif state is State.FIELD:
                progressed = self._read_field()
            elif state is State.COLLECT:
                progressed = self._collect()
            elif state is State.SKIP:
                progressed = self._skip()
            elif state is State.BODY:
                progressed = self._read_body()
            elif state is State.ALLOCATE:
                progressed = self._allocate_body()
            else:  # DONE
                return NEED_DATA
            if not progressed:
                if self._input.eof and not self._events:
                    raise invalid(
                        "stream truncated inside a FlightData message", "truncated_stream"
                    )
                if not self._events:
                    return NEED_DATA

    def _read_prefix(self) -> bool:
        if self._input.size == 0 and self._input.eof:
            if self._messages.schema is None:
                raise invalid(
                    "the stream ended before any Arrow schema was sent", error="empty_stream"
                )
            self._state = State.DONE
            self._messages.finish()
            self._events.append(StreamEnded(eos_marker=False))
            return True
        if self._input.size < 5:
            return False
        flag, length = _PREFIX.unpack(self._input.take(5))
        if flag == 1:
            raise LocalProtocolError(
                "compressed gRPC messages are not supported; send FlightData uncompressed",
                error="unsupported_encoding",
                grpc_status=GrpcStatus.UNIMPLEMENTED,
            )
        if flag != 0:
            raise invalid(f"invalid gRPC message flag {flag}", error="invalid_grpc_framing")
        self.flight_messages += 1
        self._reset_message(length)
        self._state = State.FIELD
        if length == 0:
            self._finish_message()
        return True

    def _read_field(self) -> bool:
        head = self._input.peek(min(20, self._remaining))
        tag = _varint(head, 0)
        if tag is None:
            return self._short(head)
        key, pos = tag
        field, wire_type = key >> 3, key & 7
        known = field in (DESCRIPTOR, DATA_HEADER, APP_METADATA, DATA_BODY)
        if wire_type == 2:
            length = _varint(head, pos)
            if length is None:
                return self._short(head)
            size, pos = length
        elif known:
            raise invalid(f"FlightData field {field} has wire type {wire_type}, expected 2")
        elif wire_type == 0:
            end = _varint(head, pos)
            if end is None:
                return self._short(head)
            size, pos = 0, end[1]
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
        else:
            raise invalid(f"invalid protobuf wire type {wire_type} in FlightData")
        if pos + size > self._remaining:
            raise invalid("a FlightData field runs past the end of its gRPC message")
        self._input.discard(pos)
        self._consume(pos)
        self._field, self._left = field, size
        if field == DATA_BODY:
            self._start_body(size)
        elif known:
            limit = self._limits[field]
            if size > limit:
                raise limit_exceeded(
                    f"FlightData {_NAMES[field]} of {size} bytes exceeds the limit of {limit} bytes"
                )
            if field == APP_METADATA:
                self._app_metadata_bytes += size
                if self._app_metadata_bytes > limit:
                    raise limit_exceeded(
                        f"app_metadata totals more than {limit} bytes in one request, "
                        "over the limit"
                    )
            self._state = State.COLLECT
        else:
            self._state = State.SKIP
        return True

    def _short(self, head: bytes) -> bool:
        if len(head) >= self._remaining:  # the message ends inside the varint
            raise invalid("a FlightData message ends inside a protobuf varint")
        return False

    def _consume(self, n: int) -> None:
        self._remaining -= n

    def _field_done(self) -> None:
        if self._remaining == 0:
            self._finish_message()
        else:
            self._state = State.FIELD

    def _collect(self) -> bool:
        size = self._left
        if self._input.size < size:
            return False
        data = self._input.take(size)
        self._consume(size)
        if self._field == DATA_HEADER:
            header = parse_message(data)
            self._messages.check(header, size)
            if self._body is not None and self._body.size < header.body_length:
                raise self._body_too_short(self._body.size, header.body_length)
            self._header = header
        self._fields[self._field] = data  # proto3: the last occurrence wins
        self._field_done()
        return True

    def _skip(self) -> bool:
        done = self._input.discard(self._left)
        self._left -= done
        self._consume(done)
        if self._left:
            return False
        self._field_done()
        return True

    def _start_body(self, size: int) -> None:
        if self._body is not None:
            raise invalid("a FlightData message has more than one data_body")
        if size > self._messages.max_body_size:
            raise limit_exceeded(
                f"FlightData body of {size} bytes exceeds the limit of "
                f"{self._messages.max_body_size} bytes"
            )
        if self._header is not None and size < self._header.body_length:
            raise self._body_too_short(size, self._header.body_length)
        if size and self._messages.schema is None:  # (DoPut reads its descriptor unannounced)
            raise invalid(
                "a FlightData data_body before the stream's schema: the first IPC message is "
                "a Schema, which has no body",
                error="invalid_ipc_framing",
            )
        self._state = State.ALLOCATE
        if self.announce and size:
            self._events.append(BodyAnnounced(nbytes=size))  # allocated at the next call

    def _allocate_body(self) -> bool:
        self._body = pa.allocate_buffer(self._left)
        self._body_view = memoryview(self._body).cast("B")
        self.allocated_bytes += self._body.size
        self._filled = 0
        self._state = State.BODY
        return True

    def _body_too_short(self, size: int, expected: int) -> LocalProtocolError:
        return invalid(
            f"FlightData data_body has {size} bytes but its data_header says {expected}",
            error="invalid_ipc_metadata",
        )

    def _read_body(self) -> bool:
        view = self._body_view
        assert view is not None
        want = len(view) - self._filled
        done = self._input.take_into(view, self._filled, want)
        self._filled += done
        self._consume(done)
        if done < want:
            return False
        self._body_view = None
        self._field_done()
        return True

    def _finish_message(self) -> None:
        fields, header, body = self._fields, self._header, self._body
        wire = 5 + self._message_size
        self._state = State.PREFIX
        self._reset_message(0)
        descriptor = fields.get(DESCRIPTOR)
        if descriptor is not None:
            self._events.append(DescriptorReceived(descriptor=FlightDescriptor.decode(descriptor)))
        app_metadata = fields.get(APP_METADATA) or None
        if header is None:
            if body is not None and body.size:
                raise invalid("a FlightData message has a data_body but no data_header")
            self._messages.count_wire(wire)
            if app_metadata is not None:
                self._events.append(MetadataReceived(app_metadata=app_metadata))
            return
        if body is None:
            body = pa.allocate_buffer(0)
            if header.body_length:
                raise self._body_too_short(0, header.body_length)
        elif body.size > header.body_length:
            body = body.slice(0, header.body_length)
        event = self._messages.read(header, frame_metadata(fields[DATA_HEADER]), body, wire=wire)
        if isinstance(event, BatchAnnounced):
            self._announced_metadata = app_metadata  # attached by decode_announced
            self._events.append(event)
        elif isinstance(event, BatchReceived):
            if app_metadata is not None:
                event = dataclasses.replace(event, app_metadata=app_metadata)
            self._events.append(event)
        elif event is not None:
            self._events.append(event)
            if app_metadata is not None:
                self._events.append(MetadataReceived(app_metadata=app_metadata))
        elif app_metadata is not None:
            self._events.append(MetadataReceived(app_metadata=app_metadata))
