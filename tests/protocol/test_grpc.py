"""gRPC framing, the message decoder and the status helpers: bytes in, events out.

Decoder tests run three ways (the ``mode`` fixture): the whole buffer at once,
one byte at a time, and with trailing bytes (a partial next message).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arrowport.protocol import NEED_DATA, GrpcStatus, RemoteProtocolError
from arrowport.protocol.events import Event
from arrowport.protocol.flight_pb import Ticket
from arrowport.protocol.grpc import (
    GrpcMessage,
    GrpcMessageDecoder,
    GrpcStreamEnded,
    State,
    decode_grpc_message,
    encode_grpc_message,
    frame,
    prefix,
    status_trailers,
)

TRAILING = b"\x00\x00\x00\x00\x09partial"  # a message prefix and 7 of its 9 bytes


@dataclass
class Decoded:
    events: list[Event] = field(default_factory=list)
    error: RemoteProtocolError | None = None
    fed: int = 0  # bytes fed when the decoder stopped
    decoder: GrpcMessageDecoder = field(default_factory=GrpcMessageDecoder)

    @property
    def payloads(self) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, GrpcMessage)]


def _drain(out: Decoded) -> bool:
    """Pull events until NEED_DATA or an error; False once an error was raised."""
    while True:
        try:
            event = out.decoder.next_event()
        except RemoteProtocolError as exc:
            out.error = exc
            return False
        if event is NEED_DATA:
            return True
        assert isinstance(event, Event)
        out.events.append(event)
        if isinstance(event, GrpcStreamEnded):
            return True


def decode(data: bytes, mode: str, *, eof: bool = True, max_message_size: int = 1024) -> Decoded:
    """Feed ``data`` as ``mode`` says, then EOF (not in trailing mode) and drain."""
    out = Decoded(decoder=GrpcMessageDecoder(max_message_size=max_message_size))
    if mode == "bytewise":
        chunks = [data[i : i + 1] for i in range(len(data))]
    elif mode == "trailing":
        chunks, eof = [data + TRAILING], False
    else:
        chunks = [data]
    for chunk in chunks:
        out.decoder.receive_data(chunk)
        out.fed += len(chunk)
        if not _drain(out):
            return out
    if eof:
        out.decoder.receive_data(b"")
        _drain(out)
    return out


PAYLOADS = [b"", b"x", bytes(range(256)) * 3, Ticket(ticket=b"t").encode()]


def test_frame_and_prefix() -> None:
    """frame() is a 0 flag, a 4-byte big-endian length and the payload."""
    assert prefix(0) == b"\x00\x00\x00\x00\x00"
    assert prefix(0x01020304) == b"\x00\x01\x02\x03\x04"
    assert frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    for bad in (-1, 1 << 32):
        with pytest.raises(ValueError):
            prefix(bad)


def test_messages_three_ways(mode: str) -> None:
    """Framed messages come out whole and in order, empty ones too; EOF ends the stream."""
    out = decode(b"".join(frame(p) for p in PAYLOADS), mode)
    assert out.error is None
    assert out.payloads == PAYLOADS
    if mode == "trailing":
        assert not any(isinstance(e, GrpcStreamEnded) for e in out.events)
        assert out.decoder.statistics()["buffered_bytes"] == len(TRAILING) - 5  # prefix read
        assert out.decoder.state is State.MESSAGE
    else:
        assert isinstance(out.events[-1], GrpcStreamEnded)
        assert out.decoder.state is State.DONE
        assert out.decoder.next_event() is NEED_DATA
    stats = out.decoder.statistics()
    assert (stats["messages"], stats["message_bytes"]) == (len(PAYLOADS), sum(map(len, PAYLOADS)))


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_trailing_bytes_then_eof_is_truncation(mode: str) -> None:
    """Bytes after the last whole message that end at EOF are a truncated message."""
    out = decode(frame(b"one") + TRAILING, mode)
    assert out.payloads == [b"one"]
    error = out.error
    assert error is not None
    assert "truncated in a message" in error.detail
    assert error.error == "truncated_stream"
    assert error.grpc_status == GrpcStatus.INVALID_ARGUMENT


@pytest.mark.parametrize("cut", [1, 4, 5, 7])
def test_truncated_at_eof(cut: int) -> None:
    """EOF inside a prefix or a payload raises INVALID_ARGUMENT and leaves the decoder in ERROR."""
    data = frame(b"abc")[:cut]
    for mode in ("whole", "bytewise"):
        out = decode(data, mode)
        assert out.error is not None
        where = "prefix" if cut < 5 else "in a message"
        assert where in out.error.detail
        assert out.error.grpc_status == GrpcStatus.INVALID_ARGUMENT
        assert out.decoder.state is State.ERROR
        with pytest.raises(RemoteProtocolError, match="error state"):
            out.decoder.next_event()


def test_empty_stream_ends_at_once() -> None:
    """A request stream with no message at all is a clean end, not an error."""
    out = decode(b"", "whole")
    assert out.events == [GrpcStreamEnded()]


def test_compressed_flag_is_unimplemented(mode: str) -> None:
    """A compressed message is refused from its prefix, with UNIMPLEMENTED and a hint."""
    data = b"\x01\x00\x00\x00\x03abc"
    out = decode(frame(b"ok") + data, mode)
    assert out.payloads == [b"ok"]
    error = out.error
    assert error is not None
    assert error.grpc_status == GrpcStatus.UNIMPLEMENTED
    assert "compression is not supported; send uncompressed messages" in error.detail
    if mode == "bytewise":
        assert out.fed == len(frame(b"ok")) + 5


@pytest.mark.parametrize("flag", [2, 0x80, 0xFF])
def test_unknown_flag_is_invalid(mode: str, flag: int) -> None:
    """A flag other than 0 or 1 is INVALID_ARGUMENT."""
    out = decode(bytes((flag,)) + b"\x00\x00\x00\x00", mode)
    assert out.error is not None
    assert f"flag 0x{flag:02x}" in out.error.detail
    assert out.error.grpc_status == GrpcStatus.INVALID_ARGUMENT
    assert out.events == []


def test_message_limit_from_the_prefix(mode: str) -> None:
    """A length over the limit is RESOURCE_EXHAUSTED before any payload byte arrives."""
    out = decode(prefix(1025), mode, eof=False)
    error = out.error
    assert error is not None
    assert error.grpc_status == GrpcStatus.RESOURCE_EXHAUSTED
    assert error.error == "limit_exceeded"
    assert "1025 bytes exceeds the limit of 1024" in error.detail


def test_message_limit_is_inclusive(mode: str) -> None:
    """A message exactly at the limit is accepted."""
    out = decode(frame(bytes(1024)), mode)
    assert out.error is None
    assert out.payloads == [bytes(1024)]


def test_accepts_bytearray_and_memoryview() -> None:
    """receive_data takes any bytes-like chunk, including memoryview slices."""
    decoder = GrpcMessageDecoder()
    data = b"__" + frame(b"hello") + b"__"
    decoder.receive_data(bytearray(data[2:5]))
    decoder.receive_data(memoryview(data)[5:-2])
    assert decoder.next_event() == GrpcMessage(data=b"hello")
    assert decoder.next_event() is NEED_DATA


# -- grpc-message ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("hello world", "hello world"),
        ("50% off", "50%25 off"),
        ("é", "%C3%A9"),
        ("a\nb\tc\r", "a%0Ab%09c%0D"),
        ("~ \x7f", "~ %7F"),
        ("日本", "%E6%97%A5%E6%9C%AC"),
        ("", ""),
    ],
)
def test_grpc_message_percent_encoding(text: str, encoded: str) -> None:
    """grpc-message escapes '%' and every UTF-8 byte outside 0x20-0x7E as %XX."""
    assert encode_grpc_message(text) == encoded
    assert decode_grpc_message(encoded) == text
    assert decode_grpc_message(encoded.encode("ascii")) == text


@pytest.mark.parametrize(
    ("value", "decoded"),
    [("100%", "100%"), ("%zz", "%zz"), ("%4", "%4"), ("%e9", "\ufffd"), ("%41%42", "AB")],
)
def test_grpc_message_decoding_is_lenient(value: str, decoded: str) -> None:
    """Malformed escapes and bad UTF-8 are kept or replaced, never an error."""
    assert decode_grpc_message(value) == decoded


def test_grpc_message_never_fails_on_lone_surrogates() -> None:
    """A lone surrogate (not encodable as UTF-8) still yields a valid header value."""
    encoded = encode_grpc_message("bad \udcff name")
    assert encoded.isascii()
    assert decode_grpc_message(encoded) == "bad \\udcff name"
    assert decode_grpc_message("\ud800") == "\ufffd\ufffd\ufffd"


@given(st.text())
def test_grpc_message_round_trip(text: str) -> None:
    """Any text survives encode/decode, and the encoding is printable ASCII only."""
    encoded = encode_grpc_message(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert decode_grpc_message(encoded) == text


def test_status_trailers() -> None:
    """Trailers carry grpc-status as decimal ASCII and the percent-encoded grpc-message."""
    assert status_trailers(3, "bad 50%\n") == [
        (b"grpc-status", b"3"),
        (b"grpc-message", b"bad 50%25%0A"),
    ]
    assert status_trailers(GrpcStatus.UNIMPLEMENTED, "x") == [
        (b"grpc-status", b"12"),
        (b"grpc-message", b"x"),
    ]
    assert status_trailers(GrpcStatus.OK, "") == [(b"grpc-status", b"0")]


# -- grpc-timeout ----------------------------------------------------------------


def test_prefix_layout_is_big_endian() -> None:
    """The length in the prefix is big-endian, as in the gRPC HTTP/2 spec."""
    assert struct.unpack(">BI", prefix(300)) == (0, 300)
