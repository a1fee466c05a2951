"""The Flight SQL messages (``protocol/flight_sql.py``): bytes built by hand, round trips.

Bytes only. pyarrow ships no Flight SQL protos, so the expected encodings are
written out field by field from ``FlightSql.proto`` (tag = number << 3 | wire
type; 0x0a is field 1 length-delimited, 0x08 field 1 varint, and so on).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from arrowport.protocol import GrpcStatus, LocalProtocolError
from arrowport.protocol import flight_sql as sql
from arrowport.protocol.protobuf import Kind, Message, encode_varint, fields_of

URL = b"type.googleapis.com/arrow.flight.protocol.sql."


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field of a small message (number < 16, length < 128)."""
    assert number < 16 and len(data) < 128
    return bytes((number << 3 | 2, len(data))) + data


def _any(name: str, value: bytes) -> bytes:
    url = URL + name.encode()
    return bytes((0x0A, len(url))) + url + b"\x12" + encode_varint(len(value)) + value


MESSAGES = [
    cls
    for _, cls in inspect.getmembers(sql, inspect.isclass)
    if issubclass(cls, Message) and cls is not Message and cls.__module__ == sql.__name__
]

_SAMPLES: dict[Kind, Any] = {
    Kind.INT32: -7,
    Kind.INT64: -(1 << 40),
    Kind.UINT32: 0xFFFF_FFFF,
    Kind.UINT64: 1 << 63,
    Kind.BOOL: True,
    Kind.BYTES: b"\x00\xffhandle",
    Kind.STRING: "naïve_%",
}


def _sample(cls: type[Message]) -> Message:
    """An instance of ``cls`` with every field set to a value that is not its default."""
    values: dict[str, Any] = {}
    for f in fields_of(cls).values():
        if f.kind is Kind.IGNORED:
            continue
        if f.kind is Kind.MESSAGE:
            assert f.message is not None
            one: Any = _sample(f.message)
        else:
            one = _SAMPLES[f.kind]
        values[f.name] = (one, one) if f.repeated else one
    return cls(**values)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_every_message_round_trips_with_every_field_set(cls: type[Message]) -> None:
    """Each message decodes its own encoding to an equal value, all fields non-default."""
    message = _sample(cls)
    assert cls.decode(message.encode()) == message
    assert cls.decode(b"") == cls()  # absent fields: the proto3 defaults


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_every_message_skips_unknown_fields(cls: type[Message]) -> None:
    """Unknown fields (here numbers 900 and 901, varint and bytes) are skipped, not refused."""
    message = _sample(cls)
    unknown = b"\xa0\x38\x05" + b"\xaa\x38\x02hi"  # field 900 varint 5, field 901 "hi"
    assert cls.decode(unknown + message.encode() + unknown) == message


def test_get_tables_bytes_by_hand() -> None:
    """CommandGetTables: optional strings, a repeated string and a bool, in field order."""
    command = sql.CommandGetTables(
        catalog="duckdb",
        table_name_filter_pattern="ev%",
        table_types=("TABLE", "VIEW"),
        include_schema=True,
    )
    expected = (
        _field(1, b"duckdb") + _field(3, b"ev%") + _field(4, b"TABLE") + _field(4, b"VIEW")
    ) + b"\x28\x01"
    assert command.encode() == expected
    assert sql.CommandGetTables.decode(expected) == command


def test_optional_fields_keep_presence() -> None:
    """An optional string sent empty is "" (the catalog-less one); one not sent is None."""
    empty = sql.CommandGetDbSchemas(catalog="")
    assert empty.encode() == b"\x0a\x00"
    assert sql.CommandGetDbSchemas.decode(b"\x0a\x00").catalog == ""
    absent = sql.CommandGetDbSchemas.decode(b"")
    assert (absent.catalog, absent.db_schema_filter_pattern) == (None, None)
    assert sql.CommandGetXdbcTypeInfo(data_type=0).encode() == b"\x08\x00"
    assert sql.CommandGetXdbcTypeInfo.decode(b"\x08\x00").data_type == 0
    assert sql.CommandGetXdbcTypeInfo.decode(b"").data_type is None
    negative = sql.CommandGetXdbcTypeInfo.decode(b"\x08" + b"\xfb" + b"\xff" * 8 + b"\x01")
    assert negative.data_type == -5  # XDBC_BIGINT, as a 10-byte varint


def test_sql_info_ids_decode_packed_and_unpacked() -> None:
    """Repeated uint32 info: written packed; read packed, unpacked, or both mixed."""
    ids = (8, 10, 504, 0)
    packed = b"\x0a\x05" + b"\x08\x0a\xf8\x03\x00"
    assert sql.CommandGetSqlInfo(info=ids).encode() == packed
    unpacked = b"\x08\x08\x08\x0a\x08\xf8\x03\x08\x00"
    assert sql.CommandGetSqlInfo.decode(packed).info == ids
    assert sql.CommandGetSqlInfo.decode(unpacked).info == ids
    assert (
        sql.CommandGetSqlInfo.decode(b"\x08\x08" + b"\x0a\x03\x0a\xf8\x03" + b"\x08\x00").info
        == ids
    )
    assert sql.CommandGetSqlInfo().encode() == b""  # no ids: every id


