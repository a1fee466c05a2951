"""One port, two protocols: HTTP/1.1 to hypercorn, HTTP/2 (gRPC) to Flight.

Each accepted connection is peeked at until its first bytes either are the
HTTP/2 client preface (what gRPC clients send, "prior knowledge" h2c) or
cannot be. HTTP/2 connections go to Arrowport's own h2 server
(``h2conn.H2Server`` running the Flight service); everything else goes to
hypercorn's connection handler, with the peeked bytes replayed.

This mirrors ``hypercorn.trio.run.worker_serve`` (lifespan, sockets,
graceful shutdown) with that dispatch added; hypercorn is pinned to the
minor version whose internals it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from .h2conn import PREFACE, RECEIVE_SIZE, H2Server, Handler

log = logging.getLogger("arrowport.server")


class HTTP1Only(ProtocolWrapper):
    """hypercorn's protocol switch, minus its switch to HTTP/2.

    HTTP/2 reaches Arrowport's own server through the preface sniff. A later
    switch would run hypercorn's HTTP/2 code, which a client can crash
    (docs/architecture.md). So ``Upgrade: h2c`` is ignored (the request is
    answered in HTTP/1.1, as RFC 9110 allows), and a connection that sends the
    HTTP/2 preface after HTTP/1.1 requests is closed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocol._check_protocol = _no_upgrade  # type: ignore[union-attr,method-assign]

    async def handle(self, event: Any) -> None:
        try:
            await self.protocol.handle(event)
        except (H2CProtocolRequiredError, H2ProtocolAssumedError):
            log.info("closing a connection that asked to switch to HTTP/2 mid-stream")
            await self.send(Closed())


async def _no_upgrade(event: Any) -> None:
    if event.method == b"PRI" and event.target == b"*":
        raise H2ProtocolAssumedError(b"")


hypercorn.trio.tcp_server.ProtocolWrapper = HTTP1Only  # type: ignore[attr-defined,misc]


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

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def sniff(stream: trio.SocketStream, timeout: float) -> bytes | None:
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
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (ASGI) and ``flight`` (HTTP/2 streams) on ``config.bind``."""
    config.set_statsd_logger_class(StatsdLogger)
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)

    async def connection(stream: trio.SocketStream) -> None:
        received = await sniff(stream, config.keep_alive_timeout)
        if received is None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        if received.startswith(PREFACE):
            terminated = context.terminated
            await H2Server(stream, flight, received=received, terminated=terminated).run()
            return
        replayed: Any = PrefixedStream(stream, received)  # hypercorn types it SSLStream
        state = ConnectionState(lifespan_state.copy())
        await TCPServer(asgi, config, context, state, replayed).run()

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
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            connection,
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
