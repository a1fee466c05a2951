"""The invariant of the whole-request fuzzer: a request through the protocol layer.

An input is one request. Its first byte picks the transport (even: an HTTP
``POST /streams/{stream}`` body, odd: a Flight ``DoPut``), the rest is what
the client sends: an Arrow IPC stream, or gRPC-framed ``FlightData``.
:func:`run` drives it through the same sequence as the server, without trio
or storage:

* HTTP (``io/http.py`` -> ``io/ingest.py``): ``IPCStreamDecoder(validate=False)``;
  every ``BatchReceived`` goes through ``validate_batch`` before it is queued
  for the writer; bytes after ``StreamEnded`` are ``trailing_data``.
* Flight (``io/flight.py`` ``do_put``): ``FlightDataDecoder(validate=False)``
  read until its first event, which must be a ``DescriptorReceived``
  (``_first_descriptor``); then ``descriptor_target``, ``descriptor_backend``,
  ``Config.route`` or ``Config.table_route`` and ``validate_idempotency_key``, or
  ``metadata_idempotency_key`` on the first event after the schema;
  then the same ingest loop.

Invariant, fed whole, byte by byte and split at (seeded) random points:

1. The request is accepted (a schema, validated batches, a clean end), or it
   fails with an ``ArrowportError`` whose HTTP status is 400 or 413 and whose
   gRPC status, as the adapter maps it (``io.status.grpc_status``), is
   INVALID_ARGUMENT, RESOURCE_EXHAUSTED or UNIMPLEMENTED (never INTERNAL). A
   decoder that raised stays in ``ERROR``.
2. All feedings agree (events, error and where it came from).
3. The ingest loop cannot block or commit a broken stream: at most
   ``queue_depth`` events wait for the writer before ``SchemaReceived``
   starts it; one schema, before any batch; every batch has the stream's
   schema; ``StreamEnded`` comes before the body ends; no ``NEED_DATA`` after
   EOF (``_first_descriptor`` would spin, ingest would commit).
4. Moving validation off the decoder changes nothing: decoding the same bytes
   with ``validate=True`` emits as many batches and fails with the same error
   code (or, when the request failed on bytes after the end marker, succeeds
   with trailing bytes).
5. The storage type plans take every schema the decoder accepts (a plan, or a 422),
   and 6. converting any validated batch for any backend gives a fully valid batch of
   the plan's target schema, or a 422 (``storage/typemap.py``).

Any other exception, or a violation (:class:`InvariantViolation`), is a bug.
Known bugs that are not fixed yet are listed in :data:`KNOWN_BUGS`; setting
``ARROWPORT_FUZZ_TOLERATE`` to ``all`` (or to a comma-separated list of their
names) lets long runs and CI go past them, while ``test_fuzz_regressions.py``
keeps a strict, xfail-marked test for each.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from flight_invariant import LIMITS as FLIGHT_LIMITS
from flight_invariant import InvariantViolation, _Field, _Message, _random_split, _summary, from_ipc
from flight_invariant import join as flight_join
from flight_invariant import mutate as flight_mutate
from flight_invariant import split as flight_split
from ipc_invariant import GOLDEN_DIR
from ipc_invariant import LIMITS as IPC_LIMITS
from ipc_invariant import mutate as ipc_mutate

from arrowport.config import Config
from arrowport.io.ingest import missing_eos_error, trailing_data_error
from arrowport.io.status import grpc_status, http_status
from arrowport.names import validate_idempotency_key
from arrowport.protocol import (
    NEED_DATA,
    ArrowportError,
    BatchReceived,
    GrpcStatus,
    IPCStreamDecoder,
    RemoteProtocolError,
    SchemaReceived,
    StreamEnded,
)
from arrowport.protocol.flight import DescriptorReceived, FlightDataDecoder, MetadataReceived
from arrowport.protocol.flight_descriptors import (
    bad_request,
    descriptor_backend,
    descriptor_target,
    metadata_idempotency_key,
)
from arrowport.protocol.flight_pb import DESCRIPTOR_CMD, DESCRIPTOR_PATH, WIRE_LEN, FlightDescriptor
from arrowport.protocol.messages import validate_batch
from arrowport.storage import typemap
from arrowport.storage.typemap import TypePlan

__all__ = ["KNOWN_BUGS", "InvariantViolation", "Outcome", "check", "mutate", "run", "seeds"]

HTTP, FLIGHT = "http", "flight"
HTTP_STREAM = "fuzz"  # the {stream} of the HTTP request's URL
CONFIG = Config()  # defaults: any valid stream name routes to a table of its own name
QUEUE_DEPTH = CONFIG.limits.queue_depth
_STATUSES = {GrpcStatus.INVALID_ARGUMENT, GrpcStatus.RESOURCE_EXHAUSTED, GrpcStatus.UNIMPLEMENTED}

# Bugs found by this harness and not fixed yet: name -> what goes wrong. When one is
# fixed, delete its entry and its xfail marker in tests/protocol/test_fuzz_regressions.py.
KNOWN_BUGS: dict[str, str] = {}  # (both found so far are fixed; see test_fuzz_regressions.py)


def tolerated(value: str | None = None) -> frozenset[str]:
    """The known bugs ``ARROWPORT_FUZZ_TOLERATE`` (or ``value``) tells the invariant to pass."""
    value = os.environ.get("ARROWPORT_FUZZ_TOLERATE", "") if value is None else value
    names = {n.strip() for n in value.split(",") if n.strip()}
    if "all" in names:
        return frozenset(KNOWN_BUGS)
    unknown = names - set(KNOWN_BUGS)
    if unknown:
        raise ValueError(f"ARROWPORT_FUZZ_TOLERATE names no known bug: {sorted(unknown)}")
    return frozenset(names)


class _KnownBug(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class Outcome:
    """What one feeding of a request produced, comparable across feedings."""

    transport: str
    events: tuple[tuple[object, ...], ...]
    error: tuple[str, int, int] | None  # (error code, HTTP status, gRPC status)
    stage: str | None  # where the error came from: decoder, validate, request or known_bug

    @property
    def parsed(self) -> bool:
        return self.error is None

    @property
    def batches(self) -> int:
        return sum(1 for e in self.events if e[0] == "batch")


def split_request(data: bytes) -> tuple[str, bytes]:
    """The transport the first byte picks, and the body."""
    if not data:
        return HTTP, b""
    return (FLIGHT if data[0] & 1 else HTTP), data[1:]


def request(transport: str, body: bytes) -> bytes:
    """The input that sends ``body`` over ``transport``."""
    return bytes((1 if transport == FLIGHT else 0,)) + body


class _Request:
    """One request, driven as ``do_put``/the HTTP route and ``ingest`` drive it."""

    def __init__(self, transport: str, tolerate: frozenset[str]) -> None:
        self.transport = transport
        self.tolerate = tolerate
        self.events: list[tuple[object, ...]] = []
        self.stage = "request"
        self.decoder: IPCStreamDecoder | FlightDataDecoder
        if transport == FLIGHT:
            self.decoder = FlightDataDecoder(**FLIGHT_LIMITS, validate=False)
        else:
            self.decoder = IPCStreamDecoder(**IPC_LIMITS, validate=False)
        self.eof = False  # b"" was fed
        self.schema = None
        self.queued = 0  # events queued before the writer started
        self.ended = False
        self.key_in_metadata = False  # DoPut without a key: the event after the schema may name it
        self.plans: dict[str, TypePlan] = {}  # the stream's type plan per backend that takes it

    def _bug(self, name: str, detail: str) -> None:
        if name not in self.tolerate:
            raise InvariantViolation(f"[known bug {name}] {detail}")

    def _feed(self, chunk: bytes) -> None:
        self.eof = self.eof or not chunk
        self.decoder.receive_data(chunk)

    def _next(self) -> object:
        try:
            return self.decoder.next_event()
        except ArrowportError as exc:
            self.stage = "decoder"
            if not isinstance(exc, RemoteProtocolError):
                raise InvariantViolation(f"next_event raised the local kind: {exc!r}") from exc
            if self.decoder.state.name != "ERROR":
                raise InvariantViolation(f"decoder in {self.decoder.state} after {exc!r}") from exc
            raise

    def run(self, chunks: Iterator[bytes]) -> None:
        if self.transport == FLIGHT:
            descriptor = self._first_descriptor(chunks)
            try:
                name, key = descriptor_target(descriptor)
            except RecursionError:
                self._bug("descriptor_json_recursion", f"RecursionError for {descriptor!r:.200}")
                raise _KnownBug("descriptor_json_recursion") from None
            table, backend = descriptor_backend(descriptor)
            if table is not None:  # as ListFlights describes tables
                CONFIG.table_route(table, backend or CONFIG.storage_backend)
            else:
                CONFIG.route(name)
            if key is not None:
                validate_idempotency_key(key)
            self.key_in_metadata = key is None
        else:
            CONFIG.route(HTTP_STREAM)
        self._ingest(chunks)

    def _first_descriptor(self, chunks: Iterator[bytes]) -> FlightDescriptor:
        """``io/flight.py``'s ``_first_descriptor``: read until the first event."""
        while True:
            event = self._next()
            if isinstance(event, DescriptorReceived):
                self.events.append(_summary(event))
                return event.descriptor
            if event is not NEED_DATA:
                raise bad_request(
                    "DoPut's first FlightData must carry a FlightDescriptor naming the stream"
                )
            if self.eof:
                raise InvariantViolation("NEED_DATA after EOF: _first_descriptor would spin")
            self._feed(next(chunks, b""))

    def _ingest(self, chunks: Iterator[bytes]) -> None:
        """``io/ingest.py``'s ``ingest``: drain, then each chunk, then EOF."""
        self._drain()
        for chunk in (*chunks, b""):
            if self.ended:
                if chunk:
                    raise trailing_data_error()
                continue
            self._feed(chunk)
            self._drain()
        if not self.ended:
            raise InvariantViolation("the body ended without StreamEnded: ingest would commit it")

    def _queue(self, what: str) -> None:
        """ingest keeps app_metadata that arrives before the schema outside the queue (there
        is no writer yet to take it), so nothing can block here."""

    def _drain(self) -> None:
        while True:
            event = self._next()
            if event is NEED_DATA:
                if self.eof and self.decoder.state.name != "DONE":
                    raise InvariantViolation(f"NEED_DATA after EOF in {self.decoder.state}")
                return
            if self.ended:
                raise InvariantViolation(f"{event!r:.200} after StreamEnded")
            if not isinstance(event, BatchReceived):  # a batch counts once it is validated
                self.events.append(_summary(event))  # type: ignore[arg-type]
            if self.schema is not None and self.key_in_metadata:  # the writer starts here
                self.key_in_metadata = False
                if isinstance(event, BatchReceived | MetadataReceived):
                    metadata_idempotency_key(event.app_metadata)
            if isinstance(event, SchemaReceived):
                if self.schema is not None:  # a second writer would wait for the table lock
                    raise InvariantViolation("a second SchemaReceived")
                self.schema = event.schema
                self.plans = _type_plans(event.schema)
            elif isinstance(event, BatchReceived):
                if self.schema is None:
                    raise InvariantViolation("a BatchReceived before the schema")
                if not event.batch.schema.equals(self.schema, check_metadata=True):
                    raise InvariantViolation("a batch whose schema is not the stream's")
                self.stage = "validate"
                validate_batch(event.batch)
                self.stage = "request"
                _check_conversions(self.plans, event.batch)
                self.events.append(_summary(event))
                self._queue("batch")
            elif isinstance(event, MetadataReceived):
                self._queue("app_metadata")
            elif isinstance(event, StreamEnded):
                if self.schema is None:
                    raise InvariantViolation("StreamEnded before any schema")
                if self.transport == HTTP and not event.eos_marker:  # limits.require_eos_marker
                    raise missing_eos_error("request")
                self.ended = True
                trailing, _ = self.decoder.trailing_data
                if trailing:
                    raise trailing_data_error()
            elif not isinstance(event, DescriptorReceived):  # ingest ignores later descriptors
                raise InvariantViolation(f"unexpected event {event!r:.200}")


