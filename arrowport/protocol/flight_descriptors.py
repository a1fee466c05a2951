"""Flight requests, parsed: descriptors, tickets, action bodies and DoPut acks.

Pure functions of bytes (sans-IO: no trio, sockets, threads or storage).
Parsing raises ``ArrowportError`` (``invalid_request``: INVALID_ARGUMENT) and
a message that says what was wrong.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ArrowportError
from ..names import validate_idempotency_key
from .flight_pb import FlightDescriptor


class AckRoute(Protocol):
    """Where an acknowledged request went (``config.Route`` is one)."""

    @property
    def stream(self) -> str: ...
    @property
    def table(self) -> str: ...


class Committed(Protocol):
    """One commit, as an acknowledgement reports it (``io.ingest.Commit`` is one)."""

    @property
    def rows(self) -> int: ...
    @property
    def batches(self) -> int: ...
    @property
    def app_metadata(self) -> list[bytes]: ...
    @property
    def version(self) -> int | None: ...
    @property
    def replayed(self) -> bool: ...


def bad_request(detail: str, error: str = "invalid_request") -> ArrowportError:
    return ArrowportError(detail, error=error)


def descriptor_name(descriptor: FlightDescriptor) -> str:
    """The stream or table a descriptor names: its one path element, or its cmd."""
    return descriptor_target(descriptor)[0]


def descriptor_target(descriptor: FlightDescriptor) -> tuple[str, str | None]:
    """The stream a descriptor names, and its idempotency key if it has one.

    The key comes from a JSON cmd: ``{"stream": …, "idempotency_key": …}``.
    """
    if descriptor.path:
        if len(descriptor.path) != 1:
            raise bad_request(
                f"the descriptor path {list(descriptor.path)!r} has {len(descriptor.path)} "
                "elements; name one stream or table"
            )
        return descriptor.path[0], None
    if descriptor.cmd:
        cmd = descriptor.cmd
        if cmd.lstrip().startswith(b"{"):
            spec = _json_object(cmd, "descriptor cmd")
            key = spec.get("idempotency_key")
            if key is not None and not isinstance(key, str):
                raise bad_request('"idempotency_key" in the descriptor cmd must be a string')
            return str(spec.get("stream") or ""), key
        return _text(cmd, "descriptor cmd"), None
    raise bad_request("the descriptor names no stream: set its path or its cmd")


MAX_KEY_METADATA = 4096  # bytes: larger app_metadata is never parsed for a key


def metadata_idempotency_key(app_metadata: bytes | None) -> str | None:
    """An idempotency key sent as DoPut ``app_metadata``: ``{"idempotency_key": …}``.

    Read from the first FlightData after the schema (``write_metadata`` or the
    first batch's metadata), for clients that cannot set a JSON descriptor
    cmd. Any other app_metadata is the client's own and carries no key.
    """
    if not app_metadata or len(app_metadata) > MAX_KEY_METADATA:
        return None  # a key's JSON is small: large app_metadata is the client's own
    if not app_metadata.lstrip().startswith(b"{"):
        return None
    try:
        value = json.loads(app_metadata)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or "idempotency_key" not in value:
        return None
    key = value["idempotency_key"]
    if not isinstance(key, str):
        raise bad_request('"idempotency_key" in app_metadata must be a string')
    return validate_idempotency_key(key)


@dataclass(frozen=True, slots=True)
class TicketSpec:
    """What a DoGet ticket asks for."""

    table: str
    columns: list[str] | None = None
    limit: int | None = None
    backend: str | None = None  # None: the server's default backend
    version: int | None = None  # time travel (DuckLake snapshot, Delta version)


BACKENDS = ("duckdb", "ducklake", "delta")
TICKET_KEYS = ("table", "columns", "limit", "backend", "version")


def parse_ticket(raw: bytes) -> TicketSpec:
    """A table name, or JSON ``{"table", "columns", "limit", "backend", "version"}``.

    ``version`` reads that version of a DuckLake or Delta table (time travel);
    without ``backend`` it means the server's default backend if that has
    versions, else Delta.
    """
    if not raw.lstrip().startswith(b"{"):
        return TicketSpec(_text(raw, "ticket"))
    spec = _json_object(raw, "ticket")
    unknown = set(spec) - set(TICKET_KEYS)
    if unknown:
        raise bad_request(
            f"unknown ticket keys {sorted(unknown)}; a JSON ticket has {', '.join(TICKET_KEYS)}"
        )
    table = spec.get("table")
    if not isinstance(table, str):
        raise bad_request('a JSON ticket needs "table": a table name')
    columns = spec.get("columns")
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        raise bad_request('ticket "columns" must be a list of column names')
    limit = _natural(spec.get("limit"), "limit")
    version = _natural(spec.get("version"), "version")
    backend = spec.get("backend")
    if backend is not None and backend not in BACKENDS:
        raise bad_request(f'ticket "backend" must be one of {", ".join(BACKENDS)}')
    if version is not None and backend == "duckdb":
        raise bad_request('ticket "version" applies to DuckLake and Delta tables only')
    return TicketSpec(table, columns, limit, backend, version)


def _natural(value: object, key: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise bad_request(f'ticket "{key}" must be a non-negative integer')
    return value


def descriptor_backend(descriptor: FlightDescriptor) -> tuple[str | None, str | None]:
    """A JSON cmd's ``{"table": …, "backend": …}`` (as ListFlights describes the
    tables of a backend other than the default), else ``(None, None)``. Without
    ``"backend"`` the table is the default backend's: ``(table, None)``."""
    cmd = descriptor.cmd
    if descriptor.path or not cmd or not cmd.lstrip().startswith(b"{"):
        return None, None
    spec = _json_object(cmd, "descriptor cmd")
    backend, table = spec.get("backend"), spec.get("table")
    if backend is None:
        if table is None or spec.get("stream"):
            return None, None
        if not isinstance(table, str):
            raise bad_request('"table" in the descriptor cmd must be a table name')
        return table, None
    if backend not in BACKENDS or not isinstance(table, str):
        raise bad_request(
            f'a descriptor cmd with "backend" ({", ".join(BACKENDS)}) needs "table": a table name'
        )
    return table, backend


def action_table(body: bytes) -> str:
    """The table an action's body names: the name, or ``{"table": …}``."""
    table = _text(body, "action body").strip()
    if table.startswith("{"):
        table = str(_json_object(body, "action body").get("table", ""))
    return table


def ack_json(route: AckRoute, commit: Committed) -> bytes:
    """A ``PutResult``'s app_metadata: what is committed, and the client's echo."""
    body: dict[str, object] = {
        "stream": route.stream,
        "table": route.table,
        "committed_rows": commit.rows,
        "committed_batches": commit.batches,
    }
    if commit.version is not None:
        body["version"] = commit.version
    if commit.replayed:
        body["replayed"] = True
    if commit.app_metadata:
        body["app_metadata"] = [_echo(m) for m in commit.app_metadata]
    return json.dumps(body).encode()


def _echo(raw: bytes) -> object:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"the {what} is not UTF-8 text") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"the {what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request(f"the {what} is JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise bad_request(f"the {what} must be a JSON object")
    return value
