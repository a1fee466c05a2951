"""What a request costs, told before it is allocated, decompressed or expanded.

Decoders made with ``announce=True`` announce each body before allocating it and
each batch (with its decoded size) before decompressing it; request totals
(``max_request_rows``, ``max_request_decoded_bytes``) are refused from headers;
null, run-end-encoded and dictionary columns count at their expanded size.
Each IPC test runs three ways (whole, byte by byte, trailing bytes).
"""

from __future__ import annotations

import base64
import zlib

import flight_testing
import pyarrow as pa
import pytest
from ipc_testing import GOLDENS, decode, golden_bytes, split_stream, write_stream, write_table

from arrowport.protocol import NEED_DATA, BatchReceived, GrpcStatus, IPCStreamDecoder
from arrowport.protocol.events import BatchAnnounced, BodyAnnounced, DictionaryReceived
from arrowport.protocol.flight import FlightDataDecoder

ZEROS = pa.table({"x": pa.array([0] * 100_000, pa.int64())})  # 800 kB decoded


def _limit(error: object, name: str) -> None:
    assert getattr(error, "error", None) == "limit_exceeded"
    assert getattr(error, "http_status", None) == 413
    assert getattr(error, "grpc_status", None) is GrpcStatus.RESOURCE_EXHAUSTED
    assert f"limits.{name}" in str(getattr(error, "detail", ""))


def test_ipc_body_is_announced_before_it_is_allocated() -> None:
    """BodyAnnounced comes first; the body is allocated only at the next next_event."""
    data = write_table(ZEROS)
    body = split_stream(data)[0][1].body
    decoder = IPCStreamDecoder(announce=True)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    decoder.next_event()  # the schema
    announced = decoder.next_event()
    assert isinstance(announced, BodyAnnounced)
    assert announced.nbytes == len(body)
    assert decoder.statistics()["allocated_bytes"] == 0
    batch = decoder.next_event()
    assert decoder.statistics()["allocated_bytes"] == len(body)
    assert isinstance(batch, BatchAnnounced)
    assert batch.decoded_bytes == len(body)
    received = decoder.decode_announced()
    assert received.batch.num_rows == 100_000
    assert received.decoded_bytes == len(body)


def test_ipc_announces_every_body_and_batch(mode: str) -> None:
    """With announce=True every body and batch is announced, fed any way, and the batch follows."""
    data = write_stream(ZEROS.schema, ZEROS.to_batches(max_chunksize=40_000), compression="zstd")
    decoded = decode(data, mode, announce=True).ok()
    kinds = [k for k in decoded.kinds if k != "StreamEnded"]
    assert kinds == ["SchemaReceived"] + ["BodyAnnounced", "BatchAnnounced", "BatchReceived"] * 3
    announced = [e for e in decoded.events if isinstance(e, BatchAnnounced)]
    assert all(e.compressed for e in announced)
    assert [e.decoded_bytes for e in announced] == [e.decoded_bytes for e in decoded.received]
    bodies = sum(e.nbytes for e in decoded.events if isinstance(e, BodyAnnounced))
    assert decoded.decoder.statistics()["allocated_bytes"] == bodies


def test_flight_body_is_announced_before_it_is_allocated() -> None:
    """The FlightData decoder announces each data_body before allocating it, and decodes later."""
    messages = flight_testing.flight_messages(
        ZEROS.schema, ZEROS.to_batches(), app_metadata=lambda i: b"m%d" % i, compression="zstd"
    )
    decoder = FlightDataDecoder(announce=True)
    decoder.receive_data(flight_testing.join(messages))
    received: list[BatchReceived] = []
    while (event := decoder.next_event()) is not NEED_DATA:
        if isinstance(event, BodyAnnounced):
            assert decoder.statistics()["allocated_bytes"] == 0
        if isinstance(event, BatchAnnounced):
            assert decoder.statistics()["allocated_bytes"] == len(messages[1].body)
            assert event.decoded_bytes == 800_000
            received.append(decoder.decode_announced())
    (batch,) = received
    assert batch.app_metadata == b"m0"
    assert batch.batch.num_rows == 100_000