BACKENDS = ("duckdb", "ducklake", "delta")


def _type_plans(schema: pa.Schema) -> dict[str, TypePlan]:
    """5. The storage type plans (``storage/typemap.py``) take any schema the decoder
    accepts: a plan, or a 422 (``ArrowportError``) naming what no backend stores."""
    plans = {}
    for backend in BACKENDS:
        try:
            plans[backend] = typemap.plan(schema, backend)
        except ArrowportError as exc:
            if http_status(exc) != 422:
                raise InvariantViolation(f"type plan {backend}: {exc!r}") from exc
        except Exception as exc:
            raise InvariantViolation(f"type plan {backend} raised {exc!r}") from exc
    return plans


def _check_conversions(plans: dict[str, TypePlan], batch: pa.RecordBatch) -> None:
    """6. Converting a validated batch gives a valid batch of the plan's target schema,
    or a 422; the engines never see anything else."""
    for backend, plan in plans.items():
        try:
            converted = plan.convert(batch)
        except ArrowportError as exc:
            if http_status(exc) != 422:
                raise InvariantViolation(f"convert {backend}: {exc!r}") from exc
            continue
        except Exception as exc:
            raise InvariantViolation(f"convert {backend} raised {exc!r}") from exc
        if not converted.schema.equals(plan.target):
            raise InvariantViolation(f"convert {backend}: not the plan's target schema")
        try:
            converted.validate(full=True)
        except pa.ArrowException as exc:
            raise InvariantViolation(f"convert {backend} made an invalid batch: {exc}") from exc


