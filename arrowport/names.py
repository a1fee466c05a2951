"""Validation and quoting of stream and table names.

A name is an identifier: a letter or underscore, then letters, digits or
underscores, at most 128 characters. Names are always quoted in SQL as well,
so validation is a second line of defence, not the only one.
"""

from __future__ import annotations

import re

from .protocol.errors import ArrowportError, GrpcStatus

MAX_NAME_LENGTH = 128
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class InvalidNameError(ArrowportError):
    error = "invalid_name"
    http_status = 400
    grpc_status = GrpcStatus.INVALID_ARGUMENT


def validate_name(name: str, kind: str = "stream") -> str:
    """Return ``name`` if it is a valid identifier, else raise ``InvalidNameError``."""
    if not name:
        raise InvalidNameError(f"{kind} name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{kind} name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if not _IDENTIFIER.match(name):
        raise InvalidNameError(
            f"invalid {kind} name {name!r}: use letters, digits and underscores, "
            "starting with a letter or underscore"
        )
    return name


def quote_identifier(name: str) -> str:
    """Quote ``name`` as a SQL identifier (DuckDB and ANSI rules)."""
    return '"' + name.replace('"', '""') + '"'


MAX_IDEMPOTENCY_KEY_LENGTH = 256
_KEY = re.compile(r"[\x21-\x7e]+\Z")  # printable ASCII, no spaces


class InvalidIdempotencyKeyError(ArrowportError):
    error = "invalid_idempotency_key"
    http_status = 400
    grpc_status = GrpcStatus.INVALID_ARGUMENT


def validate_idempotency_key(key: str) -> str:
    """Return ``key`` if it is 1-256 printable ASCII characters without spaces."""
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not _KEY.match(key):
        raise InvalidIdempotencyKeyError(
            "an idempotency key must be 1 to "
            f"{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters without spaces "
            "(a UUID is a good key)"
        )
    return key