def test_statement_ingest_bytes_by_hand() -> None:
    """CommandStatementIngest: a nested message, optionals, a bool and field 1000's map."""
    command = sql.CommandStatementIngest(
        table_definition_options=sql.TableDefinitionOptions(
            if_not_exist=sql.TABLE_NOT_EXIST_CREATE, if_exists=sql.TABLE_EXISTS_APPEND
        ),
        table="t",
        schema="main",
        catalog="duckdb",
        temporary=True,
        options=(sql.StringMapEntry(key="k", value="v"),),
    )
    expected = (
        _field(1, b"\x08\x01\x10\x02")
        + _field(2, b"t")
        + _field(3, b"main")
        + _field(4, b"duckdb")
        + b"\x28\x01"
        + b"\xc2\x3e\x06"  # field 1000, length-delimited: tag 8002 as a varint
        + _field(1, b"k")
        + _field(2, b"v")
    )
    assert command.encode() == expected
    assert sql.CommandStatementIngest.decode(expected) == command
    bare = sql.CommandStatementIngest.decode(_field(2, b"t"))
    assert bare.table_definition_options is None
    assert (bare.schema, bare.catalog, bare.transaction_id) == (None, None, None)


def test_results_bytes_by_hand() -> None:
    """DoPutUpdateResult (int64, negative as ten bytes), CloseSessionResult, prepared results."""
    assert sql.DoPutUpdateResult(record_count=3).encode() == b"\x08\x03"
    minus = b"\x08" + b"\xff" * 9 + b"\x01"
    assert sql.DoPutUpdateResult(record_count=-1).encode() == minus
    assert sql.DoPutUpdateResult.decode(minus).record_count == -1
    closed = sql.CloseSessionResult(status=sql.CLOSE_SESSION_CLOSED)
    assert closed.encode() == b"\x08\x01"
    result = sql.ActionCreatePreparedStatementResult(
        prepared_statement_handle=b"h", dataset_schema=b"s"
    )
    assert result.encode() == _field(1, b"h") + _field(2, b"s")


def test_pack_is_an_any_with_the_package_type_url() -> None:
    """pack() writes Any{type_url, value}; unpack_command reads the command back."""
    command = sql.CommandGetTables(catalog="delta", include_schema=True)
    raw = sql.pack(command)
    assert raw == _any("CommandGetTables", command.encode())
    assert sql.unpack_command(raw) == command
    empty = sql.pack(sql.CommandGetCatalogs())
    assert empty == _any("CommandGetCatalogs", b"")[:-2]  # no value field for an empty message
    assert sql.unpack_command(empty) == sql.CommandGetCatalogs()


@pytest.mark.parametrize(
    "raw",
    [b"events", b'{"stream": "events"}', b'{"table": "t", "backend": "delta"}', b"", b"\x0a"],
    ids=["name", "json-stream", "json-table", "empty", "lone-0x0a"],
)
def test_plain_flight_commands_are_not_flight_sql(raw: bytes) -> None:
    """A stream name, JSON or empty cmd is not an Any of the package: None, for plain Flight."""
    assert sql.unpack_command(raw) is None


def test_an_any_of_another_package_is_not_flight_sql() -> None:
    """An Any whose type URL is outside arrow.flight.protocol.sql is not a command."""
    url = b"type.googleapis.com/arrow.flight.protocol.FlightDescriptor"
    assert sql.unpack_command(bytes((0x0A, len(url))) + url) is None


@pytest.mark.parametrize("name", ["CommandGetNothing", "ActionBeginTransactionRequest"])
def test_unknown_commands_are_unimplemented_naming_them(name: str) -> None:
    """A command of the package this server has no message for: UNIMPLEMENTED, named."""
    with pytest.raises(sql.UnknownCommand) as caught:
        sql.unpack_command(_any(name, b""))
    assert caught.value.grpc_status == GrpcStatus.UNIMPLEMENTED
    assert name in str(caught.value.detail)
    assert caught.value.name == name


@pytest.mark.parametrize(
    "raw",
    [
        _any("CommandGetTables", b"")[:-3],  # the Any cut inside its type URL
        _any("CommandGetTables", b"\x0a\x09duck"),  # a string longer than the message
        _any("CommandGetTables", b"\x0a\x02\xff\xfe"),  # a catalog that is not UTF-8
        _any("CommandGetSqlInfo", b"\x0a\x02\x80\x80"),  # a packed run ending mid-varint
        _any("CommandGetTables", b"\x2a\x01\x01"),  # include_schema with the wrong wire type
        _any("CommandGetCatalogs", b"\x0b"),  # a group (wire type 3)
    ],
    ids=["truncated-any", "overlong-string", "bad-utf8", "cut-packed", "wrong-wire", "group"],
)
def test_malformed_commands_are_invalid_argument(raw: bytes) -> None:
    """Malformed bytes in or around a command: LocalProtocolError, INVALID_ARGUMENT."""
    with pytest.raises(LocalProtocolError) as caught:
        sql.unpack_command(raw)
    assert caught.value.grpc_status == GrpcStatus.INVALID_ARGUMENT
    assert not isinstance(caught.value, sql.UnknownCommand)


def test_action_bodies_unpack_wrapped_or_bare() -> None:
    """unpack_as reads an action body packed in an Any, or (leniently) bare."""
    request = sql.ActionClosePreparedStatementRequest(prepared_statement_handle=b"\x01h")
    wrapped = sql.pack(request)
    assert sql.unpack_as(wrapped, sql.ActionClosePreparedStatementRequest) == request
    assert sql.unpack_as(request.encode(), sql.ActionClosePreparedStatementRequest) == request


def test_every_command_is_dispatchable_by_name() -> None:
    """COMMANDS maps each command's own name to its class (the Any type URL's last part)."""
    assert all(name == cls.__name__ for name, cls in sql.COMMANDS.items())
    assert all(dataclasses.is_dataclass(cls) for cls in sql.COMMANDS.values())
    assert {"CommandGetSqlInfo", "CommandGetTables", "CommandStatementIngest"} <= set(sql.COMMANDS)
