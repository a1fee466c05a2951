"""Validation and quoting of stream and table names.

A name is an identifier: a letter or underscore, then letters, digits or
underscores, at most 128 characters. Names are always quoted in SQL as well,
so validation is a second line of defence, not the only one.

Stream and table names starting with ``_arrowport`` (any case) are reserved
for Arrowport's own tables (the idempotency ledger): ``validate_name`` refuses
them, so no ingest route, Flight descriptor, read or config can name one.
Delta tables have stricter rules on top (``validate_delta_table``).
"""

from __future__ import annotations

import re

from .errors import ArrowportError

MAX_NAME_LENGTH = 128
RESERVED_PREFIX = "_arrowport"
_RESERVED_KINDS = ("stream", "table")  # column names are the user's own
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class InvalidNameError(ArrowportError):
    error = "invalid_name"


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
    if kind in _RESERVED_KINDS and is_reserved(name):
        raise InvalidNameError(
            f"{kind} name {name!r} is reserved: names starting with {RESERVED_PREFIX!r} "
            "(in any case) are Arrowport's own tables"
        )
    return name


def is_reserved(name: str) -> bool:
    """Whether ``name`` is one of Arrowport's own (``_arrowport*``, any case)."""
    return name.lower().startswith(RESERVED_PREFIX)


def validate_delta_table(name: str) -> str:
    """``validate_name``, and refuse names a Delta reader would not see as a table.

    A name starting with ``_`` is refused. ``_delta_log`` written as a table
    (``root/_delta_log/_delta_log/``) cannot be opened again: delta-rs 1.6's
    kernel answers "No files in log segment". Other ``_`` names work in
    delta-rs, but Spark, Hive and Hadoop-based readers skip paths starting with
    ``_`` or ``.`` as hidden when they list a directory, so such a table would
    vanish for them (``.`` is no identifier anyway).
    """
    validate_name(name, "table")
    if name.startswith("_"):
        raise InvalidNameError(
            f"Delta table name {name!r} starts with '_': Delta readers treat such paths as "
            "hidden (and _delta_log is the log itself); start the name with a letter"
        )
    return name


def quote_identifier(name: str) -> str:
    """Quote ``name`` as a SQL identifier (DuckDB and ANSI rules)."""
    return '"' + name.replace('"', '""') + '"'


MAX_IDEMPOTENCY_KEY_LENGTH = 256
_KEY = re.compile(r"[\x21-\x7e]+\Z")  # printable ASCII, no spaces


class InvalidIdempotencyKeyError(ArrowportError):
    error = "invalid_idempotency_key"


def validate_idempotency_key(key: str) -> str:
    """Return ``key`` if it is 1-256 printable ASCII characters without spaces."""
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not _KEY.match(key):
        raise InvalidIdempotencyKeyError(
            "an idempotency key must be 1 to "
            f"{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters without spaces "
            "(a UUID is a good key)"
        )
    return key
