"""gRPC message framing and status helpers (the gRPC-over-HTTP/2 spec's wire level).

Invariants:

* Every gRPC message is a 5-byte prefix (a compressed flag, then a 4-byte
  big-endian length) and the payload. Arrowport neither sends nor accepts
  compressed messages: a flag of 1 is UNIMPLEMENTED, any other flag but 0 is
  INVALID_ARGUMENT.
* ``GrpcMessageDecoder`` is a push decoder for small unary and control
  messages, not bulk data: ``receive_data(b"")`` means EOF; ``next_event()``
  returns ``GrpcMessage``, ``NEED_DATA`` or, at EOF on a message boundary,
  ``GrpcStreamEnded``, and never blocks. A message length over the limit is
  refused from the prefix alone, before the payload is buffered. Errors come
  out of ``next_event()`` as ``RemoteProtocolError`` and leave the decoder in
  ``ERROR`` for good.
* ``grpc-message`` values are percent-encoded UTF-8; decoding never fails (a
  malformed escape is kept as it is).
* ``grpc-timeout`` is 1 to 8 ASCII digits and one unit (H M S m u n);
  ``parse_timeout`` returns seconds, and refuses anything else as
  INVALID_ARGUMENT (the spec leaves a malformed value's answer open; grpc-go
  refuses it too, rather than run the call without the deadline its client
  meant).
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

from .errors import GrpcStatus, LocalProtocolError, RemoteProtocolError, invalid, limit_exceeded
from .events import NEED_DATA, Event, _NeedData
from .input import InputBuffer

MiB = 1024 * 1024
PREFIX_SIZE = 5
_PREFIX = struct.Struct(">BI")
_MAX_LENGTH = (1 << 32) - 1


def prefix(length: int) -> bytes:
    """The 5-byte prefix of an uncompressed message of ``length`` bytes."""
    if not 0 <= length <= _MAX_LENGTH:
        raise ValueError(f"gRPC message length {length} does not fit in 32 bits")
    return _PREFIX.pack(0, length)


def frame(payload: bytes) -> bytes:
    """``payload`` framed as one uncompressed gRPC message."""
    return prefix(len(payload)) + payload


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcMessage(Event):
    """One whole gRPC message arrived (its payload, without the prefix)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcStreamEnded(Event):
    """The request stream ended on a message boundary."""


class State(enum.Enum):
    PREFIX = enum.auto()
    MESSAGE = enum.auto()
    DONE = enum.auto()
    ERROR = enum.auto()


class _Input(enum.Enum):
    PREFIX = enum.auto()  # a prefix was read and checked
    MESSAGE = enum.auto()  # a whole message was read
    CLEAN_EOF = enum.auto()  # EOF on a message boundary


_TRANSITIONS: dict[tuple[State, _Input], State] = {
    (State.PREFIX, _Input.PREFIX): State.MESSAGE,
    (State.PREFIX, _Input.CLEAN_EOF): State.DONE,
    (State.MESSAGE, _Input.MESSAGE): State.PREFIX,
}


def compression_unsupported() -> LocalProtocolError:
    """A compressed message: UNIMPLEMENTED, since Arrowport advertises no grpc-encoding."""
    return LocalProtocolError(
        "grpc-encoding compression is not supported; send uncompressed messages",
        error="unsupported_compression",
        http_status=415,
        grpc_status=GrpcStatus.UNIMPLEMENTED,
    )


