"""One port, two protocols: HTTP/1.1 to hypercorn, HTTP/2 (gRPC) to Flight.

Each accepted connection is peeked at until its first bytes either are the
HTTP/2 client preface (what gRPC clients send, "prior knowledge" h2c) or
cannot be. HTTP/2 connections go to Arrowport's own h2 server
(``h2conn.H2Server`` running the Flight service); everything else goes to
hypercorn's connection handler, with the peeked bytes replayed.

With TLS (``tls_context``), the port speaks TLS only. A connection whose first
byte is not a TLS handshake record is refused: a plaintext HTTP request gets a
400 saying to use https://, anything else is closed. After the handshake the
ALPN protocol decides: ``h2`` goes to the h2 server; after ``http/1.1``, or
none, the decrypted bytes are sniffed as above. The first byte and the
handshake must arrive within ``config.ssl_handshake_timeout``.

This mirrors ``hypercorn.trio.run.worker_serve`` (lifespan, sockets,
graceful shutdown) with that dispatch added; hypercorn is pinned to the
minor version whose internals it uses.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from ..config import ConfigError, Http2Settings
from .connections import ConnectionTracker
from .h2conn import PREFACE, RECEIVE_SIZE, H2Server, Handler
from .http1 import HTTP1Only  # noqa: F401  (the import installs it in hypercorn)

log = logging.getLogger("arrowport.server")


TLS_CLOSE_TIMEOUT = 5.0


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A socket stream whose first bytes were already read; they are replayed."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.stream = stream
        self.socket = stream.socket
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    # hypercorn closes a connection from inside the task that sent the response, which
    # quart-trio may have cancelled by then (its body loop ends on the disconnect that
    # hypercorn itself sends first): unshielded, the close was cancelled at its first
    # checkpoint and a keep-alive connection stayed open, unserved, until the graceful
    # timeout at shutdown. Closing a socket is short and must always finish.
    async def send_eof(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.send_eof()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class PrefixedTLSStream(trio.abc.Stream):
    """A TLS stream whose first decrypted bytes were already read; they are replayed.

    It keeps the parts of ``trio.SSLStream`` that hypercorn's ``TCPServer``
    looks for, so hypercorn still knows the connection is TLS (scheme https).
    """

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], prefix: bytes) -> None:
        self.stream = stream
        self.transport_stream = stream.transport_stream
        self._prefix = prefix

    async def do_handshake(self) -> None:
        await self.stream.do_handshake()

    def selected_alpn_protocol(self) -> str | None:
        protocol: str | None = self.stream.selected_alpn_protocol()
        return protocol

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        # as PrefixedStream.aclose; bounded, since TLS sends close_notify to a peer that
        # may not read (cancelled, SSLStream still closes the socket)
        with trio.CancelScope(shield=True, deadline=trio.current_time() + TLS_CLOSE_TIMEOUT):
            await self.stream.aclose()


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context for the one port: TLS 1.2 or later, ALPN ``http/1.1`` and ``h2``.

    Raises ``ConfigError`` naming the file and what is wrong with it.
    """
    for key, path, marker, what in (
        ("certfile", certfile, "-----BEGIN CERTIFICATE-----", "PEM certificate"),
        ("keyfile", keyfile, "PRIVATE KEY-----", "PEM private key"),
    ):
        try:
            with open(path, "rb") as file:
                text = file.read()
        except OSError as exc:
            raise ConfigError(f"tls.{key}: cannot read {path!r}: {exc.strerror or exc}") from None
        if marker.encode() not in text:
            raise ConfigError(f"tls.{key}: {path!r} holds no {what}")

    def encrypted() -> str:
        raise ConfigError(
            f"tls.keyfile: the private key in {keyfile!r} is encrypted; Arrowport needs an "
            "unencrypted one (e.g. `openssl pkey -in KEY -out PLAIN.pem`, kept readable by "
            "the server only)"
        )

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The server's order wins. Browsers and curl offer both and get HTTP/1.1 (HTTP/2
    # here carries gRPC only); gRPC clients offer h2 (and grpc-exp) alone.
    context.set_alpn_protocols(["http/1.1", "h2"])
    try:
        context.load_cert_chain(certfile, keyfile, password=encrypted)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            detail = "the private key does not match the certificate"
        else:
            detail = str(exc.reason or exc)
        raise ConfigError(
            f"tls: cannot use certfile {certfile!r} with keyfile {keyfile!r}: {detail}"
        ) from None
    return context


