"""The invariant every IPC fuzzer checks, and structure-aware mutations.

Invariant: fed whole or one byte at a time, any input either decodes (events
then ``StreamEnded``) or makes ``next_event`` raise a ``RemoteProtocolError``
with a 400 or 413 status, after which the decoder stays in ``ERROR``. Both
feedings must agree. Any other exception, a decoder that wants data after EOF
(it would hang) or a disagreement is a bug: :func:`check` lets the exception
through or raises :class:`InvariantViolation`.

:func:`mutate` rewrites an IPC stream message by message (metadata, bodies,
buffer specs, whole messages), so mutants get past the framing and reach
pyarrow. The atheris harness and the bounded CI fuzz test share both.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from arrowport.protocol import (
    NEED_DATA,
    BatchReceived,
    Event,
    IPCStreamDecoder,
    ProtocolError,
    RemoteProtocolError,
    SchemaReceived,
    State,
    StreamEnded,
)
from arrowport.protocol._flatbuf import parse_message

MiB = 1024 * 1024
LIMITS: dict[str, int] = {
    "max_metadata_size": 1 * MiB,
    "max_body_size": 8 * MiB,
    "max_decompressed_size": 32 * MiB,
    "max_dictionary_bytes": 8 * MiB,
    "max_nesting_depth": 32,
    "max_columns": 2_000,
    "max_batch_rows": 1 << 20,
}
CONTINUATION = b"\xff\xff\xff\xff"
GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "protocol" / "golden"


class InvariantViolation(AssertionError):
    """The decoder broke the fuzzing invariant."""


@dataclass(frozen=True)
class Outcome:
    """What one feeding produced, comparable across feedings."""

    events: tuple[tuple[object, ...], ...]
    error: tuple[str, int] | None  # (error code, HTTP status)
    trailing: bytes | None

    @property
    def parsed(self) -> bool:
        return self.error is None


def _summary(event: Event) -> tuple[object, ...]:
    if isinstance(event, SchemaReceived):
        return ("schema", event.schema)
    if isinstance(event, BatchReceived):
        batch = event.batch
        return ("batch", batch.num_rows, batch.num_columns, event.wire_bytes, event.decoded_bytes)
    if isinstance(event, StreamEnded):
        return ("end", event.eos_marker)
    raise InvariantViolation(f"unknown event {event!r}")


def _drain(decoder: IPCStreamDecoder, events: list[tuple[object, ...]], eof: bool) -> None:
    while True:
        event = decoder.next_event()
        if event is NEED_DATA:
            if eof and decoder.state is not State.DONE:
                raise InvariantViolation(f"NEED_DATA after EOF in state {decoder.state}")
            return
        if events and events[-1][0] == "end":
            raise InvariantViolation("an event after StreamEnded")
        if not isinstance(event, Event):
            raise InvariantViolation(f"next_event returned {event!r}")
        events.append(_summary(event))


def run(chunks: Iterable[bytes], limits: dict[str, int] | None = None) -> Outcome:
    """Feed ``chunks`` then EOF, draining events after each; return the outcome."""
    decoder = IPCStreamDecoder(**(LIMITS if limits is None else limits))
    events: list[tuple[object, ...]] = []
    try:
        for chunk in chunks:
            if chunk:
                decoder.receive_data(chunk)
                _drain(decoder, events, eof=False)
        decoder.receive_data(b"")
        _drain(decoder, events, eof=True)
    except ProtocolError as exc:
        if not isinstance(exc, RemoteProtocolError):
            raise InvariantViolation(f"next_event raised the local kind: {exc!r}") from exc
        if exc.http_status not in (400, 413) or decoder.state is not State.ERROR:
            raise InvariantViolation(f"bad error state: {exc!r}, {decoder.state}") from exc
        try:
            decoder.next_event()
        except RemoteProtocolError:
            pass
        else:
            raise InvariantViolation("the decoder left ERROR") from exc
        return Outcome(tuple(events), (exc.error, exc.http_status), None)
    if not events or events[-1][0] != "end":
        raise InvariantViolation("decoding ended without StreamEnded")
    return Outcome(tuple(events), None, decoder.trailing_data[0])


def check(data: bytes, limits: dict[str, int] | None = None) -> Outcome:
    """Check the invariant on ``data``; return the (agreed) outcome."""
    whole = run([data], limits)
    bytewise = run((data[i : i + 1] for i in range(len(data))), limits)
    if whole != bytewise:
        raise InvariantViolation(f"whole {whole} != byte by byte {bytewise}")
    return whole


def seeds(golden_dir: Path = GOLDEN_DIR) -> dict[str, bytes]:
    """The golden IPC streams, by name: the IPC harness's seed corpus."""
    return {path.stem: path.read_bytes() for path in sorted(golden_dir.glob("*.arrows"))}


# -- structure-aware mutation --------------------------------------------------


@dataclass
class _Message:
    metadata: bytearray
    body: bytearray
    legacy: bool


