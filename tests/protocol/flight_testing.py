"""Build gRPC-framed ``FlightData`` streams as pyarrow's Flight client does, and decode them.

A DoPut stream is built from real pyarrow output: ``pa.ipc.new_stream`` writes
the stream, ``pa.ipc.MessageReader`` takes it apart into each message's
flatbuffer (``data_header``) and body (``data_body``), and every message is
encoded with ``flight_pb`` and framed with ``grpc.prefix``. The first message
carries the descriptor and the Schema header (no body); dictionary messages
come before the batches that use them.

Every decoder test runs in each of ``MODES``: the whole buffer at once, one
byte at a time, and split at random (seeded) points with EOF delivered
together with the last chunk, before its events are drained. A Flight
stream's end is ``receive_data(b"")``; nothing can follow it.
"""

from __future__ import annotations

import io
import itertools
import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from ipc_testing import GOLDENS

from arrowport.protocol import (
    NEED_DATA,
    BatchReceived,
    Event,
    GrpcStatus,
    RemoteProtocolError,
    SchemaReceived,
    StreamEnded,
)
from arrowport.protocol._flatbuf import HeaderType, parse_message
from arrowport.protocol.flight import (
    DescriptorReceived,
    FlightDataDecoder,
    MetadataReceived,
    State,
)
from arrowport.protocol.flight_pb import (
    DESCRIPTOR_PATH,
    FLIGHT_DATA_APP_METADATA,
    FLIGHT_DATA_BODY,
    FLIGHT_DATA_DESCRIPTOR,
    FLIGHT_DATA_HEADER,
    FlightDescriptor,
    encode_field_bytes,
    encode_flight_data_prefix,
)
from arrowport.protocol.grpc import prefix

MODES = ("whole", "bytewise", "random")
DESCRIPTOR = FlightDescriptor(type=DESCRIPTOR_PATH, path=("sales", "orders"))
FIELD_NUMBERS = {
    "descriptor": FLIGHT_DATA_DESCRIPTOR,
    "header": FLIGHT_DATA_HEADER,
    "app_metadata": FLIGHT_DATA_APP_METADATA,
    "body": FLIGHT_DATA_BODY,
}


# -- building streams ----------------------------------------------------------


@dataclass(frozen=True)
class FlightMessage:
    """One ``FlightData``: an IPC message plus what Flight adds to it."""

    header: bytes = b""  # data_header: the IPC Message flatbuffer
    body: bytes = b""  # data_body
    app_metadata: bytes = b""
    descriptor: FlightDescriptor | None = None

    @property
    def kind(self) -> HeaderType | None:
        return HeaderType(parse_message(self.header).header_type) if self.header else None

    def fields(self) -> dict[str, bytes]:
        """Each present field, encoded (tag, length, data), by name."""
        values = {
            "descriptor": None if self.descriptor is None else self.descriptor.encode(),
            "header": self.header,
            "app_metadata": self.app_metadata,
            "body": self.body,
        }
        return {
            name: encode_field_bytes(FIELD_NUMBERS[name], value)
            for name, value in values.items()
            if value
        }

    def payload(self) -> bytes:
        """The protobuf, encoded as pyarrow does: fields 1, 2, 3, 1000, empty ones omitted."""
        head = encode_flight_data_prefix(
            self.header, self.app_metadata or None, len(self.body), self.descriptor
        )
        return head + self.body

    def encode(self) -> bytes:
        return framed(self.payload())


def framed(payload: bytes, flag: int = 0) -> bytes:
    """``payload`` as one gRPC message (flag byte, big-endian length)."""
    return bytes([flag]) + prefix(len(payload))[1:] + payload


def join(messages: Iterable[FlightMessage | bytes]) -> bytes:
    """The wire bytes of ``messages`` (already-encoded ``bytes`` pass through)."""
    return b"".join(m if isinstance(m, bytes) else m.encode() for m in messages)


def ipc_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """(flatbuffer, body) of each message of an IPC stream, as pyarrow reads them."""
    out = []
    for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(data)):
        body = message.body
        out.append((message.metadata.to_pybytes(), b"" if body is None else body.to_pybytes()))
    return out