TLS_HANDSHAKE = 0x16  # the first byte of every TLS connection (a handshake record)
PLAINTEXT_DRAIN = 2.0  # seconds to read a refused plaintext request's rest before closing
_PLAINTEXT_BODY = json.dumps(
    {
        "error": "tls_required",
        "detail": "this port speaks TLS only: use https:// (and grpc+tls:// for Flight)",
    }
).encode()
PLAINTEXT_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_PLAINTEXT_BODY), _PLAINTEXT_BODY)
)


def _peer(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "a client"
    return str(repr_socket_addr(stream.socket.family, address))


async def refuse_plaintext(stream: trio.SocketStream, first: bytes) -> None:
    """Answer a plaintext HTTP request on the TLS port with a 400, then close.

    The request is read (briefly) before the answer and until the client
    closes after it: closing with unread bytes would reset the connection and
    the client could lose the answer. Other plaintext (an h2c preface,
    garbage) is just closed.
    """
    try:
        if first[:1].isupper() and not PREFACE.startswith(first[: len(PREFACE)]):
            log.info("plaintext HTTP request from %s on the TLS port; answered 400", _peer(stream))
            with trio.move_on_after(PLAINTEXT_DRAIN):
                await stream.receive_some(RECEIVE_SIZE)
                await stream.send_all(PLAINTEXT_ANSWER)
                await stream.send_eof()
                while await stream.receive_some(RECEIVE_SIZE):
                    pass
        else:
            log.debug("closing a non-TLS connection from %s on the TLS port", _peer(stream))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def sniff(stream: trio.abc.ReceiveStream, timeout: float) -> bytes | None:
    """Read until the bytes are, or cannot be, the HTTP/2 preface; None if gone."""
    received = b""
    try:
        with trio.fail_after(timeout):
            while len(received) < len(PREFACE) and PREFACE.startswith(received):
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return received or None
                received += data
    except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
        return None
    return received


async def serve(
    app: Any,
    config: HypercornConfig,
    flight: Handler,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
    connections: ConnectionTracker | None = None,
    h2_settings: Http2Settings | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (ASGI) and ``flight`` (HTTP/2 streams) on ``config.bind``.

    With ``ssl_context`` (see ``tls_context``) every connection must be TLS.
    With ``connections``, a connection over its limits is closed at once.
    """
    config.set_statsd_logger_class(StatsdLogger)
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)

    async def connection(stream: trio.SocketStream) -> None:
        if ssl_context is not None:
            await tls_connection(stream, ssl_context)
            return
        received = await sniff(stream, config.keep_alive_timeout)
        if received is None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        if received.startswith(PREFACE):
            await http2(stream, received)
            return
        await http1(PrefixedStream(stream, received))

    async def http2(stream: trio.abc.Stream, received: bytes) -> None:
        terminated = context.terminated
        await H2Server(
            stream,
            flight,
            received=received,
            terminated=terminated,
            idle_timeout=config.keep_alive_timeout,
            settings=h2_settings,
        ).run()

    async def http1(stream: Any) -> None:  # hypercorn types it SSLStream
        state = ConnectionState(lifespan_state.copy())
        await TCPServer(asgi, config, context, state, stream).run()

    async def tls_connection(stream: trio.SocketStream, ssl_context: ssl.SSLContext) -> None:
        tls = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
        peer = _peer(stream)  # now: after a failed handshake the peer may be gone
        first = b""
        error: BaseException | None = None
        with trio.move_on_after(config.ssl_handshake_timeout) as handshake:
            try:
                first = await stream.socket.recv(16, socket.MSG_PEEK)
                if first[:1] == bytes([TLS_HANDSHAKE]):
                    await tls.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                error = exc.__cause__ or exc
        if first and first[:1] != bytes([TLS_HANDSHAKE]):
            await refuse_plaintext(stream, first)
            return
        if error is not None or handshake.cancelled_caught or not first:
            if error is not None and str(error):
                log.info("TLS handshake with %s failed: %s", peer, error)
            else:
                log.debug("TLS handshake with %s did not complete", peer)
            with trio.CancelScope(shield=True):
                await tls.aclose()
            return
        if tls.selected_alpn_protocol() == "h2":
            await http2(tls, b"")
            return
        # http/1.1 or no ALPN: sniff the decrypted bytes as on a plaintext port
        received = await sniff(tls, config.keep_alive_timeout)
        if received is None:
            with trio.CancelScope(shield=True):
                await tls.aclose()
        elif received.startswith(PREFACE):
            await http2(tls, received)
        else:
            await http1(PrefixedTLSStream(tls, received))

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                address = repr_socket_addr(sock.family, sock.getsockname())
                binds.append(f"{'http' if ssl_context is None else 'https'}://{address}")
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            connection if connections is None else connections.guard(connection),
                            listeners,
                            handler_nursery=server_nursery,
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
