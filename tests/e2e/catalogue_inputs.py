"""The bad-input catalogue as data: every hostile input, and what each protocol must answer.

Each ``Case`` is one hostile input. It has an HTTP form (a ``POST /ingest/{table}`` body,
headers or request target), a Flight form (the DATA of a ``DoPut`` or another call, sent
with the raw h2 client, or a call made with pyarrow's ``FlightClient``), or both, and the
answer each protocol must give. ``test_catalogue.py`` runs them and checks, for every run,
the answer, that the server serves the next request, and that nothing of the bad request
is left in the database.

Inputs are built from real pyarrow output: ``pa.ipc.new_stream`` writes a stream, its
messages are taken apart (flatbuffer + body), patched where the case says so, and framed
again, as an IPC stream for HTTP and as gRPC-framed ``FlightData`` for Flight (the first
``FlightData`` carries the descriptor naming the target table).
"""

from __future__ import annotations

import functools
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.flight as fl

_TESTS = Path(__file__).resolve().parents[1]
for _helpers in ("io", "protocol"):  # the raw h2 client and the IPC/Flight builders
    if str(_TESTS / _helpers) not in sys.path:
        sys.path.append(str(_TESTS / _helpers))

from ipc_testing import patch_batch, patch_buffer_spec, patch_message  # noqa: E402

from arrowport.protocol import GrpcStatus  # noqa: E402
from arrowport.protocol._flatbuf import parse_message  # noqa: E402
from arrowport.protocol.flight_pb import (  # noqa: E402
    DESCRIPTOR_CMD,
    DESCRIPTOR_PATH,
    Action,
    FlightDescriptor,
    Ticket,
    encode_field_bytes,
    encode_flight_data_prefix,
    encode_tag,
    encode_varint,
)
from arrowport.protocol.grpc import frame, prefix  # noqa: E402

ARROW = "application/vnd.apache.arrow.stream"
CONTINUATION = b"\xff\xff\xff\xff"
EOS = CONTINUATION + b"\x00\x00\x00\x00"
GOOD_ROWS = 3  # rows of every good ingest that follows a bad input
SEED_ROWS = 10  # rows of a table seeded before its bad input
VICTIM = "victim"  # a seeded table the injection-like names try to drop

# Limits of the "limited" server (CONFIGS in test_catalogue.py).
LIMIT_METADATA = 4096
LIMIT_BODY = 64 * 1024
LIMIT_DICTIONARY = 64 * 1024
LIMIT_COLUMNS = 50
LIMIT_REQUEST = 256 * 1024

# -- good data -----------------------------------------------------------------------------

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])


def good_table(start: int, rows: int = GOOD_ROWS, schema: pa.Schema = SCHEMA) -> pa.Table:
    return pa.table(
        {"id": pa.array(range(start, start + rows), pa.int64()), "name": [f"n{start}"] * rows},
        schema=schema,
    )


def write_stream(schema: pa.Schema, batches: Sequence[pa.RecordBatch], **options: object) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def good_stream(start: int, rows: int = GOOD_ROWS, schema: pa.Schema = SCHEMA) -> bytes:
    table = good_table(start, rows, schema)
    return write_stream(table.schema, table.to_batches())


# -- messages and their two framings -------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """One IPC message: its ``Message`` flatbuffer and its body."""

    metadata: bytes
    body: bytes = b""


def messages(stream: bytes) -> list[Msg]:
    """The messages of an IPC stream, as pyarrow reads them."""
    out = []
    for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(stream)):
        body = message.body
        out.append(Msg(message.metadata.to_pybytes(), b"" if body is None else body.to_pybytes()))
    return out


def stream_messages(
    schema: pa.Schema, batches: Sequence[pa.RecordBatch] = (), **options: object
) -> list[Msg]:
    return messages(write_stream(schema, batches, **options))


def good_messages(batches: int = 3, rows: int = 4) -> list[Msg]:
    """Schema, then ``batches`` record batches of ``rows`` rows each."""
    table = good_table(1000, batches * rows)
    return stream_messages(SCHEMA, table.to_batches(max_chunksize=rows))


def ipc_frame(msg: Msg) -> bytes:
    padded = msg.metadata + bytes(-len(msg.metadata) % 8)
    return CONTINUATION + struct.pack("<i", len(padded)) + padded + msg.body


def ipc(msgs: Sequence[Msg], *, eos: bool = True) -> bytes:
    """An HTTP body: the messages as an IPC stream."""
    return b"".join(ipc_frame(m) for m in msgs) + (EOS if eos else b"")


def path_descriptor(target: str) -> FlightDescriptor:
    return FlightDescriptor(type=DESCRIPTOR_PATH, path=(target,))


def flight_message(msg: Msg | None, descriptor: FlightDescriptor | None = None) -> bytes:
    """One gRPC-framed ``FlightData``, encoded as pyarrow's client does."""
    header, body = (msg.metadata, msg.body) if msg is not None else (b"", b"")
    head = encode_flight_data_prefix(header, None, len(body), descriptor)
    return prefix(len(head) + len(body)) + head + body


def flight(msgs: Sequence[Msg], target: str) -> bytes:
    """A DoPut's DATA: the messages as FlightData, the first carrying the descriptor."""
    return b"".join(
        flight_message(m, path_descriptor(target) if i == 0 else None) for i, m in enumerate(msgs)
    )


