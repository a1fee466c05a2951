"""Raw HTTP/2 and gRPC bytes for the transport attack tests (issue 17).

``RawH2`` is one attacker connection: frames built by hand (so a flood costs the test little
CPU) and sent as given, the server's frames parsed in a thread (or never read, for a client
that does not read). Header blocks use no dynamic table entry, so the same bytes serve any
stream of any connection.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import hpack
import pyarrow as pa
import pyarrow.flight as fl
from attack_support import address
from support import Server

SERVICE = "/arrow.flight.protocol.FlightService/"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
ENHANCE_YOUR_CALM = 0xB
CANCEL = 0x8


# -- raw HTTP/2 -------------------------------------------------------------------------------


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", sid)
        + payload
    )


def settings_frame(**values: int) -> bytes:
    codes = {"initial_window_size": 4, "max_frame_size": 5, "enable_push": 2}
    payload = b"".join(struct.pack(">HI", codes[k], v) for k, v in values.items())
    return frame(SETTINGS, 0, 0, payload)


def header_block(method: str, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """An HPACK block of a gRPC request to ``method``; it uses no dynamic table entry,
    so the same bytes may be sent on any stream of any connection."""
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "127.0.0.1"),
        (":path", SERVICE + method),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]
    encoder = hpack.Encoder()
    encoded: bytes = encoder.encode([(k, v, True) for k, v in headers])  # never indexed
    return encoded


def grpc_message(payload: bytes, *, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


class RawH2:
    """One attacker connection: frames sent as given, frames received parsed in a thread
    (unless ``read`` is False: a client that never reads)."""

    def __init__(
        self,
        server: Server,
        *,
        read: bool = True,
        source: str | None = None,
        rcvbuf: int | None = None,
        settings: bytes | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect(address(server))
        self.sock.sendall(PREFACE + (settings if settings is not None else settings_frame()))
        self.goaway: int | None = None  # the GOAWAY error code received
        self.eof = False
        self.resets: dict[int, int] = {}  # stream id -> RST_STREAM error code
        self.frames: list[tuple[int, int, int, bytes]] = []  # (type, flags, sid, payload)
        self.received = 0
        self.closed_at: float | None = None
        self._thread: threading.Thread | None = None
        if read:
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                # ``flood`` makes the shared socket non-blocking: wait for it to be readable
                select.select([self.sock], [], [], 0.5)
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except (OSError, ValueError):  # ValueError: closed by ``close`` meanwhile
                chunk = b""
            if not chunk:
                self.eof = True
                self.closed_at = time.monotonic()
                return
            self.received += len(chunk)
            buf += chunk
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                kind, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload = buf[9 : 9 + length]
                buf = buf[9 + length :]
                if kind == GOAWAY:
                    self.goaway = int.from_bytes(payload[4:8], "big")
                elif kind == RST_STREAM:
                    self.resets[sid] = int.from_bytes(payload[:4], "big")
                if kind in (HEADERS, RST_STREAM, GOAWAY, CONTINUATION) or (kind == DATA and flags):
                    self.frames.append((kind, flags, sid, payload))

    def send(self, data: bytes) -> bool:
        """Send all of ``data``; False if the server closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed_at = self.closed_at or time.monotonic()
            return False
        return True

    def flood(self, chunks: Iterator[bytes], seconds: float, max_bytes: int = 1 << 40) -> int:
        """Send ``chunks`` (each whole frames) for ``seconds`` or ``max_bytes``, as fast as
        the server reads; bytes sent. Stops early if the server closes the connection."""
        deadline = time.monotonic() + seconds
        sent = 0
        pending = memoryview(b"")
        self.sock.setblocking(False)
        try:
            while sent < max_bytes and time.monotonic() < deadline:
                if not pending:
                    pending = memoryview(next(chunks))
                left = deadline - time.monotonic()
                _, writable, _ = select.select([], [self.sock], [], max(0.0, min(left, 0.2)))
                if not writable:
                    continue
                try:
                    n = self.sock.send(pending)
                except BlockingIOError:
                    continue
                except OSError:
                    self.closed_at = self.closed_at or time.monotonic()
                    break
                sent += n
                pending = pending[n:]
        finally:
            self.sock.setblocking(True)
        return sent

    def closed_within(self, seconds: float) -> bool:
        """Whether the server ended the connection (EOF, or a failed send) within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.eof or self.closed_at is not None:
                return True
            if self._thread is None:  # not reading: probe with a read of our own
                self.sock.settimeout(0.1)
                try:
                    while data := self.sock.recv(1 << 20):
                        self.received += len(data)
                    self.eof = True
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    self.eof = True
            else:
                time.sleep(0.05)
        return self.eof or self.closed_at is not None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def repeat(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


def frames_of(
    make: Callable[[int], bytes], start: int = 1, per_chunk: int = 512
) -> Iterator[bytes]:
    """Chunks of frames for odd stream ids from ``start``: ``make(sid)`` each."""
    sid = start
    while True:
        parts = []
        for _ in range(per_chunk):
            parts.append(make(sid))
            sid += 2
        yield b"".join(parts)


# -- gRPC bytes -------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(tag: bytes, value: bytes) -> bytes:
    return tag + _varint(len(value)) + value


def flight_data(message: pa.ipc.Message, descriptor: bytes = b"") -> bytes:
    """One gRPC-framed FlightData: the descriptor (wire bytes), the IPC header and body."""
    body = message.body.to_pybytes() if message.body is not None else b""
    payload = (
        (_field(b"\x0a", descriptor) if descriptor else b"")
        + _field(b"\x12", message.metadata.to_pybytes())
        + (_field(b"\xc2\x3e", body) if body else b"")
    )
    return grpc_message(payload)


def doput_messages(table: pa.Table, stream: str) -> list[bytes]:
    """A DoPut of ``table`` to ``stream``: the schema message with the descriptor, then
    one FlightData per batch."""
    descriptor = fl.FlightDescriptor.for_path(stream).serialize()
    out = [flight_data(pa.ipc.read_message(table.schema.serialize()), descriptor)]
    out += [flight_data(pa.ipc.read_message(b.serialize())) for b in table.to_batches()]
    return out


def flight_data_ipc(payload: bytes) -> bytes:
    """A FlightData message's IPC header and body, as IPC stream bytes."""
    header = body = b""
    pos = 0
    while pos < len(payload):
        key, pos = _read_varint(payload, pos)
        if key & 7 == 2:
            length, pos = _read_varint(payload, pos)
            value, pos = payload[pos : pos + length], pos + length
            if key >> 3 == 2:
                header = value
            elif key >> 3 == 1000:
                body = value
        elif key & 7 == 0:
            _, pos = _read_varint(payload, pos)
        else:
            raise ValueError(f"unexpected wire type in FlightData: {key}")
    pad = b"\x00" * (-len(header) % 8)
    return b"\xff\xff\xff\xff" + struct.pack("<i", len(header) + len(pad)) + header + pad + body


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos


def header_blocks(attacker: RawH2) -> dict[int, list[dict[str, str]]]:
    """The header blocks the server sent on each stream, decoded in order."""
    decoder = hpack.Decoder()
    out: dict[int, list[dict[str, str]]] = {}
    pending = b""
    for kind, flags, sid, payload in list(attacker.frames):
        if kind not in (HEADERS, CONTINUATION):
            continue
        if kind == HEADERS:
            pad = payload[0] if flags & 0x8 else 0
            start = (1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0)
            payload = payload[start : len(payload) - pad]
        pending += payload
        if flags & END_HEADERS:
            block = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in decoder.decode(pending)
            }
            out.setdefault(sid, []).append(block)
            pending = b""
    return out
