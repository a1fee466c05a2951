"""grpc-timeout parsing and DoGet's message slicing, without a server."""

from __future__ import annotations

import pyarrow as pa
import pytest

from arrowport.io.status import grpc_status
from arrowport.protocol import ArrowportError, GrpcStatus
from arrowport.protocol.flight_encoder import FLIGHT_DATA_OVERHEAD, fitting_slices
from arrowport.protocol.grpc import parse_timeout


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"99999999S", 99999999.0),
        (b"250m", 0.25),
        (b"1500u", 0.0015),
        (b"7n", 7e-9),
        (b"00000001S", 1.0),
    ],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    """Each unit of the gRPC spec (H M S m u n) scales up to 8 digits to seconds."""
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", [b"", b"S", b"1", b"123456789S", b"1s", b"1h", b"-1S", b" 1S", b"1.5S", b"\xd9\xa1S"]
)
def test_malformed_grpc_timeout_is_invalid_argument(value: bytes) -> None:
    """Anything but 1-8 ASCII digits and one unit is INVALID_ARGUMENT naming the header."""
    with pytest.raises(ArrowportError) as raised:
        parse_timeout(value)
    assert grpc_status(raised.value) is GrpcStatus.INVALID_ARGUMENT
    assert "grpc-timeout" in raised.value.detail


def test_slices_fit_the_limit_and_keep_every_row_in_order() -> None:
    """A batch ~40x the limit comes out as slices each within it, rows unchanged and in order."""
    rows = 20_000
    batch = pa.record_batch(
        {"id": pa.array(range(rows)), "s": pa.array([("z" * (i % 300)) for i in range(rows)])}
    )
    limit = 64 * 1024
    slices = list(fitting_slices(batch, limit))
    assert len(slices) > 1
    assert all(pa.ipc.get_record_batch_size(s) <= limit - FLIGHT_DATA_OVERHEAD for s in slices)
    assert pa.Table.from_batches(slices).equals(pa.Table.from_batches([batch]))


def test_a_batch_within_the_limit_is_not_sliced() -> None:
    """A batch that fits is sent as it is (one message)."""
    batch = pa.record_batch({"id": pa.array(range(100))})
    assert list(fitting_slices(batch, 1024 * 1024)) == [batch]


def test_one_row_over_the_limit_is_resource_exhausted() -> None:
    """A single row larger than the limit: RESOURCE_EXHAUSTED naming flight.max_message_size."""
    batch = pa.record_batch({"s": pa.array(["a", "b" * 100_000, "c"])})
    with pytest.raises(ArrowportError) as raised:
        list(fitting_slices(batch, 64 * 1024))
    assert grpc_status(raised.value) is GrpcStatus.RESOURCE_EXHAUSTED
    assert "flight.max_message_size (65536 bytes)" in raised.value.detail