def split(data: bytes) -> tuple[list[_Message], bytes]:
    """Split ``data`` into messages as far as it frames cleanly; return them and the rest."""
    messages, pos = [], 0
    while pos + 4 <= len(data):
        legacy = data[pos : pos + 4] != CONTINUATION
        start = pos + (0 if legacy else 4)
        if start + 4 > len(data):
            break
        (length,) = struct.unpack_from("<i", data, start)
        end = start + 4 + length
        if length <= 0 or end > len(data):
            break
        metadata = data[start + 4 : end]
        try:
            body_length = parse_message(metadata).body_length
        except ProtocolError:
            break
        if end + body_length > len(data):
            break
        messages.append(
            _Message(bytearray(metadata), bytearray(data[end : end + body_length]), legacy)
        )
        pos = end + body_length
    return messages, data[pos:]


def join(messages: Iterable[_Message], rest: bytes = b"") -> bytes:
    out = bytearray()
    for m in messages:
        out += (b"" if m.legacy else CONTINUATION) + struct.pack("<i", len(m.metadata))
        out += m.metadata + m.body
    return bytes(out + rest)


_INTERESTING = (0, 1, -1, 2, 7, 8, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 2**31 - 1, -(2**31), 2**32 - 1,
                2**63 - 1, -(2**63), 1 << 20, 1 << 40)  # fmt: skip


def _poke(buf: bytearray, rng: random.Random) -> None:
    """Overwrite one place in ``buf`` with a random byte, bit flip or interesting integer."""
    if not buf:
        return
    pos = rng.randrange(len(buf))
    what = rng.randrange(3)
    if what == 0:
        buf[pos] = rng.randrange(256)
    elif what == 1:
        buf[pos] ^= 1 << rng.randrange(8)
    else:
        fmt = rng.choice(("<b", "<h", "<i", "<q"))
        size = struct.calcsize(fmt)
        pos -= pos % size
        if pos + size <= len(buf):
            value = rng.choice(_INTERESTING)
            lo, hi = -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1
            struct.pack_into(fmt, buf, pos, max(lo, min(hi, value)))


def _poke_buffer_spec(m: _Message, rng: random.Random) -> None:
    """Change one buffer's offset or length, or a compressed buffer's length prefix."""
    try:
        header = parse_message(bytes(m.metadata))
    except ProtocolError:
        return
    if header.batch is None or not header.batch.buffers:
        return
    index = rng.randrange(len(header.batch.buffers))
    try:
        spec = header.batch.buffers[index]  # read on demand: may be malformed
    except ProtocolError:
        return
    prefix_fits = spec.length >= 8 and spec.offset + 8 <= len(m.body)
    if header.batch.codec is not None and prefix_fits and rng.random() < 0.5:
        value = rng.choice((-1, -2, 0, 1, spec.length * 1000, 2**40, rng.randrange(1 << 16)))
        struct.pack_into("<q", m.body, spec.offset, min(value, 2**63 - 1))
        return
    # find the spec in the metadata: the 16 bytes (offset, length) as written
    needle = struct.pack("<qq", spec.offset, spec.length)
    at = bytes(m.metadata).find(needle)
    if at >= 0:
        value = rng.choice((0, 1, 7, 8, spec.length + 8, len(m.body), 1 << 30, -8))
        struct.pack_into("<q", m.metadata, at + rng.choice((0, 8)), min(value, 2**63 - 1))


def mutate(data: bytes, rng: random.Random, donors: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """One to three structure-aware mutations of ``data``."""
    messages, rest = split(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(11)
        if not messages or op == 0:  # raw bytes anywhere
            buf = bytearray(join(messages, rest))
            for _ in range(rng.randint(1, 4)):
                _poke(buf, rng)
            messages, rest = split(bytes(buf))
            if not messages:
                return bytes(buf)
            continue
        m = rng.choice(messages)
        if op in (1, 2):
            _poke(m.metadata, rng)
        elif op in (3, 4):
            _poke(m.body, rng)
        elif op == 5:
            _poke_buffer_spec(m, rng)
        elif op == 6:  # drop, duplicate or swap messages
            i, j = rng.randrange(len(messages)), rng.randrange(len(messages))
            choice = rng.randrange(3)
            if choice == 0:
                del messages[i]
            elif choice == 1:
                messages.insert(j, _Message(bytearray(m.metadata), bytearray(m.body), m.legacy))
            else:
                messages[i], messages[j] = messages[j], messages[i]
        elif op == 7 and donors:  # splice in a message from another stream
            others, _ = split(rng.choice(donors))
            if others:
                messages.insert(rng.randrange(len(messages) + 1), rng.choice(others))
        elif op == 8:  # truncate the stream
            raw = join(messages, rest)
            return raw[: rng.randrange(len(raw) + 1)]
        elif op == 9:  # truncate or pad one message's metadata or body
            part = rng.choice((m.metadata, m.body))
            if part and rng.random() < 0.5:
                del part[rng.randrange(len(part)) :]
            else:
                part += bytes(rng.choice((1, 3, 8, 64)))
        else:  # trailing bytes, or drop the end marker
            rest = rest[: -rng.choice((4, 8))] if rest else rng.randbytes(rng.randint(1, 12))
    return join(messages, rest)