def test_request_rows_refused_at_the_header(mode: str) -> None:
    """Over max_request_rows, the batch is refused from its header: its body is never allocated."""
    data = write_stream(ZEROS.schema, ZEROS.to_batches(max_chunksize=60_000))
    decoded = decode(data, mode, announce=True, max_request_rows=100_000 - 1)
    _limit(decoded.raised(), "max_request_rows")
    assert len(decoded.received) == 1
    first_body = split_stream(data)[0][1].body
    assert decoded.decoder.statistics()["allocated_bytes"] == len(first_body)


def test_request_decoded_bytes_refused_before_decompression(mode: str) -> None:
    """A ZSTD batch that decodes past max_request_decoded_bytes is refused before it is decoded."""
    data = write_table(ZEROS, compression="zstd")
    assert len(data) < 2_000
    decoded = decode(data, mode, announce=True, max_request_decoded_bytes=500_000)
    _limit(decoded.raised(), "max_request_decoded_bytes")
    assert not any(isinstance(e, BatchAnnounced | BatchReceived) for e in decoded.events)
    plain = decode(data, mode, max_request_decoded_bytes=500_000)  # not announcing: the same
    _limit(plain.raised(), "max_request_decoded_bytes")
    assert plain.received == []


def test_dictionary_counts_at_its_expanded_size(mode: str) -> None:
    """One 10 kB dictionary value behind 500 indices counts as 500 x 10 kB, not 2 kB of indices."""
    value = "v" * 10_000
    column = pa.DictionaryArray.from_arrays(pa.array([0] * 500, pa.int32()), pa.array([value]))
    table = pa.table({"d": column})
    data = write_table(table)
    decoded = decode(data, mode, announce=True).ok()
    (received,) = decoded.received
    assert received.decoded_bytes >= 500 * 10_000
    kinds = decoded.kinds
    assert kinds.index("DictionaryReceived") < kinds.index("BatchAnnounced")
    dictionary = next(e for e in decoded.events if isinstance(e, DictionaryReceived))
    assert dictionary.decoded_bytes >= 10_000
    refused = decode(data, mode, announce=True, max_request_decoded_bytes=1_000_000)
    _limit(refused.raised(), "max_request_decoded_bytes")
    assert refused.received == []


def test_run_end_encoded_counts_its_logical_rows_at_the_header(mode: str) -> None:
    """A one-run REE column of 1 M int64 rows counts 8 MB before it is decoded, and is refused."""
    ree = pa.RunEndEncodedArray.from_arrays(pa.array([1_000_000], pa.int32()), pa.array([7]))
    data = write_table(pa.table({"r": ree}))
    assert len(data) < 1_000
    decoded = decode(data, mode, announce=True).ok()
    announced = next(e for e in decoded.events if isinstance(e, BatchAnnounced))
    assert announced.decoded_bytes >= 8_000_000
    assert decoded.received[0].decoded_bytes >= 8_000_000
    refused = decode(data, mode, announce=True, max_request_decoded_bytes=4_000_000)
    _limit(refused.raised(), "max_request_decoded_bytes")
    assert not any(isinstance(e, BatchAnnounced) for e in refused.events)


def test_null_column_counts_per_row(mode: str) -> None:
    """A null column has no buffers, yet counts a byte per row; its rows count toward the limit."""
    data = write_table(pa.table({"n": pa.nulls(200_000)}))
    assert len(data) < 1_000
    decoded = decode(data, mode, announce=True).ok()
    assert decoded.received[0].decoded_bytes >= 200_000
    refused = decode(data, mode, max_request_rows=100_000)
    _limit(refused.raised(), "max_request_rows")
    assert refused.received == []


@pytest.mark.parametrize("compression", [None, "lz4"])
def test_flight_request_limits_refuse_like_http(compression: str | None) -> None:
    """The FlightData decoder refuses request totals with the same 413 / RESOURCE_EXHAUSTED."""
    messages = flight_testing.flight_messages(
        ZEROS.schema, ZEROS.to_batches(max_chunksize=30_000), compression=compression
    )
    data = flight_testing.join(messages)
    rows = flight_testing.decode(data, max_request_rows=50_000)
    assert rows.error is not None
    _limit(rows.error, "max_request_rows")
    assert len(rows.received) == 1
    size = flight_testing.decode(data, max_request_decoded_bytes=300_000)
    assert size.error is not None
    _limit(size.error, "max_request_decoded_bytes")
    assert len(size.received) == 1