def write_ipc(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    options: pa.ipc.IpcWriteOptions | None = None,
) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()


def flight_messages(
    schema: pa.Schema,
    batches: Sequence[pa.RecordBatch],
    *,
    descriptor: FlightDescriptor | None = DESCRIPTOR,
    app_metadata: Callable[[int], bytes] | None = None,
    options: pa.ipc.IpcWriteOptions | None = None,
    **option_kwargs: Any,
) -> list[FlightMessage]:
    """The DoPut messages pyarrow's client sends for ``batches``.

    ``app_metadata(i)`` is attached to the ``i``-th record batch message.
    """
    if options is None:
        options = pa.ipc.IpcWriteOptions(**option_kwargs)
    out: list[FlightMessage] = []
    index = 0
    for header, body in ipc_messages(write_ipc(schema, batches, options)):
        message = FlightMessage(header, body, descriptor=None if out else descriptor)
        if message.kind is HeaderType.RECORD_BATCH:
            if app_metadata is not None:
                message = replace(message, app_metadata=app_metadata(index))
            index += 1
        out.append(message)
    return out


def golden_messages(name: str, **kwargs: Any) -> list[FlightMessage]:
    """The Flight messages for golden ``name`` (same schema, batches and write options)."""
    golden = GOLDENS[name]
    return flight_messages(golden.schema, golden.batches(), options=golden.options, **kwargs)


def golden_batches(name: str) -> list[pa.RecordBatch]:
    return list(GOLDENS[name].batches())


# -- decoding ------------------------------------------------------------------


@dataclass
class Decoded:
    """Everything a ``FlightDataDecoder`` produced for one input."""

    decoder: FlightDataDecoder
    events: list[Event] = field(default_factory=list)
    error: RemoteProtocolError | None = None
    fed: int = 0  # bytes fed when decoding stopped

    @property
    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    @property
    def received(self) -> list[BatchReceived]:
        return [e for e in self.events if isinstance(e, BatchReceived)]

    @property
    def batches(self) -> list[pa.RecordBatch]:
        return [e.batch for e in self.received]

    @property
    def schema(self) -> pa.Schema:
        (schema,) = [e.schema for e in self.events if isinstance(e, SchemaReceived)]
        return schema

    @property
    def descriptors(self) -> list[FlightDescriptor]:
        return [e.descriptor for e in self.events if isinstance(e, DescriptorReceived)]

    @property
    def metadata(self) -> list[bytes]:
        return [e.app_metadata for e in self.events if isinstance(e, MetadataReceived)]

    def ok(self) -> Decoded:
        """Assert the stream decoded and ended (no EOS marker in Flight); return self."""
        assert self.error is None, f"{self.error.error}: {self.error.detail}"
        assert self.events and self.events[-1] == StreamEnded(eos_marker=False), self.kinds
        assert self.decoder.state is State.DONE
        assert self.decoder.statistics()["buffered_bytes"] == 0
        return self

    def raised(self) -> RemoteProtocolError:
        """Assert decoding failed and the decoder stays in ERROR; return the error."""
        assert self.error is not None, f"expected an error, got {self.kinds}"
        assert self.decoder.state is State.ERROR
        for _ in range(2):
            try:
                self.decoder.next_event()
            except RemoteProtocolError as again:
                assert "error state" in again.detail
            else:
                raise AssertionError("the decoder left ERROR")
        assert self.decoder.state is State.ERROR
        return self.error


def _drain(decoder: FlightDataDecoder, events: list[Event], *, eof: bool, budget: int) -> None:
    for _ in range(budget):
        event = decoder.next_event()
        if event is NEED_DATA:
            if eof:
                assert decoder.state is State.DONE, "decoder wants data after EOF (would hang)"
            return
        assert isinstance(event, Event), event
        assert not (events and isinstance(events[-1], StreamEnded)), "event after StreamEnded"
        events.append(event)
    raise AssertionError("decoder produced more events than its input can hold")


