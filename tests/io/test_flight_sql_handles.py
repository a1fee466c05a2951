"""Flight SQL statement handles: stateless, signed, owned by a token, expiring."""

from __future__ import annotations

import pyarrow as pa
import pytest

from arrowport.config import Token
from arrowport.errors import ArrowportError
from arrowport.io import flight_sql_handles as handles
from arrowport.io.status import grpc_status
from arrowport.protocol.errors import GrpcStatus

ALICE = Token("alice-token-0123456789abcdef")
BOB = Token("bob-token-0123456789abcdef01", streams=("s",))


def test_a_handle_carries_its_query_and_values() -> None:
    """What is made is read back: the query text (any Unicode) and the bound row."""
    values = pa.record_batch({"a": [1], "b": ["x"]})
    raw = handles.make("SELECT ?, ? -- ünïcode", values, ALICE, now=100.0)
    got = handles.read(raw, ALICE, ttl=60, now=150.0)
    assert got.query == "SELECT ?, ? -- ünïcode" and got.issued == 100.0
    assert got.params is not None and got.params.equals(values)
    plain = handles.read(handles.make("SELECT 1", None, None), None, ttl=60)
    assert plain.query == "SELECT 1" and plain.params is None


def test_any_changed_byte_is_refused() -> None:
    """Changing any byte of a handle (query, values, time, owner or signature) is refused."""
    raw = handles.make("SELECT * FROM t", pa.record_batch({"a": [1]}), ALICE)
    for i in range(len(raw)):
        changed = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1 :]
        with pytest.raises(ArrowportError) as caught:
            handles.read(changed, ALICE, ttl=60)
        assert grpc_status(caught.value) is GrpcStatus.INVALID_ARGUMENT
    for junk in (b"", b"APQ1", raw[:-1], b"x" * 100):
        with pytest.raises(ArrowportError, match="not made by this server"):
            handles.read(junk, ALICE, ttl=60)


def test_a_handle_is_its_tokens() -> None:
    """Another token (or none, with auth off) cannot use it: PERMISSION_DENIED."""
    raw = handles.make("SELECT 1", None, ALICE)
    for other in (BOB, None):
        with pytest.raises(ArrowportError, match="another token") as caught:
            handles.read(raw, other, ttl=60)
        assert grpc_status(caught.value) is GrpcStatus.PERMISSION_DENIED
        with pytest.raises(ArrowportError, match="another token"):
            handles.check_owner(raw, other)
    handles.check_owner(raw, ALICE)


def test_a_handle_expires() -> None:
    """Older than the TTL it is refused (and may still be closed by its owner)."""
    raw = handles.make("SELECT 1", None, ALICE, now=1000.0)
    handles.read(raw, ALICE, ttl=60, now=1060.0)
    with pytest.raises(ArrowportError, match=r"expired.*prepared_statement_ttl"):
        handles.read(raw, ALICE, ttl=60, now=1060.5)
    handles.check_owner(raw, ALICE)


def test_sizes_are_bounded() -> None:
    """A query over 1 MiB, or values over 1 MiB as IPC, make no handle (RESOURCE_EXHAUSTED)."""
    with pytest.raises(ArrowportError, match="at most 1048576 bytes") as caught:
        handles.make("x" * (handles.MAX_QUERY_BYTES + 1), None, None)
    assert grpc_status(caught.value) is GrpcStatus.RESOURCE_EXHAUSTED
    big = pa.record_batch({"a": ["x" * handles.MAX_PARAMETER_BYTES]})
    with pytest.raises(ArrowportError, match="parameter values"):
        handles.make("SELECT ?", big, None)