@pytest.mark.parametrize("name", sorted(GOLDENS))
@pytest.mark.parametrize("feed", ["whole", "bytewise"])
def test_announcing_changes_nothing_but_the_announcements(name: str, feed: str) -> None:
    """Every golden stream decodes to the same batches and sizes with announce=True; every
    allocated body was announced, and a batch's announced size (the header's lower bound)
    is never more than its final, exact one."""
    data = golden_bytes(name)
    plain = decode(data, feed).ok()
    announced = decode(data, feed, announce=True).ok()
    assert [e.batch for e in announced.received] == [e.batch for e in plain.received]
    sizes = [e.decoded_bytes for e in announced.received]
    assert sizes == [e.decoded_bytes for e in plain.received]
    bodies = [e.nbytes for e in announced.events if isinstance(e, BodyAnnounced)]
    assert sum(bodies) == announced.decoder.statistics()["allocated_bytes"]
    estimates = [e.decoded_bytes for e in announced.events if isinstance(e, BatchAnnounced)]
    assert len(estimates) == len(sizes)
    assert all(e <= s for e, s in zip(estimates, sizes, strict=True)), (estimates, sizes)


@pytest.mark.parametrize("value_type", [pa.string_view(), pa.binary_view(), pa.large_string()])
def test_view_and_large_dictionaries_are_sized(value_type: pa.DataType) -> None:
    """Dictionaries and REE columns of string_view, binary_view and large_string values (as
    Polars writes) count their referenced value lengths, and decode."""
    values = pa.array(["x" * 1000, "y"], value_type)
    column = pa.DictionaryArray.from_arrays(pa.array([0, 0, 1, None], pa.int32()), values)
    ree = pa.RunEndEncodedArray.from_arrays(pa.array([3, 4], pa.int32()), values)
    decoded = decode(write_table(pa.table({"d": column, "r": ree})), announce=True).ok()
    (received,) = decoded.received
    assert received.decoded_bytes >= 2 * 1000 + 1 + 3 * 1000 + 1
    assert received.batch.column(0).equals(column)


# A fuzzed string_view REE/dictionary stream (found by a mutation run of announce=True
# decoding): it passes full validation, yet pyarrow's cast of its views crashed the
# process; view lengths are now read from the views themselves.
_VIEW_CRASH = (
    "eNqtUTFOAzEQXN9d7i6RhVyg6AoKipQUEaLgCTwCiQSSDp1QoiBKCh7AAyh4AgUPoOQBfIXazHrtO2MIUiQ2Ga3X"
    "u7Pem7XW2pkiMsQ2Ik0lDajGCaYKKuBeUcM+Bx6Ac2CfmNOgsqQKLIMb6aEazp0AB0BBYniCFkCNH9/WPneE3pzm"
    "+A7nFxcrZfwbMb8FnpD/kJpxE72RATPg0NeugHfU8VxhRp44zGiS+Urgdn69Wa75Tr5buJRwKWM/ibhcs9q0F8t2"
    "sZZYA5W758d4Joxi3/w3sWmcRGntulNWuNxN13PU6SScPcxr/I1GJN87IdldTr0pj2BpLszMNvX+1PvjpDZPeCFm"
    "veeXfS3zrmAR/TM6u9xuJjzWbapi3cbfdcsLt8fH7qWfOj1HOg3/0Kmi7aa9N4keTaLjWaLjfdInxPEcgyROd0a/"
    "7GG4xVO0n7jvDnuj/9gbqcz/+z2y/wKOt2qw"
)


def test_regression_view_values_that_crash_a_cast_are_sized() -> None:
    """The fuzzed view stream decodes (or is refused) without crashing, its size counted."""
    data = zlib.decompress(base64.b64decode(_VIEW_CRASH))
    decoded = decode(data, announce=True).ok()
    (received,) = decoded.received
    assert received.decoded_bytes > 0
