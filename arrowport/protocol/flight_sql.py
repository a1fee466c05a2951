"""The Flight SQL messages (``FlightSql.proto``, package ``arrow.flight.protocol.sql``).

A Flight SQL client packs each command in a ``google.protobuf.Any``: the
FlightDescriptor's ``cmd`` of GetFlightInfo, GetSchema and DoPut, a DoGet
ticket, and the body of an action's request and result. ``unpack_command``
reads one: it returns the command's message, ``None`` for bytes that are no
``Any`` of this package (a plain Flight cmd or ticket: a stream name or JSON),
and raises ``UnknownCommand`` (UNIMPLEMENTED, naming it) for a Flight SQL
command this server has no message for.

Invariants:

* Nothing here touches storage or I/O; decoding raises ``LocalProtocolError``
  (INVALID_ARGUMENT) on malformed bytes, as every message of ``protobuf.py``.
* An ``Any`` is recognised by its ``type_url`` (field 1) alone: a cmd that is
  JSON or a name never starts with the byte 0x0A followed by this package's
  type URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any as AnyType

from .errors import GrpcStatus, LocalProtocolError
from .protobuf import Kind, Message, iter_fields, pb

TYPE_URL_PREFIX = "type.googleapis.com/"
PACKAGE = "arrow.flight.protocol.sql."


class UnknownCommand(LocalProtocolError):
    """A Flight SQL command this server does not implement: UNIMPLEMENTED."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the Flight SQL command {name} is not implemented by this server",
            http_status=501,
            grpc_status=GrpcStatus.UNIMPLEMENTED,
            error="unimplemented",
        )
        self.name = name


@dataclass(frozen=True, slots=True, kw_only=True)
class AnyMessage(Message):
    """``google.protobuf.Any``."""

    type_url: str = pb(1, Kind.STRING)
    value: bytes = pb(2, Kind.BYTES)


