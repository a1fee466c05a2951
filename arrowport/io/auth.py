"""Bearer-token authentication, shared by the HTTP routes and the Flight service.

Invariants:

* Off when no token is configured; then every request is allowed.
* Tokens are compared in constant time, against every configured token (no
  early exit that would tell which prefix matched).
* A request is authenticated from its headers alone, before any body is read.
* A token scoped to streams may write only those; reads are open to every
  valid token.
"""

from __future__ import annotations

import base64
import hmac

from ..config import AuthSettings, Config, Token
from ..errors import ArrowportError


class UnauthenticatedError(ArrowportError):
    error = "unauthenticated"


class ForbiddenError(ArrowportError):
    error = "forbidden"


def _match(auth: AuthSettings, presented: str) -> Token | None:
    given = presented.encode("utf-8", "surrogateescape")
    found = None
    for token in auth.tokens:  # no early exit: the time does not depend on which matched
        if hmac.compare_digest(token.token.encode(), given):
            found = token
    return found


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def basic_password(header: str | None) -> str | None:
    """The password of an ``Authorization: Basic`` header (a Flight handshake's), or None."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def authenticate(auth: AuthSettings, header: str | None) -> Token | None:
    """The token a request's ``Authorization`` header presents (None when auth is off).

    Raises ``UnauthenticatedError`` for a missing, malformed or unknown token.
    """
    if not auth.enabled:
        return None
    presented = bearer(header)
    if presented is None:
        raise UnauthenticatedError(
            "this server needs a token: send 'Authorization: Bearer <token>'"
            if header is None
            else "the Authorization header is not 'Bearer <token>'"
        )
    token = _match(auth, presented)
    if token is None:
        raise UnauthenticatedError("the token is not valid")
    return token


def authorize_write(token: Token | None, stream: str) -> None:
    """Raise ``ForbiddenError`` unless ``token`` may write ``stream``."""
    if token is not None and not token.allows(stream):
        raise ForbiddenError(f"this token may not write stream {stream!r}")


def authorize_table(token: Token | None, config: Config, table: str, backend: str) -> None:
    """Raise ``ForbiddenError`` unless ``token`` may write ``table`` of ``backend``
    directly (``POST /delta/{table}``, a ``{"table", "backend"}`` DoPut): a token
    limited to some streams may write only the tables those streams write."""
    if token is None or token.streams is None:
        return
    for stream in token.streams:
        route = config.route(stream)
        if route.table.lower() == table.lower() and route.backend == backend:
            return
    raise ForbiddenError(
        f"this token may not write table {table!r} of the {backend} backend: none of its "
        f"streams ({', '.join(token.streams)}) writes that table"
    )


def handshake_token(auth: AuthSettings, header: str | None, payload: bytes) -> Token | None:
    """The token a Flight Handshake presents: a Basic password, a Bearer header, or the payload."""
    if not auth.enabled:
        return None
    for presented in (basic_password(header), bearer(header), payload.decode("utf-8", "replace")):
        if presented:
            token = _match(auth, presented)
            if token is not None:
                return token
    raise UnauthenticatedError("the handshake presented no valid token")