def run(transport: str, chunks: Iterable[bytes], tolerate: frozenset[str] | None = None) -> Outcome:
    """Send ``chunks`` (then EOF) as one request over ``transport``; return the outcome."""
    req = _Request(transport, tolerated() if tolerate is None else tolerate)
    try:
        req.run(c for c in chunks if c)  # the transports never hand ingest an empty chunk
    except _KnownBug as bug:
        return Outcome(transport, tuple(req.events), (bug.name, 0, 0), "known_bug")
    except ArrowportError as exc:
        http, status = http_status(exc), grpc_status(exc)
        if http not in (400, 413) or status not in _STATUSES:
            raise InvariantViolation(f"bad status: {exc!r} -> {status!r}") from exc
        error = (exc.error, http, int(status))
        return Outcome(transport, tuple(req.events), error, req.stage)
    return Outcome(transport, tuple(req.events), None, None)


@dataclass(frozen=True)
class Reference:
    batches: int
    error: str | None
    trailing: bool


def reference(transport: str, body: bytes) -> Reference:
    """The decoder alone, with ``validate=True``, on the whole body."""
    decoder: IPCStreamDecoder | FlightDataDecoder
    if transport == FLIGHT:
        decoder = FlightDataDecoder(**FLIGHT_LIMITS)
    else:
        decoder = IPCStreamDecoder(**IPC_LIMITS)
    batches = 0
    try:
        decoder.receive_data(body)
        decoder.receive_data(b"")
        while (event := decoder.next_event()) is not NEED_DATA:
            batches += isinstance(event, BatchReceived)
    except RemoteProtocolError as exc:
        return Reference(batches, exc.error, False)
    return Reference(batches, None, bool(decoder.trailing_data[0]))


