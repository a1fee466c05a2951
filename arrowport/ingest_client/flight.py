"""Sending one input with Arrow Flight ``DoPut``, and cutting the connection to abandon it.

pyarrow cannot cancel a DoPut, so an input that fails part-way is abandoned by
shutting down this process's connection to the server, and nothing of it is
committed. Where that connection cannot be found, the error says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from .common import (
    EXIT_CONNECT,
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    EXIT_SERVER,
    Failure,
    Retryable,
    Target,
    first_line,
)
from .inputs import Source, Tally, rechunk


def send_flight(
    target: Target,
    stream: str,
    key: str | None,
    source: Source,
    tally: Tally,
    chunk_size: int,
    on_chunk: Callable[[Tally], None],
) -> dict[str, Any]:
    """DoPut ``source`` with the key in a JSON descriptor cmd; return the last ack.

    Acks are read while sending: a ``commit: batch`` stream acks every batch, and acks
    left unread would fill the call's flow-control window and stall the server.
    """
    import pyarrow.flight as fl

    scheme = "grpc+tls" if target.tls else "grpc"
    roots = Path(target.cafile).read_bytes() if target.cafile else None
    host = f"[{target.host}]" if ":" in target.host else target.host
    # Straight to the server, whatever grpc_proxy/https_proxy/http_proxy say: abandoning a
    # DoPut means cutting the connection to the server's port, which a proxy would hide.
    client = fl.FlightClient(
        f"{scheme}://{host}:{target.port}",
        tls_root_certs=roots,
        generic_options=[("grpc.enable_http_proxy", 0)],
    )
    headers = [(b"authorization", f"Bearer {target.token}".encode())] if target.token else []
    call = fl.FlightCallOptions(headers=headers, write_options=target.options)
    spec = {"stream": stream} if key is None else {"stream": stream, "idempotency_key": key}
    before = _tcp_sockets(target.port)
    try:
        writer, reader = client.do_put(
            fl.FlightDescriptor.for_command(json.dumps(spec).encode()), source.schema, call
        )
        acks = _Acks(reader)
        try:
            for batch, position in rechunk(source.batches, chunk_size):
                writer.write_batch(batch)
                tally.add(batch, position, source)
                on_chunk(tally)
        except BaseException as exc:
            cut = _disconnect(_tcp_sockets(target.port) - before)
            ours = not isinstance(exc, pa.ArrowException)  # else the call has ended already
            if ours and not cut:  # end it, to learn what the server made of it
                with contextlib.suppress(pa.ArrowException, OSError):
                    writer.done_writing()
            acks.join(target.timeout)
            with contextlib.suppress(pa.ArrowException, OSError):
                writer.close()  # fails now, instead of noisily when collected
            if ours:
                note = _abandon_note(cut, acks.acks, tally, target.port)
                if note:
                    raise _noted(exc, note) from None
            raise
        writer.done_writing()
        acks.join()
        if acks.error is not None:
            raise acks.error
        writer.close()
    except (fl.FlightUnavailableError, fl.FlightTimedOutError, fl.FlightCancelledError) as exc:
        message = f"Flight call to {target.url} failed: {_flight_message(exc)}"
        if "handshake failed" in message.lower():  # a certificate not trusted: retrying won't help
            raise Failure(EXIT_CONNECT, message) from None
        raise Retryable(message) from None
    except (fl.FlightUnauthenticatedError, fl.FlightUnauthorizedError, pa.ArrowInvalid) as exc:
        message = _flight_message(exc)
        if message.startswith("resource exhausted") and "retry" in message:  # too busy
            raise Retryable(f"the server is busy: {message}") from None
        raise Failure(EXIT_REFUSED, f"refused by the server: {message}") from None
    except (pa.ArrowException, KeyError) as exc:
        raise Failure(EXIT_SERVER, f"server error: {_flight_message(exc)}") from None
    except ValueError as exc:
        raise Failure(EXIT_SERVER, f"the server's acknowledgement is not JSON: {exc}") from None
    finally:
        client.close()
    if not acks.acks:
        raise Failure(EXIT_SERVER, "the server ended the call without an acknowledgement")
    return dict(acks.acks[-1])


class _Acks(threading.Thread):
    """Reads a DoPut's acks (JSON ``PutResult`` metadata) until the call ends."""

    def __init__(self, reader: Any) -> None:
        super().__init__(name="arrowport-acks", daemon=True)
        self.reader = reader
        self.acks: list[Any] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            while (buf := self.reader.read()) is not None:
                self.acks.append(json.loads(buf.to_pybytes()))
        except BaseException as exc:  # raised in the caller's thread
            self.error = exc


def _abandon_note(cut: bool, acks: list[Any], tally: Tally, port: int) -> str:
    """What the server kept of a DoPut abandoned part-way, if not nothing."""
    committed = next((a.get("committed_rows") for a in reversed(acks) if isinstance(a, dict)), None)
    if cut:
        if committed is None:
            return ""  # cut before any commit: nothing of it is committed
        return f"the server had committed at least {committed:,} rows of it (commit: batch)"
    why = (
        "but the Flight call could not be cut off (no connection of this process to port "
        f"{port} was found), so it ended normally"
    )
    if committed is not None:
        return f"{why}: the server committed {committed:,} rows of this input"
    return f"{why}: the input may be partly committed (up to the {tally.rows:,} rows sent)"


def _noted(exc: BaseException, note: str) -> BaseException:
    if isinstance(exc, Failure):
        return Failure(exc.code, f"{exc}; {note}", exc.answer)
    if isinstance(exc, KeyboardInterrupt):
        return Failure(EXIT_INTERRUPTED, f"interrupted; {note}")
    return exc


def _tcp_sockets(port: int) -> set[int]:
    """The file descriptors of this process's TCP connections to ``port``."""
    found: set[int] = set()
    if not os.path.isdir("/dev/fd"):  # Linux and macOS have it
        return found
    for name in os.listdir("/dev/fd"):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:
                inet = sock.family in (socket.AF_INET, socket.AF_INET6)
                if inet and sock.getpeername()[1] == port:
                    found.add(fd)
        except (OSError, ValueError):
            continue
    return found


def _disconnect(fds: set[int]) -> bool:
    """Cut the Flight client's connections, so the server sees the DoPut abandoned.

    pyarrow cannot cancel a DoPut: ``writer.close()``, ``client.close()`` and
    garbage collection all end the stream normally, and the server commits
    what was sent. A connection that drops before the end commits nothing.
    Returns whether there was a connection to cut.
    """
    cut = False
    for fd in fds:
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
            cut = True
    return cut


def _flight_message(exc: BaseException) -> str:
    text = str(exc).split(". Detail:")[0].split(". gRPC client debug context")[0]
    return first_line(text.replace("Flight returned ", "").replace("gRPC returned ", ""))
