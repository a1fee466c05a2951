"""Record batches as ``FlightData`` messages, without reading back what was written.

``FlightDataEncoder(schema, max_message_size=…)`` turns a stream's batches into
FlightData messages, each as parts ready to send: the protobuf prefix (the
``data_header`` field and the ``data_body`` tag and length) and the body, an
Arrow buffer sent as it is. The DoGet path (``io/flight_read``) sends them.

Invariants:

* The IPC messages carried are byte for byte those of pyarrow's stream
  writer with its default options (``pa.ipc.new_stream``: uncompressed, V5),
  in the same order, without its end-of-stream marker: the schema, then
  before each batch the dictionaries that batch needs and the stream has not
  sent, then the batch. ``data_header`` is the padded ``Message``
  flatbuffer, as pyarrow's ``MessageReader`` gives it; ``data_body`` is the
  body.
* The schema message goes out with the first batch's messages, or alone from
  ``finish()`` if no batch came.
* A record batch is serialized once (``RecordBatch.serialize()``: one IPC
  message, its body written once) and split at its 8-byte prefix; its body is
  a zero-copy slice of that buffer, parsed by nobody.
* Dictionaries are pyarrow's own decisions: a stream writer of the same
  schema is given each batch's zero-row slice, which carries the batch's
  dictionaries and no rows, so dictionary ids, nested dictionaries (inner
  before outer) and the replacement of a changed dictionary are as pyarrow's
  writer makes them (it sends no deltas by default). Only its dictionary
  messages are kept; their flatbuffers are read (``_flatbuf``) for their body
  lengths only. A schema without dictionaries has no such writer.
* With ``max_message_size``, a record batch is sent as consecutive row slices
  whose FlightData is at most that many bytes (zero-copy slices: the
  serialization writes only each slice's part of the buffers, and its size
  is ``pa.ipc.get_record_batch_size``, exactly). One row that does not fit
  raises ``limit_exceeded`` (RESOURCE_EXHAUSTED) naming the limit, before
  anything of that batch is returned. Schema and dictionary messages are not
  sliced (they cannot be) and not limited.
* ``iterencode`` serializes each record batch message only when its iterator
  reaches it, so a caller that sends as it goes holds one serialized slice
  (or as many as it takes at once) beside the batch, not the whole batch twice.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from ._flatbuf import HeaderType, parse_message
from .errors import limit_exceeded
from .flight_pb import encode_flight_data_prefix
from .sink import IpcSink

__all__ = [
    "FLIGHT_DATA_OVERHEAD",
    "EncodedFlightData",
    "FlightDataEncoder",
    "fitting_slices",
    "has_dictionaries",
]

# FlightData's protobuf tags and lengths around the IPC header and body, with room to spare
FLIGHT_DATA_OVERHEAD = 64
_CONTINUATION = 0xFFFFFFFF
_PREFIX = struct.Struct("<Ii")  # continuation marker, padded metadata length


@dataclass(frozen=True, slots=True)
class EncodedFlightData:
    """One FlightData message: send ``prefix``, then ``body`` (if any), uncopied."""

    prefix: bytes  # FlightData fields up to and including data_body's tag and length
    body: pa.Buffer | None  # the IPC message body
    kind: HeaderType  # SCHEMA, DICTIONARY_BATCH or RECORD_BATCH
    rows: int = 0  # a record batch's rows

    @property
    def size(self) -> int:
        """The FlightData's length in bytes (what the gRPC length prefix says)."""
        return len(self.prefix) + (self.body.size if self.body is not None else 0)

    def to_bytes(self) -> bytes:
        """The whole FlightData, joined (a copy: for tests and small messages)."""
        return self.prefix + (self.body.to_pybytes() if self.body is not None else b"")


