"""hypercorn's HTTP/1.1 connection, with stricter framing and a deferred 100 Continue.

``HTTP1Only`` replaces hypercorn's protocol switch (``ProtocolWrapper``) for
every connection the listener hands to hypercorn:

* no switch to HTTP/2: HTTP/2 reaches Arrowport's own server through the
  preface sniff. A later switch would run hypercorn's HTTP/2 code, which a
  client can crash (docs/architecture.md). So ``Upgrade: h2c`` is ignored (the
  request is answered in HTTP/1.1, as RFC 9110 allows), and a connection that
  sends the HTTP/2 preface after HTTP/1.1 requests is closed;
* request heads whose framing is ambiguous (``protocol.http1``) are refused
  before the application sees them, with the same JSON body ``{error,
  detail}`` as every other refusal, and the connection is closed; so are
  h11's own refusals (a bad request line, a head too large);
* a connection the client closes ends at once: hypercorn kept its task and
  descriptor until the keep-alive timer fired (``connection_idle_timeout``),
  so a client making a connection per request held hundreds of descriptors;
* ``Expect: 100-continue`` is not answered when the request arrives (hypercorn
  answers it at once) but when the application asks for it with
  ``send_continue(request.scope)``, after its auth, route and content-type
  checks. A request refused before that gets its final answer without a 100,
  and the connection is closed after it (the body was never sent).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from itertools import chain
from typing import Any

import h11
import hypercorn.trio.tcp_server
from h11._receivebuffer import ReceiveBuffer
from hypercorn.events import Closed, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError

from ..protocol.http1 import framing_problem

log = logging.getLogger("arrowport.server")

CONTINUE_KEY = "arrowport.expect_continue"
_ERRORS = {
    400: "bad_request",
    408: "request_timeout",
    431: "headers_too_large",
}


class _CheckedBuffer(ReceiveBuffer):
    """h11's receive buffer; a request head it splits into lines is checked first."""

    head_expected = False

    def maybe_extract_lines(self) -> list[bytearray] | None:
        lines = super().maybe_extract_lines()
        if lines and self.head_expected:
            problem = framing_problem(lines)
            if problem is not None:
                raise h11.LocalProtocolError(problem.detail, error_status_hint=problem.status)
        return lines


class StrictConnection(h11.Connection):
    """An h11 server connection that refuses ambiguous framing and never asks for a 100 itself."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self._receive_buffer = _CheckedBuffer()
        self.refusal = ""

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        # hypercorn sends a 100 whenever this is true; Arrowport sends it from the app
        return False

    @property
    def waiting_for_continue(self) -> bool:
        return bool(self.their_role is h11.CLIENT and self.client_is_waiting_for_100_continue)

    def _extract_next_receive_event(self) -> Any:
        buffer = self._receive_buffer
        if isinstance(buffer, _CheckedBuffer):
            buffer.head_expected = self.their_state is h11.IDLE
        return super()._extract_next_receive_event()

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = str(exc)
            raise


class HTTP1Only(ProtocolWrapper):
    """hypercorn's protocol switch, minus its switch to HTTP/2, with strict framing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        protocol: Any = self.protocol
        protocol.connection = StrictConnection(self.config.h11_max_incomplete_size)
        protocol._check_protocol = _no_upgrade
        protocol._send_error_response = self._send_error_response
        self.state[CONTINUE_KEY] = self  # type: ignore[literal-required]

    async def handle(self, event: Any) -> None:
        try:
            await self.protocol.handle(event)
        except (H2CProtocolRequiredError, H2ProtocolAssumedError):
            log.info("closing a connection that asked to switch to HTTP/2 mid-stream")
            await self.send(Closed())
        if isinstance(event, Closed):
            # hypercorn's connection task (and its descriptor) waits for the keep-alive
            # timer even after the client closed an idle connection: stop the timer
            await self.send(Updated(idle=False))

    @property
    def waiting_for_continue(self) -> bool:
        connection = getattr(self.protocol, "connection", None)
        return isinstance(connection, StrictConnection) and connection.waiting_for_continue

    async def send_continue(self) -> None:
        """Answer ``Expect: 100-continue`` now, if the client still waits for it."""
        if self.waiting_for_continue:
            protocol: Any = self.protocol
            await protocol._send_h11_event(
                h11.InformationalResponse(
                    status_code=100, headers=self.config.response_headers("h11")
                )
            )

    async def _send_error_response(self, status_code: int) -> None:
        """hypercorn's answer to a request h11 refused, with a JSON body; then it closes."""
        protocol: Any = self.protocol
        connection = protocol.connection
        detail = getattr(connection, "refusal", "") or "malformed HTTP/1.1 request"
        if status_code >= 500:  # h11 hints 501 for a coding it lacks: still the client's request
            status_code = 400
        log.info("refused an HTTP/1.1 request from %s (%d): %s", self.client, status_code, detail)
        error = _ERRORS.get(status_code, "bad_request")
        body = json.dumps({"error": error, "detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await protocol._send_h11_event(
            h11.Response(
                status_code=status_code,
                headers=list(chain(headers, self.config.response_headers("h11"))),
            )
        )
        await protocol._send_h11_event(h11.Data(data=body))
        await protocol._send_h11_event(h11.EndOfMessage())


async def _no_upgrade(event: Any) -> None:
    if event.method == b"PRI" and event.target == b"*":
        raise H2ProtocolAssumedError(b"")


def waiting_for_continue(scope: Mapping[str, Any]) -> bool:
    """Whether the client of this ASGI request waits for a 100 before sending its body."""
    hook = scope.get("state", {}).get(CONTINUE_KEY)
    return isinstance(hook, HTTP1Only) and hook.waiting_for_continue


async def send_continue(scope: Mapping[str, Any]) -> None:
    """Send the deferred ``100 Continue`` of this ASGI request, if its client waits for one."""
    hook = scope.get("state", {}).get(CONTINUE_KEY)
    if isinstance(hook, HTTP1Only):
        await hook.send_continue()


hypercorn.trio.tcp_server.ProtocolWrapper = HTTP1Only  # type: ignore[attr-defined,misc]
