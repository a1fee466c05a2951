"""Connection limits: server-wide (below the descriptor limit) and per client address.

Invariants:

* At most ``limit`` connections are open at once, HTTP/1.1 and HTTP/2
  together: ``limits.max_connections``, lowered to the process's descriptor
  limit (RLIMIT_NOFILE, soft) less a headroom of ``max(64, 10%)`` of it, kept
  for database files, WAL, Delta files, threads' pipes and the accept itself.
  So accepting never runs out of descriptors because of connections, and the
  server keeps a descriptor for the database when clients hold the rest.
* At most ``limits.max_connections_per_client`` are open from one client IP
  address.
* A connection over either limit is closed at once, before any byte is read:
  answering it (an HTTP 503) would cost the very resources the limit keeps.
  Each refusal is counted by reason (``server`` or ``client``) and logged,
  the first one and then one in ``LOG_EVERY`` per reason.
* trio's accept loop (``trio.serve_listeners``) already survives EMFILE,
  ENFILE, ENOBUFS and ENOMEM: it logs, sleeps 0.1 s and accepts again.
* The limits are read at start (like the port); a reload does not change them.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import resource
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("arrowport.server")

HEADROOM_MIN = 64
HEADROOM_FRACTION = 0.10
LOG_EVERY = 1000


class Refusal(enum.Enum):
    SERVER = "server"  # the server-wide limit
    CLIENT = "client"  # the per-client-address limit


def descriptor_limit() -> int | None:
    """The process's soft RLIMIT_NOFILE, or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def headroom(descriptors: int) -> int:
    """Descriptors kept free of connections: 64, or 10% of the limit if more."""
    return max(HEADROOM_MIN, int(descriptors * HEADROOM_FRACTION))


def effective_limit(max_connections: int, descriptors: int | None) -> int:
    """``max_connections``, lowered to fit below ``descriptors`` less the headroom (at least 1)."""
    if descriptors is None:
        return max_connections
    return max(1, min(max_connections, descriptors - headroom(descriptors)))


class ConnectionTracker:
    """Counts open connections, in total and per client address; refuses over the limits."""

    def __init__(self, max_connections: int, max_per_client: int) -> None:
        self.limit = max_connections
        self.max_per_client = max_per_client
        self.open = 0
        self.per_client: dict[str, int] = {}
        self.refused = dict.fromkeys(Refusal, 0)

    @classmethod
    def for_process(cls, max_connections: int, max_per_client: int) -> ConnectionTracker:
        """Limits fitted to this process's descriptor limit; logs what they are."""
        descriptors = descriptor_limit()
        limit = effective_limit(max_connections, descriptors)
        if limit < max_connections:
            log.warning(
                "at most %d connections at once: limits.max_connections is %d, but the "
                "descriptor limit (ulimit -n) is %s and %s are kept for files; raise it to "
                "allow more",
                limit,
                max_connections,
                descriptors,
                headroom(descriptors or 0),
            )
        if max_per_client >= limit:
            log.warning(
                "limits.max_connections_per_client (%d) is not below the connection limit (%d): "
                "one client address can hold every connection",
                max_per_client,
                limit,
            )
        return cls(limit, max_per_client)

    def admit(self, client: str) -> Refusal | None:
        """Count a new connection from ``client``; or say why it is refused (not counted)."""
        if self.open >= self.limit:
            return self._refuse(Refusal.SERVER, client)
        count = self.per_client.get(client, 0)
        if count >= self.max_per_client:
            return self._refuse(Refusal.CLIENT, client)
        self.open += 1
        self.per_client[client] = count + 1
        return None

    def release(self, client: str) -> None:
        """A connection counted by ``admit`` closed."""
        self.open -= 1
        count = self.per_client[client] - 1
        if count:
            self.per_client[client] = count
        else:
            del self.per_client[client]

    def _refuse(self, reason: Refusal, client: str) -> Refusal:
        self.refused[reason] += 1
        total = self.refused[reason]
        if total % LOG_EVERY == 1 or LOG_EVERY == 1:
            if reason is Refusal.SERVER:
                why = f"the server has its limit of {self.limit} connections open"
            else:
                why = f"{client} has its limit of {self.max_per_client} connections open"
            log.warning(
                "closed a new connection from %s: %s (%d refused so far for this reason; "
                "logged once per %d)",
                client,
                why,
                total,
                LOG_EVERY,
            )
        return reason

    def guard(
        self, handler: Callable[[trio.SocketStream], Awaitable[None]]
    ) -> Callable[[trio.SocketStream], Awaitable[None]]:
        """``handler``, run only for connections within the limits; others are closed at once."""

        async def guarded(stream: trio.SocketStream) -> None:
            client = client_address(stream)
            if self.admit(client) is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                return
            try:
                await handler(stream)
            finally:
                self.release(client)

        return guarded


def client_address(stream: trio.SocketStream) -> str:
    """The peer's per-client key (``client_key``); "" if the peer is already gone."""
    try:
        address = stream.socket.getpeername()
    except OSError:
        return ""
    return client_key(str(address[0]) if isinstance(address, tuple) else str(address))


def client_key(address: str) -> str:
    """The key one client's connections are counted under.

    IPv4: the address. IPv6: its /64 network, the smallest block a site is
    given, so one host cannot take a fresh address per connection; an IPv4
    address mapped into IPv6 (``::ffff:a.b.c.d``, a dual-stack socket) is the
    IPv4 address. Anything else (a Unix socket path) is kept as it is.
    """
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