def fitting_slices(batch: pa.RecordBatch, limit: int) -> Iterator[pa.RecordBatch]:
    """``batch`` as consecutive row slices whose FlightData is at most ``limit`` bytes.

    Raises ``LocalProtocolError`` (``limit_exceeded``: RESOURCE_EXHAUSTED) if one
    row alone is larger.
    """
    budget = limit - FLIGHT_DATA_OVERHEAD
    size = pa.ipc.get_record_batch_size(batch)
    if size <= budget:
        yield batch
        return
    if batch.num_rows <= 1:
        raise _row_too_large(size, limit)
    rows = max(1, batch.num_rows * budget // size)
    for start in range(0, batch.num_rows, rows):
        yield from fitting_slices(batch.slice(start, rows), limit)


def _row_too_large(size: int, limit: int) -> Exception:
    return limit_exceeded(
        f"a row of this result is {size} bytes as a FlightData message, over "
        f"flight.max_message_size ({limit} bytes): gRPC clients refuse such a message; "
        "raise the limit (and the client's receive limit), select fewer or smaller "
        "columns, or read a whole table over HTTP"
    )


def has_dictionaries(schema: pa.Schema) -> bool:
    """Whether any column, at any depth, is dictionary-encoded."""
    return any(_has_dictionary(field.type) for field in schema)


def _has_dictionary(kind: pa.DataType) -> bool:
    if isinstance(kind, pa.BaseExtensionType):
        return _has_dictionary(kind.storage_type)
    if isinstance(kind, pa.DictionaryType):
        return True
    return any(_has_dictionary(kind.field(i).type) for i in range(kind.num_fields))


def split_message(framed: pa.Buffer) -> tuple[memoryview, pa.Buffer, int]:
    """One IPC message written by pyarrow: its padded flatbuffer, its body, its length.

    Only the 8-byte prefix is read: the body is whatever follows the
    flatbuffer, and ``framed`` must hold exactly one message.
    """
    marker, length = _PREFIX.unpack_from(framed)
    if marker != _CONTINUATION or length < 0 or 8 + length > framed.size:
        raise ValueError("not one IPC message in the current format")
    return memoryview(framed)[8 : 8 + length], framed.slice(8 + length), 8 + length


class FlightDataEncoder:
    """Encode one stream of ``schema``'s batches as FlightData (see the invariants above).

    Messages are uncompressed, metadata version V5 (pyarrow's default options:
    ``RecordBatch.serialize()`` takes none). ``max_message_size`` bounds each
    record batch's FlightData. Use from one thread at a time.
    """

    def __init__(
        self,
        schema: pa.Schema,
        *,
        max_message_size: int | None = None,
    ) -> None:
        self.schema = schema
        self.max_message_size = max_message_size
        self._schema_sent = False
        self._dictionary_sink: IpcSink | None = None
        self._dictionary_writer: pa.ipc.RecordBatchStreamWriter | None = None
        if has_dictionaries(schema):
            self._dictionary_sink = IpcSink()
            self._dictionary_writer = pa.ipc.new_stream(self._dictionary_sink, schema)
        # statistics
        self.messages = 0
        self.batches = 0
        self.dictionaries = 0
        self.rows = 0
        self.bytes = 0

    def encode(self, batch: pa.RecordBatch) -> list[EncodedFlightData]:
        """The messages that carry ``batch``: the schema first time, new dictionaries, the batch.

        A batch over ``max_message_size`` comes as several record batch
        messages. Raises ``limit_exceeded`` if one row does not fit.
        """
        return list(self.iterencode(batch))

    def iterencode(self, batch: pa.RecordBatch) -> Iterator[EncodedFlightData]:
        """``encode``, with each record batch message serialized only when it is reached.

        The checks (schema, the limit) and the schema and dictionary messages
        are done before this returns, so an error comes before any message;
        then at most one record batch message is serialized at a time by the
        iterator, whose messages must all be sent, in order.
        """
        if not batch.schema.equals(self.schema):
            raise ValueError(
                f"a batch of schema {batch.schema} in a stream of schema {self.schema}"
            )
        if self.max_message_size is None:
            pieces = [batch]
        else:  # may raise: then nothing of this batch is returned
            pieces = list(fitting_slices(batch, self.max_message_size))
        head = [] if self._schema_sent else [self._schema_message()]
        if self._dictionary_writer is not None:
            head.extend(self._dictionary_messages(batch))
        return self._serialized(head, pieces)

    def _serialized(
        self, head: list[EncodedFlightData], pieces: list[pa.RecordBatch]
    ) -> Iterator[EncodedFlightData]:
        self._count(head)
        yield from head
        for piece in pieces:
            message = self._batch_message(piece)
            self._count([message])
            yield message

    def finish(self) -> list[EncodedFlightData]:
        """The messages still owed at the end: the schema if no batch came."""
        out = [] if self._schema_sent else [self._schema_message()]
        self._count(out)
        return out

    def statistics(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "batches": self.batches,
            "dictionaries": self.dictionaries,
            "rows": self.rows,
            "bytes": self.bytes,
        }

    # -- internals ----------------------------------------------------------

    def _count(self, messages: list[EncodedFlightData]) -> None:
        for message in messages:
            self.messages += 1
            self.bytes += message.size
            if message.kind == HeaderType.RECORD_BATCH:
                self.batches += 1
                self.rows += message.rows
            elif message.kind == HeaderType.DICTIONARY_BATCH:
                self.dictionaries += 1

    def _schema_message(self) -> EncodedFlightData:
        self._schema_sent = True
        sink = IpcSink()  # the schema message exactly as the stream writer makes it
        pa.ipc.new_stream(sink, self.schema).close()
        header, _, _ = split_message(pa.py_buffer(sink.take()))
        return EncodedFlightData(
            encode_flight_data_prefix(header, None, 0), None, HeaderType.SCHEMA
        )

    def _batch_message(self, batch: pa.RecordBatch) -> EncodedFlightData:
        header, body, _ = split_message(batch.serialize())
        prefix = encode_flight_data_prefix(header, None, body.size)
        return EncodedFlightData(
            prefix, body if body.size else None, HeaderType.RECORD_BATCH, batch.num_rows
        )

    def _dictionary_messages(self, batch: pa.RecordBatch) -> list[EncodedFlightData]:
        """The dictionaries pyarrow's writer would send before ``batch``."""
        writer, sink = self._dictionary_writer, self._dictionary_sink
        assert writer is not None and sink is not None
        writer.write_batch(batch.slice(0, 0))  # its dictionaries, whole, and no rows
        written = pa.py_buffer(sink.take())
        out: list[EncodedFlightData] = []
        position = 0
        while position < written.size:
            header, rest, length = split_message(written.slice(position))
            parsed = parse_message(header)
            position += length + parsed.body_length
            if parsed.header_type == HeaderType.DICTIONARY_BATCH:
                body = rest.slice(0, parsed.body_length)
                prefix = encode_flight_data_prefix(header, None, body.size)
                out.append(
                    EncodedFlightData(
                        prefix, body if body.size else None, HeaderType.DICTIONARY_BATCH
                    )
                )
        return out