def _differential(body: bytes, outcome: Outcome) -> None:
    error = outcome.error
    beside = outcome.stage not in ("decoder", "validate")
    if error is not None and beside and error[0] != "trailing_data":
        return  # refused beside the decoder (descriptor, name, key): nothing to compare
    ref = reference(outcome.transport, body)
    if outcome.error is None:
        expected = Reference(outcome.batches, None, False)
    elif outcome.error[0] == "trailing_data":
        expected = Reference(outcome.batches, None, True)
    else:
        expected = Reference(outcome.batches, outcome.error[0], False)
    if ref != expected:
        raise InvariantViolation(f"validate=True decoding gives {ref}, the request {expected}")


def check(data: bytes, tolerate: frozenset[str] | None = None) -> Outcome:
    """Check the invariant on request ``data``; return the (agreed) outcome."""
    transport, body = split_request(data)
    whole = run(transport, [body], tolerate)
    for how, chunks in (
        ("byte by byte", (body[i : i + 1] for i in range(len(body)))),
        ("split", _random_split(body)),
    ):
        other = run(transport, chunks, tolerate)
        if other != whole:
            raise InvariantViolation(f"whole {whole} != {how} {other}")
    _differential(body, whole)
    return whole


# -- seeds -----------------------------------------------------------------------


def seeds(
    golden_dir: Path = GOLDEN_DIR, streams: dict[str, bytes] | None = None
) -> dict[str, bytes]:
    """Each golden IPC stream (or each of ``streams``) as an HTTP body and as a
    DoPut naming a valid stream.

    The DoPuts vary the descriptor (a path, a plain cmd, a JSON cmd with an
    idempotency key, a JSON Delta table cmd) and attach app_metadata to every
    other one.
    """
    if streams is None:
        streams = {p.stem: p.read_bytes() for p in sorted(golden_dir.glob("*.arrows"))}
    out = {}
    for i, (name, data) in enumerate(streams.items()):
        stem = re.sub(r"[^A-Za-z0-9_]", "_", name)  # a valid stream name
        out[f"http_{name}"] = request(HTTP, data)
        if i % 4 == 0:
            descriptor = FlightDescriptor(type=DESCRIPTOR_PATH, path=(f"fuzz_{stem}",))
        elif i % 4 == 1:
            descriptor = FlightDescriptor(type=DESCRIPTOR_CMD, cmd=stem.encode())
        else:
            spec = {"stream": stem, "idempotency_key": f"key-{i}"}
            if i % 4 == 3:  # the descriptor ListFlights gives a Delta table
                spec = {"table": stem, "backend": "delta"}
            descriptor = FlightDescriptor(type=DESCRIPTOR_CMD, cmd=json.dumps(spec).encode())
        out[f"flight_{name}"] = request(FLIGHT, from_ipc(data, descriptor, i % 2 == 0))
    return out


