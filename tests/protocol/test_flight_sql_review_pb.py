"""Review findings on the protobuf codec under Flight SQL commands: a 4 MiB control message
of tiny fields (millions of packed ids, repeated strings or scalars) is refused at a field
count, before it costs seconds of the event loop and hundreds of MB."""

from __future__ import annotations

import time

import pytest

from arrowport.protocol.errors import LocalProtocolError
from arrowport.protocol.flight_pb import FlightDescriptor
from arrowport.protocol.flight_sql import (
    CommandGetSqlInfo,
    CommandGetTables,
    CommandStatementIngest,
    CommandStatementQuery,
    StringMapEntry,
)
from arrowport.protocol.protobuf import MAX_FIELDS, encode_varint

SIZE = 4 * 1024 * 1024 - 64  # gRPC's MAX_CONTROL_MESSAGE, less the Any's own bytes


def _packed(field: int, body: bytes) -> bytes:
    return encode_varint(field << 3 | 2) + encode_varint(len(body)) + body


CASES = {
    "packed sql info ids": (CommandGetSqlInfo, _packed(1, b"\x01" * SIZE)),
    "unpacked sql info ids": (CommandGetSqlInfo, b"\x08\x01" * (SIZE // 2)),
    "table types": (CommandGetTables, b"\x22\x00" * (SIZE // 2)),
    "ingest options": (CommandStatementIngest, b"\x12\x01t" + b"\xc2\x3e\x00" * (SIZE // 3)),
    "a scalar sent again and again": (CommandStatementQuery, b"\x0a\x00" * (SIZE // 2)),
    "unknown fields": (CommandStatementQuery, b"\xf8\x07\x01" * (SIZE // 3)),
    "descriptor type": (FlightDescriptor, b"\x08\x01" * (SIZE // 2)),
}


@pytest.mark.parametrize("case", CASES)
def test_a_message_of_millions_of_fields_is_refused_at_once(case: str) -> None:
    """Past MAX_FIELDS fields (packed elements included) decode raises LocalProtocolError
    (INVALID_ARGUMENT) naming the limit, in well under a second."""
    cls, raw = CASES[case]
    started = time.monotonic()
    with pytest.raises(LocalProtocolError, match=f"more than {MAX_FIELDS} fields"):
        cls.decode(raw)
    assert time.monotonic() - started < 1.0


def test_messages_up_to_the_field_limit_decode() -> None:
    """MAX_FIELDS fields (every SqlInfo id a client could ask, many options) still decode."""
    ids = tuple(range(MAX_FIELDS))
    assert CommandGetSqlInfo.decode(CommandGetSqlInfo(info=ids).encode()).info == ids
    options = tuple(StringMapEntry(key=f"k{i}", value="v") for i in range(MAX_FIELDS - 1))
    command = CommandStatementIngest(table="t", options=options)
    assert CommandStatementIngest.decode(command.encode()).options == options