# -- metadata commands ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetSqlInfo(Message):
    info: tuple[int, ...] = pb(1, Kind.UINT32, repeated=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetXdbcTypeInfo(Message):
    data_type: int | None = pb(1, Kind.INT32, optional=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetCatalogs(Message):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetDbSchemas(Message):
    catalog: str | None = pb(1, Kind.STRING, optional=True)
    db_schema_filter_pattern: str | None = pb(2, Kind.STRING, optional=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetTables(Message):
    catalog: str | None = pb(1, Kind.STRING, optional=True)
    db_schema_filter_pattern: str | None = pb(2, Kind.STRING, optional=True)
    table_name_filter_pattern: str | None = pb(3, Kind.STRING, optional=True)
    table_types: tuple[str, ...] = pb(4, Kind.STRING, repeated=True)
    include_schema: bool = pb(5, Kind.BOOL)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetTableTypes(Message):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetPrimaryKeys(Message):
    catalog: str | None = pb(1, Kind.STRING, optional=True)
    db_schema: str | None = pb(2, Kind.STRING, optional=True)
    table: str = pb(3, Kind.STRING)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetExportedKeys(Message):
    catalog: str | None = pb(1, Kind.STRING, optional=True)
    db_schema: str | None = pb(2, Kind.STRING, optional=True)
    table: str = pb(3, Kind.STRING)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetImportedKeys(Message):
    catalog: str | None = pb(1, Kind.STRING, optional=True)
    db_schema: str | None = pb(2, Kind.STRING, optional=True)
    table: str = pb(3, Kind.STRING)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandGetCrossReference(Message):
    pk_catalog: str | None = pb(1, Kind.STRING, optional=True)
    pk_db_schema: str | None = pb(2, Kind.STRING, optional=True)
    pk_table: str = pb(3, Kind.STRING)
    fk_catalog: str | None = pb(4, Kind.STRING, optional=True)
    fk_db_schema: str | None = pb(5, Kind.STRING, optional=True)
    fk_table: str = pb(6, Kind.STRING)


# -- queries and updates ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandStatementQuery(Message):
    query: str = pb(1, Kind.STRING)
    transaction_id: bytes | None = pb(2, Kind.BYTES, optional=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class TicketStatementQuery(Message):
    statement_handle: bytes = pb(1, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandPreparedStatementQuery(Message):
    prepared_statement_handle: bytes = pb(1, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandStatementUpdate(Message):
    query: str = pb(1, Kind.STRING)
    transaction_id: bytes | None = pb(2, Kind.BYTES, optional=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandPreparedStatementUpdate(Message):
    prepared_statement_handle: bytes = pb(1, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandStatementSubstraitPlan(Message):
    IGNORED_FIELDS = {1: "plan"}
    transaction_id: bytes | None = pb(2, Kind.BYTES, optional=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class DoPutUpdateResult(Message):
    record_count: int = pb(1, Kind.INT64)


@dataclass(frozen=True, slots=True, kw_only=True)
class DoPutPreparedStatementResult(Message):
    prepared_statement_handle: bytes | None = pb(1, Kind.BYTES, optional=True)


# -- bulk ingest ----------------------------------------------------------------------

# TableDefinitionOptions.TableNotExistOption
TABLE_NOT_EXIST_UNSPECIFIED = 0
TABLE_NOT_EXIST_CREATE = 1
TABLE_NOT_EXIST_FAIL = 2
# TableDefinitionOptions.TableExistsOption
TABLE_EXISTS_UNSPECIFIED = 0
TABLE_EXISTS_FAIL = 1
TABLE_EXISTS_APPEND = 2
TABLE_EXISTS_REPLACE = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class TableDefinitionOptions(Message):
    if_not_exist: int = pb(1, Kind.INT32)
    if_exists: int = pb(2, Kind.INT32)


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMapEntry(Message):
    """One entry of a ``map<string, string>``."""

    key: str = pb(1, Kind.STRING)
    value: str = pb(2, Kind.STRING)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandStatementIngest(Message):
    table_definition_options: TableDefinitionOptions | None = pb(  # noqa: RUF009
        1, Kind.MESSAGE, message=TableDefinitionOptions
    )
    table: str = pb(2, Kind.STRING)
    schema: str | None = pb(3, Kind.STRING, optional=True)
    catalog: str | None = pb(4, Kind.STRING, optional=True)
    temporary: bool = pb(5, Kind.BOOL)
    transaction_id: bytes | None = pb(6, Kind.BYTES, optional=True)
    options: tuple[StringMapEntry, ...] = pb(
        1000, Kind.MESSAGE, repeated=True, message=StringMapEntry
    )


# -- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionCreatePreparedStatementRequest(Message):
    query: str = pb(1, Kind.STRING)
    transaction_id: bytes | None = pb(2, Kind.BYTES, optional=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionCreatePreparedStatementResult(Message):
    prepared_statement_handle: bytes = pb(1, Kind.BYTES)
    dataset_schema: bytes = pb(2, Kind.BYTES)
    parameter_schema: bytes = pb(3, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionClosePreparedStatementRequest(Message):
    prepared_statement_handle: bytes = pb(1, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionBeginTransactionRequest(Message):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionEndTransactionRequest(Message):
    transaction_id: bytes = pb(1, Kind.BYTES)
    action: int = pb(2, Kind.INT32)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionCancelQueryRequest(Message):
    info: bytes = pb(1, Kind.BYTES)


# Flight.proto (package arrow.flight.protocol): session actions
@dataclass(frozen=True, slots=True, kw_only=True)
class CloseSessionRequest(Message):
    pass


CLOSE_SESSION_CLOSED = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseSessionResult(Message):
    status: int = pb(1, Kind.INT32)


# Every Flight SQL command a descriptor, ticket or DoPut may carry, by its name.
COMMANDS: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        CommandGetSqlInfo,
        CommandGetXdbcTypeInfo,
        CommandGetCatalogs,
        CommandGetDbSchemas,
        CommandGetTables,
        CommandGetTableTypes,
        CommandGetPrimaryKeys,
        CommandGetExportedKeys,
        CommandGetImportedKeys,
        CommandGetCrossReference,
        CommandStatementQuery,
        CommandStatementSubstraitPlan,
        CommandPreparedStatementQuery,
        CommandStatementUpdate,
        CommandPreparedStatementUpdate,
        CommandStatementIngest,
        TicketStatementQuery,
    )
}


def looks_like_any(raw: bytes) -> bool:
    """Whether ``raw`` starts as an ``Any`` of the Flight SQL package (field 1, its type URL)."""
    return raw[:1] == b"\x0a" and (TYPE_URL_PREFIX + PACKAGE).encode() in raw[2:64]


def unpack_command(raw: bytes) -> Message | None:
    """The Flight SQL command packed in ``raw``, or ``None`` if ``raw`` is no such ``Any``.

    Raises ``UnknownCommand`` for a command of the package that is not in
    ``COMMANDS``, and ``LocalProtocolError`` for malformed bytes.
    """
    if not looks_like_any(raw):
        return None
    packed = AnyMessage.decode(raw)
    name = type_name(packed.type_url)
    if name is None:
        return None
    cls = COMMANDS.get(name)
    if cls is None:
        raise UnknownCommand(name)
    return cls.decode(packed.value)


def type_name(type_url: str) -> str | None:
    """The command name in an ``Any`` type URL of the Flight SQL package, else ``None``."""
    prefix = TYPE_URL_PREFIX + PACKAGE
    if not type_url.startswith(prefix):
        return None
    return type_url[len(prefix) :]


def pack(message: Message, package: str = PACKAGE) -> bytes:
    """``message`` packed in an ``Any`` (as Flight SQL clients expect results and tickets)."""
    url = f"{TYPE_URL_PREFIX}{package}{type(message).__name__}"
    return AnyMessage(type_url=url, value=message.encode()).encode()


def unpack_as(raw: bytes, cls: type[AnyType]) -> AnyType:
    """An action body that is ``cls`` packed in an ``Any`` (or, leniently, ``cls`` bare)."""
    if raw[:1] == b"\x0a":
        for number, _wire, value in iter_fields(raw, cls.__name__):
            if number == 1 and bytes(value).startswith(TYPE_URL_PREFIX.encode()):
                packed = AnyMessage.decode(raw)
                return cls.decode(packed.value)
            break
    return cls.decode(raw)