# -- structure-aware mutation ------------------------------------------------------

_PATHS = ((), ("a", "b"), ("",), ("1st",), ("x" * 129,), ("naïve",), ("bad name",), ("t",))
_KEYS = ("k", "", "a b", "x" * 257, "é", 5, None, ["k"], "k" * 256)
_CMDS = (b"", b"t", b"bad name", b"\xff\xfe", b" {", b"{", b"[1]", b"null", b'"t"', b"{}",
         b'{"stream": 7}', b'{"stream": "t", "idempotency_key": "k"}', b"\x00",
         b'{"table": "t", "backend": "delta"}', b'{"table": "t", "backend": "duckdb"}',
         b'{"table": 1, "backend": "delta"}', b'{"backend": "x"}', b'{"table": "1t"}')  # fmt: skip


def _nested_json(rng: random.Random) -> bytes:
    depth = rng.choice((2, 10, 100, 500, 1000, 3000))
    if rng.random() < 0.5:
        inner = b"[" * depth + b"]" * depth * rng.randrange(2)
    else:
        inner = b'{"a":' * depth + b"1" + b"}" * depth * rng.randrange(2)
    return b'{"stream": "t", "x": ' + inner + b"}"


def _descriptor(rng: random.Random) -> bytes:
    """A descriptor the server must refuse or accept cleanly (encoded)."""
    what = rng.randrange(5)
    if what == 0:
        return FlightDescriptor(type=DESCRIPTOR_PATH, path=rng.choice(_PATHS)).encode()
    if what == 1:
        key = rng.choice(_KEYS)
        cmd = json.dumps({"stream": rng.choice(("t", "", "1", 3)), "idempotency_key": key})
        return FlightDescriptor(type=DESCRIPTOR_CMD, cmd=cmd.encode()).encode()
    if what == 2:
        return FlightDescriptor(type=DESCRIPTOR_CMD, cmd=_nested_json(rng)).encode()
    if what == 3:  # not UTF-8 in a string field, an unknown type, both cmd and path
        return rng.choice((b"\x08\x01\x1a\x01\xff", b"\x08\x07\x12\x01t", b"\x12\x01t\x1a\x01u"))
    return FlightDescriptor(type=DESCRIPTOR_CMD, cmd=rng.choice(_CMDS)).encode()


def _mutate_descriptor(body: bytes, rng: random.Random) -> bytes:
    """Replace (or drop, or add) the first message's descriptor."""
    messages, rest = flight_split(body)
    if not messages or messages[0].raw is not None:
        return body
    fields = messages[0].fields
    fields[:] = [f for f in fields if f.number != 1]
    if rng.random() < 0.95:
        fields.insert(0, _Field(1, WIRE_LEN, bytearray(_descriptor(rng))))
    return flight_join(messages, rest)


def _metadata_first(body: bytes, rng: random.Random) -> bytes:
    """Put app_metadata-only messages right after the descriptor, before the schema."""
    count = rng.choice((1, QUEUE_DEPTH, QUEUE_DEPTH + 1, 3 * QUEUE_DEPTH))
    meta = [_Message(fields=[_Field(3, WIRE_LEN, bytearray(b"m%d" % i))]) for i in range(count)]
    messages, rest = flight_split(body)
    if messages and messages[0].raw is None:
        first = messages[0]
        descriptor = [f for f in first.fields if f.number == 1]
        if descriptor and len(descriptor) < len(first.fields):  # move it to a message of its own
            first.fields = [f for f in first.fields if f.number != 1]
            messages.insert(0, _Message(fields=descriptor))
        messages[1:1] = meta
    else:
        messages[:0] = meta
    return flight_join(messages, rest)


def mutate(data: bytes, rng: random.Random, donors: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """One structure-aware mutation of a request (its body, its descriptor or its transport)."""
    transport, body = split_request(data)
    same = [split_request(d)[1] for d in donors if split_request(d)[0] == transport]
    roll = rng.random()
    if roll < 0.01:  # the other transport, same bytes
        return request(HTTP if transport == FLIGHT else FLIGHT, body)
    if transport == HTTP:
        return request(HTTP, ipc_mutate(body, rng, same))
    if roll < 0.12:
        return request(FLIGHT, _mutate_descriptor(body, rng))
    if roll < 0.15:
        return request(FLIGHT, _metadata_first(body, rng))
    return request(FLIGHT, flight_mutate(body, rng, same))