# -- expectations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """What an HTTP client sees: status, JSON ``error`` and ``says``, a regular expression
    (case-insensitive) that ``detail`` must contain.

    ``error`` None: the answer has no JSON body (the HTTP server's own answer, not
    Arrowport's). ``status`` None: no answer at all.
    """

    status: int | None
    error: str | None = None
    says: str = ""

    def show(self) -> str:
        if self.status is None:
            return "no answer"
        if self.error is None:
            return f"{self.status}, empty body (from the HTTP server)"
        return f"{self.status} `{self.error}`"


@dataclass(frozen=True)
class Grpc:
    """What a Flight client sees: the gRPC status and ``says``, a regular expression
    (case-insensitive) that ``grpc-message`` must contain.

    ``status`` None: the client reset the stream, so no answer is expected. ``http`` is the
    HTTP/2 ``:status`` (200 for every gRPC answer; 505 for a non-gRPC request).
    ``exception`` is the pyarrow exception class, for calls made with pyarrow.
    """

    status: GrpcStatus | None
    says: str = ""
    http: int = 200
    exception: type[Exception] | None = None

    def show(self) -> str:
        if self.http != 200:
            return f"HTTP/2 {self.http}, not gRPC"
        if self.status is None:
            return "no answer (client reset the stream)"
        shown = f"{self.status.name} ({int(self.status)})"
        if self.exception is not None:
            shown += f", `{self.exception.__name__}`"
        return shown


# -- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpInput:
    """One HTTP request.

    ``body`` is the request body. ``path`` is the raw request target ({table} is the run's
    table), sent byte for byte (no client-side normalisation). With ``drop`` the request
    declares the length of ``full`` but sends only ``body``, then closes the connection.
    ``authenticated``: send the server's token, if it has one (the token cases send their
    own ``headers``, or none).
    """

    body: Callable[[], bytes]
    expect: Http
    path: str = "/ingest/{table}"
    content_type: str | None = ARROW
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    full: Callable[[], bytes] | None = None
    authenticated: bool = True


@dataclass(frozen=True)
class FlightInput:
    """One Flight call.

    Raw (``pyarrow`` None): ``data(table)`` is sent as the DATA of an HTTP/2 request to
    ``method`` with the raw h2 client, then END_STREAM, or RST_STREAM(CANCEL) with
    ``reset``. With ``pyarrow`` set, that function makes the call with a stock
    ``FlightClient`` and must raise.
    """

    data: Callable[[str], bytes] | None
    expect: Grpc
    method: str = "DoPut"
    content_type: str = "application/grpc"
    headers: tuple[tuple[str, str], ...] = ()
    reset: bool = False
    pyarrow: Callable[[object, str], None] | None = None


ServerKind = Literal["plain", "lake", "ducklake", "limited", "auth"]
Target = Literal["fresh", "seeded", "not_null", "named"]


@dataclass(frozen=True)
class Case:
    """One hostile input.

    ``target``: ``fresh`` aims at a table that does not exist (it must stay absent),
    ``seeded`` at one seeded with ``SEED_ROWS`` rows (its count must not change),
    ``not_null`` at a seeded table whose ``id`` column is NOT NULL, ``named`` at the
    (invalid) name the input itself carries. ``servers``: the shared servers it runs on.
    """

    name: str
    what: str
    http: HttpInput | None
    flight: FlightInput | None
    target: Target = "fresh"
    servers: tuple[ServerKind, ...] = ("plain", "lake", "ducklake")


# -- builders ------------------------------------------------------------------------------


@functools.cache
def _good() -> list[Msg]:
    return good_messages()


def _good_ipc() -> bytes:
    return ipc(_good())


def _good_flight_parts(target: str) -> list[bytes]:
    msgs = _good()
    return [
        flight_message(m, path_descriptor(target) if i == 0 else None) for i, m in enumerate(msgs)
    ]


def _ipc_cut(where: str) -> bytes:
    """The good stream cut inside its first batch message (or its schema message)."""
    data = _good_ipc()
    schema_end = len(ipc_frame(_good()[0]))
    batch = _good()[1]
    meta = len(batch.metadata) + (-len(batch.metadata) % 8)
    offsets = {
        "continuation": 2,  # 2 bytes of the 0xFFFFFFFF marker
        "length": 6,  # the marker and 2 of the 4 length bytes
        "metadata": 8 + 12,  # 12 bytes into the schema's flatbuffer
        "body": schema_end + 8 + meta + len(batch.body) // 2,  # half the first batch's body
    }
    return data[: offsets[where]]


def _flight_cut(where: str) -> Callable[[str], bytes]:
    """The good DoPut cut inside a FlightData message, then END_STREAM."""

    def build(target: str) -> bytes:
        parts = _good_flight_parts(target)
        data = b"".join(parts)
        schema, batch = _good()[:2]
        # the schema's data_header length is a 2-byte varint, after the descriptor field and
        # the data_header tag
        length_at = 5 + len(_descriptor_field(target)) + 1
        assert 128 <= len(schema.metadata) < 1 << 14, len(schema.metadata)
        header_at = parts[1].index(batch.metadata)
        offsets = {
            "continuation": 3,  # 3 of the 5 bytes of the gRPC prefix
            "length": length_at + 1,  # 1 of the 2 bytes of the data_header's length
            "metadata": len(parts[0]) + header_at + 12,  # 12 bytes into the batch's data_header
            "body": len(parts[0]) + len(parts[1]) - len(batch.body) // 2,  # half its data_body
        }
        return data[: offsets[where]]

    return build


def _ipc_upto(messages_sent: int, *, half_body: bool = False) -> bytes:
    """The good stream's first ``messages_sent`` messages: a cut on a message boundary (with
    ``half_body``, inside the next message's body, halfway through)."""
    sent = b"".join(ipc_frame(m) for m in _good()[:messages_sent])
    if half_body:
        following = _good()[messages_sent]
        sent += ipc_frame(following)[: -(len(following.body) // 2)]
    return sent


def _flight_upto(messages_sent: int, *, half_body: bool = False) -> Callable[[str], bytes]:
    """The good DoPut's first ``messages_sent`` messages (and with ``half_body``, the next
    one up to the middle of its data_body)."""

    def build(target: str) -> bytes:
        parts = _good_flight_parts(target)
        sent = b"".join(parts[:messages_sent])
        if half_body:
            following = parts[messages_sent]
            sent += following[: len(following) - len(_good()[messages_sent].body) // 2]
        return sent

    return build


def _both(
    msgs: Callable[[], list[Msg]], http: Http, grpc: Grpc, **case: object
) -> dict[str, object]:
    """A message-level input: the same messages framed for both protocols."""
    return {
        "http": HttpInput(lambda: ipc(msgs()), http),
        "flight": FlightInput(lambda target: flight(msgs(), target), grpc),
        **case,
    }


def _patched_batch(patch: Callable[[Msg], Msg]) -> Callable[[], list[Msg]]:
    """The good messages with the first record batch (``_good()[1]``) patched."""

    def build() -> list[Msg]:
        msgs = list(_good())
        msgs[1] = patch(msgs[1])
        return msgs

    return build


@functools.cache
def _compressed() -> list[Msg]:
    """Schema and one LZ4-compressed batch of 2000 rows that compress well."""
    table = pa.table({"id": pa.array([7] * 2000, pa.int64()), "name": ["same"] * 2000})
    return stream_messages(SCHEMA, table.to_batches(), compression="lz4")


def _with_claim(claim: Callable[[int], int]) -> list[Msg]:
    """The compressed batch with its first compressed buffer's uncompressed length changed."""
    schema, batch = _compressed()
    header = parse_message(batch.metadata)
    assert header.batch is not None and header.batch.codec is not None
    body = bytearray(batch.body)
    for spec in header.batch.buffers:
        if spec.length >= 8:
            (size,) = struct.unpack_from("<q", body, spec.offset)
            if size > 0:  # -1 would mean "stored uncompressed"
                struct.pack_into("<q", body, spec.offset, claim(size))
                return [schema, Msg(batch.metadata, bytes(body))]
    raise AssertionError("no compressed buffer in the batch")


def _unknown_codec() -> list[Msg]:
    table = pa.table({"id": pa.array([7] * 100, pa.int64()), "name": ["same"] * 100})
    schema, batch = stream_messages(SCHEMA, table.to_batches(), compression="zstd")
    # ZSTD (1) is written out; LZ4_FRAME (0) is the flatbuffer default and is not
    return [schema, replace(batch, metadata=patch_batch(batch.metadata, "codec", 7))]


@functools.cache
def _nested_100() -> list[Msg]:
    data_type: pa.DataType = pa.int64()
    for _ in range(99):
        data_type = pa.list_(data_type)
    # schema only: pyarrow itself cannot build an array this deep
    return stream_messages(pa.schema([("deep", data_type)]))


@functools.cache
def _columns(count: int) -> list[Msg]:
    schema = pa.schema([pa.field(f"c{i}", pa.int8()) for i in range(count)])
    return stream_messages(schema)


@functools.cache
def _dictionary_flood(deltas: int = 500) -> list[Msg]:
    """A dictionary, a batch, then ``deltas`` copies of one dictionary delta, then a batch."""
    schema = pa.schema([("tag", pa.dictionary(pa.int32(), pa.string()))])
    values = ["v0", "v1" + "x" * 100]
    batches = [
        pa.record_batch(
            [pa.DictionaryArray.from_arrays(pa.array([n - 1], pa.int32()), pa.array(values[:n]))],
            schema=schema,
        )
        for n in (1, 2)
    ]
    msgs = stream_messages(schema, batches, emit_dictionary_deltas=True)
    kinds = [parse_message(m.metadata).header_type for m in msgs]
    assert kinds == [1, 2, 3, 2, 3], kinds  # schema, dict, batch, delta, batch
    return msgs[:3] + [msgs[3]] * deltas + msgs[4:]


def _strings(offsets: Sequence[int], data: bytes) -> list[Msg]:
    """Schema (id, name) and one batch whose ``name`` column has these raw buffers."""
    rows = len(offsets) - 1
    names = pa.Array.from_buffers(
        pa.string(),
        rows,
        [None, pa.py_buffer(struct.pack(f"<{len(offsets)}i", *offsets)), pa.py_buffer(data)],
    )
    ids = pa.array(range(rows), pa.int64())
    return stream_messages(SCHEMA, [pa.RecordBatch.from_arrays([ids, names], schema=SCHEMA)])


def _invalid_utf8() -> list[Msg]:
    good = good_messages(1, 5)
    bad = _strings([0, 2, 4], b"ok\xff\xfe")
    return [*good, bad[1]]  # a good batch, then one with invalid UTF-8


def _bad_offsets() -> list[Msg]:
    """A good batch whose ``name`` offsets are rewritten to decrease, then point far past
    the data (pyarrow's writer refuses to write such an array, so the body is patched)."""
    schema, batch = _strings([0, 1, 2, 3], b"abc")
    header = parse_message(batch.metadata).batch
    assert header is not None
    offsets = header.buffers[3]  # id: validity, values; name: validity, offsets
    body = bytearray(batch.body)
    struct.pack_into("<4i", body, offsets.offset, 0, 2, 1, 4000)
    return [schema, Msg(batch.metadata, bytes(body))]


def _schema_change() -> list[Msg]:
    other = pa.schema([("id", pa.string()), ("extra", pa.float64())])
    first = good_messages(1, 4)
    second = stream_messages(other, [pa.record_batch([pa.array(["a"]), pa.array([1.0])], other)])
    return [*first, *second]


def _nulls() -> list[Msg]:
    table = pa.table({"id": pa.array([1, None, 3], pa.int64()), "name": ["a", "b", "c"]})
    return stream_messages(SCHEMA, table.to_batches())


def _dictionary_index() -> list[Msg]:
    """A dictionary column whose batch uses index 5 of a one-value dictionary."""
    schema = pa.schema([("tag", pa.dictionary(pa.int32(), pa.string()))])
    good = pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), pa.array(["v0"]))
    msgs = stream_messages(schema, [pa.record_batch([good], schema=schema)])
    batch = msgs[2]
    header = parse_message(batch.metadata).batch
    assert header is not None
    spec = header.buffers[1]  # validity, then the indices
    body = bytearray(batch.body)
    struct.pack_into("<i", body, spec.offset, 5)
    return [*msgs[:2], Msg(batch.metadata, bytes(body))]


def _duplicate_names() -> list[Msg]:
    schema = pa.schema([("id", pa.int64()), ("ID", pa.int64())])
    batch = pa.record_batch([pa.array([1], pa.int64()), pa.array([2], pa.int64())], schema=schema)
    return stream_messages(schema, [batch])


def _big_metadata() -> list[Msg]:
    schema = SCHEMA.with_metadata({"padding": "x" * (2 * LIMIT_METADATA)})
    return stream_messages(schema, good_table(0).to_batches())


def _big_body() -> list[Msg]:
    table = pa.table(
        {
            "id": pa.array(range(2 * LIMIT_BODY // 8), pa.int64()),
            "name": ["x"] * (2 * LIMIT_BODY // 8),
        }
    )
    return stream_messages(SCHEMA, table.to_batches())


def _over_request_size() -> bytes:
    """A valid stream of many small batches, larger in total than ``LIMIT_REQUEST``."""
    table = good_table(0, 2 * LIMIT_REQUEST // 8)
    return write_stream(SCHEMA, table.to_batches(max_chunksize=2000))


def _file_format() -> bytes:
    sink = pa.BufferOutputStream()
    table = good_table(0)
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _flight_header_is(header: bytes) -> Callable[[str], bytes]:
    """A DoPut whose first FlightData carries the descriptor and ``header`` as data_header."""
    return lambda target: flight_message(Msg(header), path_descriptor(target))


def _raw_flight(first_fields: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """A DoPut whose first FlightData is ``first_fields(target)`` (raw protobuf), then the rest."""

    def build(target: str) -> bytes:
        payload = first_fields(target)
        return prefix(len(payload)) + payload + b"".join(_good_flight_parts(target)[1:])

    return build


def _descriptor_field(target: str) -> bytes:
    return encode_field_bytes(1, path_descriptor(target).encode())


def _schema_field() -> bytes:
    return encode_field_bytes(2, _good()[0].metadata)


def _unknown_field_past_end(target: str) -> bytes:
    # an unknown field 15 whose declared length runs past the end of its gRPC message
    return _descriptor_field(target) + _schema_field() + encode_tag(15, 2) + encode_varint(1 << 20)


def _bad_wire_type(target: str) -> bytes:
    return _descriptor_field(target) + encode_tag(9, 7) + b"\x00" * 8 + _schema_field()


def _header_as_varint(target: str) -> bytes:
    return _descriptor_field(target) + encode_tag(2, 0) + encode_varint(12345)


def _garbage_descriptor(target: str) -> bytes:
    # a descriptor field whose content is not a FlightDescriptor (a truncated varint)
    return encode_field_bytes(1, b"\x08\xff\xff\xff") + _schema_field()


def _negative_header_length(target: str) -> bytes:
    # data_header declared 2**64 - 8 bytes long (-8 as a signed varint)
    return _descriptor_field(target) + encode_tag(2, 2) + encode_varint((1 << 64) - 8)


def _huge_grpc_header(target: str) -> bytes:
    """A gRPC message declaring 4 GiB - 1 bytes, whose data_header declares 1 GiB."""
    head = _descriptor_field(target) + encode_tag(2, 2) + encode_varint(1 << 30)
    return struct.pack(">BI", 0, (1 << 32) - 1) + head + b"\x00" * 64


def _compressed_flag(target: str) -> bytes:
    data = b"".join(_good_flight_parts(target))
    return b"\x01" + data[1:]  # the first message's compressed flag


def _idempotency_cmd(target: str) -> bytes:
    cmd = f'{{"stream": "{target}", "idempotency_key": "has space"}}'.encode()
    descriptor = FlightDescriptor(type=DESCRIPTOR_CMD, cmd=cmd)
    msgs = _good()
    return b"".join(flight_message(m, descriptor if i == 0 else None) for i, m in enumerate(msgs))


def _named(name: str) -> Callable[[str], bytes]:
    """The good DoPut aimed at the descriptor path ``name`` (whatever the run's table)."""
    return lambda _target: flight(_good(), name)


def _put_with(*headers: tuple[bytes, bytes]) -> Callable[[object, str], None]:
    """A good DoPut with pyarrow's client, sending ``headers``."""

    def put(client: object, target: str) -> None:
        assert isinstance(client, fl.FlightClient)
        options = fl.FlightCallOptions(headers=list(headers))
        table = good_table(0)
        descriptor = fl.FlightDescriptor.for_path(target)
        writer, reader = client.do_put(descriptor, table.schema, options=options)
        try:
            writer.write_table(table)
            writer.done_writing()
            reader.read()
        finally:
            writer.close()

    return put


# -- the catalogue -------------------------------------------------------------------------

INVALID = GrpcStatus.INVALID_ARGUMENT
EXHAUSTED = GrpcStatus.RESOURCE_EXHAUSTED
UNIMPLEMENTED = GrpcStatus.UNIMPLEMENTED
TRUNCATED_GRPC = Grpc(INVALID, "stream truncated inside a FlightData message")


def _truncated(where: str) -> Http:
    return Http(400, "truncated_stream", f"stream truncated {where}")


DROPPED = Http(400, "bad_request", "without sending complete message body")  # h11: body short
RESET = Grpc(None)
LONG_NAME = "a" * 10_000
OVER_REQUEST = f"request body exceeds the limit of {LIMIT_REQUEST} bytes"
INJECTION_TICKET = f'{VICTIM}"; DROP TABLE {VICTIM}; --'.encode()

CASES: list[Case] = [
    # -- framing and truncation ------------------------------------------------------------
    Case(
        "empty_body",
        "no bytes at all",
        HttpInput(lambda: b"", Http(400, "empty_stream", "empty body")),
        FlightInput(lambda target: b"", Grpc(INVALID, "before any Arrow schema")),
    ),
    Case(
        "garbage_bytes",
        "240 bytes of ASCII text",
        HttpInput(
            lambda: b"this is not arrow at all" * 10,
            Http(400, "invalid_ipc_framing", "not an Arrow IPC stream"),
        ),
        FlightInput(
            lambda target: b"this is not arrow at all" * 10,
            Grpc(INVALID, "invalid gRPC message flag 116"),
        ),
    ),
    Case(
        "wrong_magic",
        "the Arrow IPC file format (ARROW1 magic); Flight: those bytes as the data_header",
        HttpInput(_file_format, Http(400, "invalid_ipc_framing", "IPC file format")),
        FlightInput(
            lambda target: _flight_header_is(_file_format()[:64])(target),
            Grpc(INVALID, "malformed IPC message metadata"),
        ),
    ),
    Case(
        "cut_mid_continuation",
        "ends inside the first message prefix (IPC: the 0xFFFFFFFF marker; gRPC: the "
        "5-byte prefix)",
        HttpInput(lambda: _ipc_cut("continuation"), _truncated("in a message prefix")),
        FlightInput(_flight_cut("continuation"), TRUNCATED_GRPC),
    ),
    Case(
        "cut_mid_length",
        "ends inside a length (IPC: the int32 metadata length; Flight: the schema "
        "data_header's 2-byte varint length)",
        HttpInput(lambda: _ipc_cut("length"), _truncated("in a message prefix")),
        FlightInput(_flight_cut("length"), TRUNCATED_GRPC),
    ),
    Case(
        "cut_mid_metadata",
        "ends inside a message's flatbuffer (IPC: the schema's; Flight: a batch's data_header)",
        HttpInput(lambda: _ipc_cut("metadata"), _truncated("in message metadata")),
        FlightInput(_flight_cut("metadata"), TRUNCATED_GRPC),
    ),
    Case(
        "cut_mid_body",
        "ends halfway through the first record batch's body",
        HttpInput(lambda: _ipc_cut("body"), _truncated("in a message body")),
        FlightInput(_flight_cut("body"), TRUNCATED_GRPC),
    ),
    Case(
        "cut_after_schema",
        "the transport is cut right after the schema message (HTTP: the connection is closed "
        "short of its Content-Length; Flight: RST_STREAM)",
        HttpInput(lambda: _ipc_upto(1), DROPPED, drop=True, full=_good_ipc),
        FlightInput(_flight_upto(1), RESET, reset=True),
    ),
    Case(
        "cut_between_batches",
        "the transport is cut on the boundary after two of three batches",
        HttpInput(lambda: _ipc_upto(3), DROPPED, drop=True, full=_good_ipc),
        FlightInput(_flight_upto(3), RESET, reset=True),
    ),
    Case(
        "ends_between_batches_without_eos",
        "the whole body arrives, but it stops after two of three batches, without the "
        "end-of-stream marker (a producer that died behind curl -T -); Flight has no marker",
        HttpInput(lambda: _ipc_upto(3), Http(400, "missing_eos_marker", "end-of-stream marker")),
        None,
    ),
    Case(
        "rst_stream_mid_upload",
        "HTTP/2 RST_STREAM(CANCEL) in the middle of a batch's data_body, after one whole "
        "batch (HTTP: the connection is closed mid-body)",
        HttpInput(lambda: _ipc_upto(2, half_body=True), DROPPED, drop=True, full=_good_ipc),
        FlightInput(_flight_upto(2, half_body=True), RESET, reset=True),
    ),
    Case(
        "negative_length",
        "a negative declared length (IPC: metadata length -8; Flight: data_header length -8 "
        "as a varint)",
        HttpInput(
            lambda: CONTINUATION + struct.pack("<i", -8) + b"\x00" * 64,
            Http(400, "invalid_ipc_framing", "negative IPC metadata length"),
        ),
        FlightInput(
            _raw_flight(_negative_header_length),
            Grpc(INVALID, "runs past the end of its gRPC message"),
        ),
    ),
    Case(
        "huge_length",
        "a declared length of 2 GiB (IPC metadata) / a 4 GiB gRPC message with a 1 GiB "
        "data_header; only a few bytes follow",
        HttpInput(
            lambda: CONTINUATION + struct.pack("<i", 2**31 - 1) + b"\x00" * 64,
            Http(413, "limit_exceeded", "metadata of 2147483647 bytes exceeds the limit"),
        ),
        FlightInput(
            _huge_grpc_header,
            Grpc(EXHAUSTED, "data_header of 1073741824 bytes exceeds the limit"),
        ),
    ),
    Case(
        "trailing_bytes",
        "bytes after the end (IPC: after the EOS marker; Flight: a partial gRPC prefix after "
        "the last FlightData)",
        HttpInput(
            lambda: _good_ipc() + b"junk",
            Http(400, "trailing_data", "bytes follow the end-of-stream marker"),
        ),
        FlightInput(lambda target: flight(_good(), target) + b"\x00\x00", TRUNCATED_GRPC),
    ),
    # -- messages and their metadata -------------------------------------------------------
    Case(
        "batch_before_schema",
        "a record batch as the first message",
        **_both(
            lambda: _good()[1:],
            Http(400, "invalid_ipc_framing", "must begin with a Schema"),
            Grpc(INVALID, "must begin with a Schema"),
        ),
    ),
    Case(
        "unsupported_version",
        "a schema message of metadata version V3",
        **_both(
            lambda: [
                replace(_good()[0], metadata=patch_message(_good()[0].metadata, "version", 2)),
                *_good()[1:],
            ],
            Http(400, "unsupported_ipc_version", "V3"),
            Grpc(INVALID, "V3"),
        ),
    ),
    Case(
        "huge_body_length",
        "a batch whose bodyLength claims 1 TiB",
        **_both(
            _patched_batch(
                lambda m: replace(m, metadata=patch_message(m.metadata, "body_length", 1 << 40))
            ),
            Http(413, "limit_exceeded", "body of 1099511627776 bytes exceeds the limit"),
            Grpc(EXHAUSTED, "body of 1099511627776 bytes exceeds the limit"),
        ),
    ),
    Case(
        "negative_body_length",
        "a batch whose bodyLength is -8",
        **_both(
            _patched_batch(
                lambda m: replace(m, metadata=patch_message(m.metadata, "body_length", -8))
            ),
            Http(400, "invalid_ipc_metadata", "negative body length"),
            Grpc(INVALID, "negative body length"),
        ),
    ),
    Case(
        "negative_buffer_offset",
        "a buffer whose offset is -64",
        **_both(
            _patched_batch(
                lambda m: replace(m, metadata=patch_buffer_spec(m.metadata, 1, offset=-64))
            ),
            Http(400, "invalid_ipc_metadata", "negative buffer offset"),
            Grpc(INVALID, "negative buffer offset"),
        ),
    ),
    Case(
        "huge_row_count",
        "a batch whose length claims 2**40 rows",
        **_both(
            _patched_batch(
                lambda m: replace(m, metadata=patch_batch(m.metadata, "length", 1 << 40))
            ),
            Http(413, "limit_exceeded", "rows exceeds the limit"),
            Grpc(EXHAUSTED, "rows exceeds the limit"),
        ),
    ),
    Case(
        "buffer_outside_body",
        "a buffer whose offset points past the end of the message body",
        **_both(
            _patched_batch(
                lambda m: replace(
                    m, metadata=patch_buffer_spec(m.metadata, 1, offset=len(m.body) + 64)
                )
            ),
            Http(400, "invalid_ipc_metadata", "outside the message body"),
            Grpc(INVALID, "outside the message body"),
        ),
    ),
    Case(
        "schema_change_mid_stream",
        "a second, different Schema message after a valid batch, into a seeded table",
        target="seeded",
        **_both(
            _schema_change,
            Http(400, "invalid_ipc_framing", "second Schema message"),
            Grpc(INVALID, "second Schema message"),
        ),
    ),
    # -- compression -----------------------------------------------------------------------
    Case(
        "compressed_claims_huge",
        "an LZ4 buffer whose uncompressed-length prefix claims 1 TiB",
        **_both(
            lambda: _with_claim(lambda size: 1 << 40),
            Http(413, "limit_exceeded", "would decompress to more than"),
            Grpc(EXHAUSTED, "would decompress to more than"),
        ),
    ),
    Case(
        "compressed_expands_past_claim",
        "an LZ4 buffer that decompresses to more than its prefix claims (claim: 8 bytes)",
        **_both(
            lambda: _with_claim(lambda size: 8),
            Http(400, "invalid_batch", "Lz4 decompression buffer too small"),
            Grpc(INVALID, "Lz4 decompression buffer too small"),
        ),
    ),
    Case(
        "unknown_codec",
        "a batch naming compression codec 7",
        **_both(
            _unknown_codec,
            Http(400, "unsupported_compression", "codec 7"),
            Grpc(INVALID, "codec 7"),
        ),
    ),
    # -- schema shapes ---------------------------------------------------------------------
    Case(
        "nesting_100_deep",
        "a column of 100 nested list levels",
        **_both(
            _nested_100,
            Http(413, "limit_exceeded", "nested deeper than the limit of 64"),
            Grpc(EXHAUSTED, "nested deeper than the limit of 64"),
        ),
    ),
    Case(
        "columns_100000",
        "a schema of 100,000 columns (a 5.2 MB schema message; default max_columns 10000)",
        **_both(
            lambda: _columns(100_000),
            Http(413, "limit_exceeded", "more than 10000 fields"),
            Grpc(EXHAUSTED, "more than 10000 fields"),
        ),
    ),
    Case(
        "duplicate_column_names",
        "columns `id` and `ID` (names are case-insensitive)",
        **_both(
            _duplicate_names,
            Http(422, "schema_mismatch", r"duplicate column names \(case-insensitive\): ID"),
            Grpc(INVALID, r"duplicate column names \(case-insensitive\): ID"),
        ),
    ),
    # -- batch contents --------------------------------------------------------------------
    Case(
        "invalid_utf8",
        "a valid batch, then a string column holding 0xFF 0xFE",
        **_both(_invalid_utf8, Http(400, "invalid_batch", "UTF8"), Grpc(INVALID, "UTF8")),
    ),
    Case(
        "bad_offsets",
        "string offsets that decrease and then point 4000 bytes past the data",
        **_both(
            _bad_offsets,
            Http(400, "invalid_batch", "non-monotonic offset"),
            Grpc(INVALID, "non-monotonic offset"),
        ),
    ),
    Case(
        "dictionary_index_out_of_range",
        "a dictionary of one value and an index of 5",
        **_both(
            _dictionary_index,
            Http(400, "invalid_batch", "Dictionary indices invalid"),
            Grpc(INVALID, "Dictionary indices invalid"),
        ),
    ),
    Case(
        "null_in_not_null",
        "nulls in the `id` column of a table whose `id` is NOT NULL",
        target="not_null",
        **_both(
            _nulls,
            Http(422, "write_rejected", "NOT NULL|non-nullable"),
            Grpc(INVALID, "NOT NULL|non-nullable"),
        ),
    ),
    # -- limits of the limited server ------------------------------------------------------
    Case(
        "metadata_over_limit",
        f"a schema message of 8416 bytes (max_metadata_size {LIMIT_METADATA})",
        servers=("limited",),
        **_both(
            _big_metadata,
            Http(413, "limit_exceeded", f"the limit of {LIMIT_METADATA} bytes"),
            Grpc(EXHAUSTED, f"the limit of {LIMIT_METADATA} bytes"),
        ),
    ),
    Case(
        "body_over_limit",
        f"a record batch body of 213,000 bytes (max_body_size {LIMIT_BODY})",
        servers=("limited",),
        **_both(
            _big_body,
            Http(413, "limit_exceeded", f"the limit of {LIMIT_BODY} bytes"),
            Grpc(EXHAUSTED, f"the limit of {LIMIT_BODY} bytes"),
        ),
    ),
    Case(
        "columns_over_limit",
        f"{LIMIT_COLUMNS + 1} columns (max_columns {LIMIT_COLUMNS})",
        servers=("limited",),
        **_both(
            lambda: _columns(LIMIT_COLUMNS + 1),
            Http(413, "limit_exceeded", f"more than {LIMIT_COLUMNS} fields"),
            Grpc(EXHAUSTED, f"more than {LIMIT_COLUMNS} fields"),
        ),
    ),
    Case(
        "dictionary_delta_flood",
        f"500 dictionary deltas in one stream (max_dictionary_bytes {LIMIT_DICTIONARY})",
        servers=("limited",),
        **_both(
            _dictionary_flood,
            Http(413, "limit_exceeded", "dictionaries would grow"),
            Grpc(EXHAUSTED, "dictionaries would grow"),
        ),
    ),
    Case(
        "request_over_max_request_size",
        f"a valid stream of 925,840 bytes (max_request_size {LIMIT_REQUEST})",
        HttpInput(_over_request_size, Http(413, "limit_exceeded", OVER_REQUEST)),
        FlightInput(
            lambda target: flight(messages(_over_request_size()), target),
            Grpc(EXHAUSTED, OVER_REQUEST),
        ),
        servers=("limited",),
    ),
    # -- gRPC and protobuf -----------------------------------------------------------------
    Case(
        "grpc_compressed_flag",
        "a good DoPut whose first gRPC message has the compressed flag set",
        None,
        FlightInput(_compressed_flag, Grpc(UNIMPLEMENTED, "compressed gRPC messages")),
        servers=("plain",),
    ),
    Case(
        "grpc_unknown_method",
        "a good DoPut's DATA sent to FlightService/DoMagic",
        None,
        FlightInput(
            lambda target: flight(_good(), target),
            Grpc(UNIMPLEMENTED, "unknown method .*/DoMagic"),
            method="DoMagic",
        ),
        servers=("plain",),
    ),
    Case(
        "grpc_do_exchange",
        "a good DoPut's DATA sent to DoExchange (not implemented)",
        None,
        FlightInput(
            lambda target: flight(_good(), target),
            Grpc(UNIMPLEMENTED, "unknown method .*/DoExchange"),
            method="DoExchange",
        ),
        servers=("plain",),
    ),
    Case(
        "protobuf_unknown_field_past_end",
        "an unknown field 15 whose length runs past the end of its FlightData",
        None,
        FlightInput(
            _raw_flight(_unknown_field_past_end),
            Grpc(INVALID, "runs past the end of its gRPC message"),
        ),
        servers=("plain",),
    ),
    Case(
        "protobuf_bad_wire_type",
        "a field with wire type 7 (no such wire type)",
        None,
        FlightInput(_raw_flight(_bad_wire_type), Grpc(INVALID, "wire type 7")),
        servers=("plain",),
    ),
    Case(
        "protobuf_header_as_varint",
        "data_header encoded as a varint instead of bytes",
        None,
        FlightInput(_raw_flight(_header_as_varint), Grpc(INVALID, "wire type 0, expected 2")),
        servers=("plain",),
    ),
    Case(
        "protobuf_garbage_descriptor",
        "a flight_descriptor field that is not a FlightDescriptor (a truncated varint)",
        None,
        FlightInput(
            _raw_flight(_garbage_descriptor),
            Grpc(INVALID, "malformed FlightDescriptor field 1: truncated varint"),
        ),
        servers=("plain",),
    ),
    Case(
        "no_descriptor",
        "a DoPut whose first FlightData carries no descriptor",
        None,
        FlightInput(
            lambda target: (
                flight(_good(), target)[0:0] + b"".join(flight_message(m) for m in _good())
            ),
            Grpc(INVALID, "first FlightData must carry a FlightDescriptor"),
        ),
        servers=("plain",),
    ),
    Case(
        "doget_injection_ticket",
        f'DoGet with the ticket `{VICTIM}"; DROP TABLE {VICTIM}; --`',
        None,
        FlightInput(
            lambda _target: frame(Ticket(ticket=INJECTION_TICKET).encode()),
            Grpc(INVALID, "invalid table name"),
            method="DoGet",
        ),
        target="named",
        servers=("plain",),
    ),
    Case(
        "doaction_table_drop",
        f"DoAction table.drop of `{VICTIM}` (flight.allow_table_drop is off)",
        None,
        FlightInput(
            lambda _target: frame(Action(type="table.drop", body=VICTIM.encode()).encode()),
            Grpc(GrpcStatus.PERMISSION_DENIED, "table.drop is disabled"),
            method="DoAction",
        ),
        target="named",
    ),
    # -- requests --------------------------------------------------------------------------
    Case(
        "wrong_content_type",
        "a good stream labelled application/json (Flight: an HTTP/2 request labelled "
        "application/json)",
        HttpInput(
            _good_ipc,
            Http(415, "unsupported_media_type", "'application/json' is not accepted"),
            content_type="application/json",
        ),
        FlightInput(
            lambda target: flight(_good(), target),
            Grpc(None, r"Arrow Flight \(gRPC\) only", http=505),
            content_type="application/json",
        ),
    ),
    Case(
        "idempotency_key_malformed",
        "a good stream with the idempotency key `has space` (Flight: in a JSON descriptor cmd)",
        HttpInput(
            _good_ipc,
            Http(400, "invalid_idempotency_key", "printable ASCII"),
            headers=(("Idempotency-Key", "has space"),),
        ),
        FlightInput(_idempotency_cmd, Grpc(INVALID, "printable ASCII")),
    ),
    Case(
        "wrong_token",
        "a good stream with a valid-looking but unknown bearer token",
        HttpInput(
            _good_ipc,
            Http(401, "unauthenticated", "the token is not valid"),
            headers=(("Authorization", "Bearer not-the-token-0123456789"),),
            authenticated=False,
        ),
        FlightInput(
            None,
            Grpc(
                GrpcStatus.UNAUTHENTICATED,
                "the token is not valid",
                exception=fl.FlightUnauthenticatedError,
            ),
            pyarrow=_put_with((b"authorization", b"Bearer not-the-token-0123456789")),
        ),
        servers=("auth",),
    ),
    Case(
        "missing_token",
        "a good stream with no token",
        HttpInput(_good_ipc, Http(401, "unauthenticated", "needs a token"), authenticated=False),
        FlightInput(
            None,
            Grpc(
                GrpcStatus.UNAUTHENTICATED, "needs a token", exception=fl.FlightUnauthenticatedError
            ),
            pyarrow=_put_with(),
        ),
        servers=("auth",),
    ),
    # -- names -----------------------------------------------------------------------------
    Case(
        "name_sql_injection",
        f"the stream name `x;DROP TABLE {VICTIM}`",
        HttpInput(
            _good_ipc,
            Http(400, "invalid_name", "invalid stream name"),
            path=f"/ingest/x;DROP%20TABLE%20{VICTIM}",
        ),
        FlightInput(_named(f"x;DROP TABLE {VICTIM}"), Grpc(INVALID, "invalid stream name")),
        target="named",
    ),
    Case(
        "name_quote_injection",
        f'the stream name `x"; DROP TABLE {VICTIM}; --`',
        HttpInput(
            _good_ipc,
            Http(400, "invalid_name", "invalid stream name"),
            path=f"/ingest/x%22;%20DROP%20TABLE%20{VICTIM};%20--",
        ),
        FlightInput(_named(f'x"; DROP TABLE {VICTIM}; --'), Grpc(INVALID, "invalid stream name")),
        target="named",
    ),
    Case(
        "name_path_traversal",
        "the stream name `../etc` (HTTP: the raw request target /ingest/../etc)",
        HttpInput(
            _good_ipc, Http(404, "not_found", "was not found on the server"), path="/ingest/../etc"
        ),
        FlightInput(_named("../etc"), Grpc(INVALID, "invalid stream name")),
        target="named",
    ),
    Case(
        "name_encoded_traversal",
        "the stream name `%2e%2e%2fetc` (HTTP: percent-encoded in the request target)",
        HttpInput(
            _good_ipc,
            Http(404, "not_found", "was not found on the server"),
            path="/ingest/%2e%2e%2fetc",
        ),
        FlightInput(_named("%2e%2e%2fetc"), Grpc(INVALID, "invalid stream name")),
        target="named",
    ),
    Case(
        "name_very_long",
        f"a stream name of {len(LONG_NAME):,} characters",
        HttpInput(
            _good_ipc, Http(400, "invalid_name", "the limit is 128"), path=f"/ingest/{LONG_NAME}"
        ),
        FlightInput(_named(LONG_NAME), Grpc(INVALID, "the limit is 128")),
        target="named",
    ),
    Case(
        "name_unicode",
        "the stream name `таблица🙂` (UTF-8, percent-encoded in the request target)",
        HttpInput(
            _good_ipc,
            Http(400, "invalid_name", "invalid stream name"),
            path="/ingest/%D1%82%D0%B0%D0%B1%D0%BB%D0%B8%D1%86%D0%B0%F0%9F%99%82",
        ),
        FlightInput(_named("таблица🙂"), Grpc(INVALID, "invalid stream name")),
        target="named",
    ),
    Case(
        "name_nul_byte",
        "the stream name `t\\x00x` (a NUL byte)",
        HttpInput(
            _good_ipc, Http(400, "invalid_name", "invalid stream name"), path="/ingest/t%00x"
        ),
        FlightInput(_named("t\x00x"), Grpc(INVALID, "invalid stream name")),
        target="named",
    ),
]

# -- internal state (issue 16, item 3): reserved names, schema metadata ----------------------
# (a block of its own, appended, so that other additions to CASES merge cleanly)

META_LIMIT_DEFAULT = 256 * 1024  # limits.max_schema_metadata_bytes on the shared servers


def _nested_metadata_over_limit() -> list[Msg]:
    """The good schema plus a struct whose nested field carries 256 KiB + 1 byte of metadata."""
    leaf = pa.field("v", pa.int64(), metadata={b"k": b"m" * META_LIMIT_DEFAULT})
    schema = SCHEMA.append(pa.field("s", pa.struct([leaf])))
    table = good_table(0).append_column(schema.field("s"), [pa.array([{"v": 1}] * GOOD_ROWS)])
    return stream_messages(schema, table.cast(schema).to_batches())


CASES += [
    Case(
        "name_reserved_ledger",
        "the stream name `_arrowport_keys` (Arrowport's own ledger table)",
        HttpInput(
            _good_ipc,
            Http(400, "invalid_name", "is reserved"),
            path="/ingest/_arrowport_keys",
        ),
        FlightInput(_named("_arrowport_keys"), Grpc(INVALID, "is reserved")),
        target="named",
    ),
    Case(
        "name_reserved_any_case",
        "the stream name `_ARROWPORT_ledger_20250101` (a DuckLake ledger day, upper case)",
        HttpInput(
            _good_ipc,
            Http(400, "invalid_name", "is reserved"),
            path="/ingest/_ARROWPORT_ledger_20250101",
        ),
        FlightInput(_named("_ARROWPORT_ledger_20250101"), Grpc(INVALID, "is reserved")),
        target="named",
    ),
    Case(
        "name_delta_log",
        "the stream name `_delta_log` on the Delta server (the table's log directory)",
        HttpInput(_good_ipc, Http(400, "invalid_name", "hidden"), path="/ingest/_delta_log"),
        FlightInput(_named("_delta_log"), Grpc(INVALID, "hidden")),
        target="named",
        servers=("lake",),
    ),
    Case(
        "schema_metadata_over_limit",
        "a nested field with 256 KiB + 1 byte of metadata (limits.max_schema_metadata_bytes)",
        **_both(
            _nested_metadata_over_limit,
            Http(413, "limit_exceeded", "max_schema_metadata_bytes"),
            Grpc(EXHAUSTED, "max_schema_metadata_bytes"),
        ),
    ),
]

from catalogue_types import TYPE_CASES  # noqa: E402 - built with the helpers above

CASES += TYPE_CASES

CASES_BY_NAME = {case.name: case for case in CASES}
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"
