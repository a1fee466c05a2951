"""The flatbuffer reader does not materialize huge buffer vectors."""

from __future__ import annotations

import struct

import pytest

from arrowport.protocol._flatbuf import BufferSpec, BufferTable
from arrowport.protocol.errors import LocalProtocolError


def test_buffer_table_reads_on_demand() -> None:
    """A million-entry buffer vector costs its raw bytes only; entries unpack when read."""
    raw = memoryview(struct.pack("<qq", 8, 16) * 1_000_000)
    table = BufferTable(raw)
    assert len(table) == 1_000_000
    assert table[0] == BufferSpec(8, 16) and table[-1] == BufferSpec(8, 16)
    assert sum(1 for _ in table) == 1_000_000


def test_buffer_table_refuses_negative_entries() -> None:
    """A negative offset or length is malformed metadata, whether indexed or iterated."""
    table = BufferTable(memoryview(struct.pack("<qq", 0, 8) + struct.pack("<qq", -1, 8)))
    with pytest.raises(LocalProtocolError):
        table[1]
    with pytest.raises(LocalProtocolError):
        list(table)