def decode_chunks(
    chunks: Iterable[bytes], *, eof: bool = True, eof_with_last: bool = False, **limits: int
) -> Decoded:
    """Feed ``chunks``, draining events after each, then EOF.

    With ``eof_with_last`` EOF follows the last chunk before its events are drained.
    """
    out = Decoded(FlightDataDecoder(**limits))
    chunks = [c for c in chunks if c]  # b"" would mean EOF
    try:
        for i, chunk in enumerate(chunks):
            out.decoder.receive_data(chunk)
            out.fed += len(chunk)
            last = i == len(chunks) - 1
            if not (last and eof and eof_with_last):
                # a message is at least 5 bytes, and yields at most 3 events
                _drain(out.decoder, out.events, eof=False, budget=len(chunk) + 4)
        if eof:
            out.decoder.receive_data(b"")
            _drain(out.decoder, out.events, eof=True, budget=out.fed + 4)
    except RemoteProtocolError as exc:
        out.error = exc
    return out


def random_chunks(data: bytes, rng: random.Random | None = None) -> list[bytes]:
    """``data`` cut at random points, some of them close together."""
    rng = rng or random.Random(zlib.crc32(data))
    if len(data) < 2:
        return [data]
    cuts = {rng.randrange(1, len(data)) for _ in range(rng.randint(1, 24))}
    cuts |= {c + 1 for c in list(cuts)[:4] if c + 1 < len(data)}  # 1-byte chunks too
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def chunks_for(data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    if mode == "random":
        return random_chunks(data)
    raise ValueError(mode)


def decode(data: bytes, mode: str = "whole", *, eof: bool = True, **limits: int) -> Decoded:
    """Decode ``data`` fed as ``mode`` says (see ``MODES``)."""
    return decode_chunks(chunks_for(data, mode), eof=eof, eof_with_last=mode == "random", **limits)


# -- assertions ----------------------------------------------------------------


def assert_error(
    error: RemoteProtocolError,
    code: str,
    grpc_status: GrpcStatus = GrpcStatus.INVALID_ARGUMENT,
    *,
    says: str = "",
) -> None:
    """``error`` has this code and gRPC status, an HTTP status to match, and says ``says``."""
    http = 413 if grpc_status == GrpcStatus.RESOURCE_EXHAUSTED else 400
    assert (error.error, error.grpc_status, error.http_status) == (code, grpc_status, http), (
        error.error,
        error.grpc_status,
        error.detail,
    )
    assert says.lower() in error.detail.lower(), error.detail


def _buffers(array: pa.Array) -> list[pa.Buffer]:
    """Every buffer ``array`` owns (children included, dictionaries excluded)."""
    if isinstance(array, pa.ExtensionArray):
        return _buffers(array.storage)
    if isinstance(array, pa.DictionaryArray):
        return _buffers(array.indices)
    return [b for b in array.buffers() if b is not None and b.size]


def body_regions(batch: pa.RecordBatch) -> tuple[int, int]:
    """The lowest address and the highest end of the batch's own (non-dictionary) buffers."""
    buffers = [b for column in batch.columns for b in _buffers(column)]
    assert buffers, "the batch has no buffers"
    return min(b.address for b in buffers), max(b.address + b.size for b in buffers)


def assert_zero_copy(event: BatchReceived, message: FlightMessage) -> None:
    """The batch's buffers are views into one aligned region the size of its body."""
    header = parse_message(message.header)
    assert header.batch is not None and header.batch.codec is None
    low, high = body_regions(event.batch)
    first = min(s.offset for s in header.batch.buffers if s.length)
    base = low - first  # where the decoder put the body
    assert high - base <= header.body_length, "a buffer lies outside the message body"
    assert base % 8 == 0 and base % 64 == 0, f"body at {base:#x} is not 64-byte aligned"
    wanted = {s.offset for s in header.batch.buffers if s.length}
    got = {b.address - base for column in event.batch.columns for b in _buffers(column)}
    assert got <= wanted, f"buffers at body offsets {sorted(got - wanted)} are not the sent ones"
