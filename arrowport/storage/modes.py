"""What a write does with its table: its ``mode``.

Flight SQL's ``CommandStatementIngest`` has four; every other ingest is
``CREATE_APPEND``:

* ``CREATE_APPEND``: create the table if missing, else append (the default);
* ``CREATE``: create it; an existing table is ``TableExistsError`` (409, ALREADY_EXISTS);
* ``APPEND``: append; a missing table is ``TableNotFoundError`` (404, NOT_FOUND);
* ``REPLACE``: drop the table (if any) and create it with the stream's schema and
  rows, in the write's one transaction (Delta: one overwrite commit).

Modes other than ``CREATE_APPEND`` are request mode only, and are decided in
the write's own transaction (under the table's lock): an idempotency key
already committed is a replay whatever the table's state, so a retried
``create`` replays instead of finding its own table.
"""

from __future__ import annotations

from .errors import WriteRejectedError

CREATE_APPEND = "create_append"
CREATE = "create"
APPEND = "append"
REPLACE = "replace"
TABLE_MODES = (CREATE_APPEND, CREATE, APPEND, REPLACE)


def check_mode(mode: str, commit: str) -> None:
    """``mode`` is known, and a mode other than ``CREATE_APPEND`` is request mode's."""
    if mode not in TABLE_MODES:
        raise ValueError(f"unknown table mode {mode!r}")
    if mode != CREATE_APPEND and commit != "request":
        raise WriteRejectedError(
            f"the table mode {mode!r} needs commit: request (one transaction per request)"
        )