class GrpcMessageDecoder:
    """Split a gRPC request stream, pushed in arbitrary chunks, into messages.

    After ``GrpcStreamEnded``, ``next_event()`` keeps returning ``NEED_DATA``.
    """

    def __init__(self, max_message_size: int = 64 * MiB) -> None:
        self.max_message_size = max_message_size
        self._state = State.PREFIX
        self._input = InputBuffer()
        self._length = 0
        self.messages = 0
        self.message_bytes = 0

    @property
    def state(self) -> State:
        return self._state

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes; ``b""`` means the transport reached EOF."""
        self._input.feed(data)

    def next_event(self) -> Event | _NeedData:
        """Return the next event, or ``NEED_DATA``. Raises ``RemoteProtocolError``."""
        if self._state is State.ERROR:
            raise RemoteProtocolError("the gRPC message decoder is in an error state")
        try:
            return self._next_event()
        except LocalProtocolError as exc:
            self._state = State.ERROR
            raise exc._reraise_as_remote_protocol_error() from exc

    def statistics(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "message_bytes": self.message_bytes,
            "buffered_bytes": self._input.size,
        }

    def _transition(self, what: _Input) -> None:
        try:
            self._state = _TRANSITIONS[(self._state, what)]
        except KeyError:
            raise invalid(f"unexpected {what.name} in state {self._state.name}") from None

    def _need(self, where: str) -> _NeedData:
        if self._input.eof:
            raise invalid(f"gRPC stream truncated {where}", error="truncated_stream")
        return NEED_DATA

    def _next_event(self) -> Event | _NeedData:
        while True:
            if self._state is State.PREFIX:
                if self._input.size == 0 and self._input.eof:
                    self._transition(_Input.CLEAN_EOF)
                    return GrpcStreamEnded()
                if self._input.size < PREFIX_SIZE:
                    return self._need("in a message prefix")
                self._read_prefix()
            elif self._state is State.MESSAGE:
                if self._input.size < self._length:
                    return self._need("in a message")
                data = self._input.take(self._length)
                self.messages += 1
                self.message_bytes += len(data)
                self._transition(_Input.MESSAGE)
                return GrpcMessage(data=data)
            else:  # DONE
                return NEED_DATA

    def _read_prefix(self) -> None:
        flag, length = _PREFIX.unpack(self._input.take(PREFIX_SIZE))
        if flag == 1:
            raise compression_unsupported()
        if flag != 0:
            raise invalid(
                f"invalid gRPC message flag 0x{flag:02x} (expected 0, uncompressed)",
                error="invalid_grpc_framing",
            )
        if length > self.max_message_size:
            raise limit_exceeded(
                f"gRPC message of {length} bytes exceeds the limit of {self.max_message_size} bytes"
            )
        self._length = length
        self._transition(_Input.PREFIX)


# -- deadlines -----------------------------------------------------------------

_TIMEOUT_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def parse_timeout(value: bytes) -> float:
    """The seconds a ``grpc-timeout`` value allows; raises ``LocalProtocolError``."""
    digits, unit = value[:-1], value[-1:]
    if not (
        1 <= len(digits) <= 8
        and digits.isdigit()
        and digits.isascii()
        and unit
        and unit[0] in _TIMEOUT_UNITS
    ):
        shown = value[:32].decode("latin-1")
        raise invalid(
            f"malformed grpc-timeout {shown!r}: expected 1 to 8 digits and a unit (H M S m u n)",
            error="invalid_grpc_timeout",
        )
    return int(digits) * _TIMEOUT_UNITS[unit[0]]


def deadline_exceeded(timeout: float, what: str) -> LocalProtocolError:
    """The call outlived its ``grpc-timeout``: DEADLINE_EXCEEDED; ``what`` says what happened."""
    return LocalProtocolError(
        f"the call's deadline (grpc-timeout {timeout:g} s) passed; {what}",
        error="deadline_exceeded",
        http_status=408,
        grpc_status=GrpcStatus.DEADLINE_EXCEEDED,
    )


# -- status --------------------------------------------------------------------

_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def encode_grpc_message(text: str) -> str:
    """Percent-encode ``text`` for the ``grpc-message`` trailer.

    UTF-8 bytes outside 0x20-0x7E, and ``%`` itself, become ``%XX``. Lone
    surrogates (which UTF-8 cannot carry) are written as backslash escapes.
    """
    data = text.encode("utf-8", "backslashreplace")
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in data)


def decode_grpc_message(value: str | bytes) -> str:
    """Decode a ``grpc-message`` value; malformed escapes and UTF-8 are kept, not refused."""
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    data = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    return data.decode("utf-8", "replace")


def status_trailers(status: int, message: str = "") -> list[tuple[bytes, bytes]]:
    """The trailers of a finished call: ``grpc-status`` and, unless empty, ``grpc-message``."""
    if status < 0:
        raise ValueError(f"invalid gRPC status {status}")
    trailers = [(b"grpc-status", str(int(status)).encode("ascii"))]
    if message:
        trailers.append((b"grpc-message", encode_grpc_message(message).encode("ascii")))
    return trailers
