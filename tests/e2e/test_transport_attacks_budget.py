"""The memory budget under attack on a real server (issue 17): ZSTD bombs, dictionary
amplification, large uploads held before their last bytes, tiny bodies that declare huge
row counts.

The server runs with ``limits.max_inflight_bytes: 64MiB``, ``limits.max_request_decoded_bytes:
64MiB`` and ``limits.max_request_rows: 1000000``. For each attack: fresh clients are answered
within 1 s during and after it; the server's RSS grows by at most the budget (64 MiB) plus the
fixed ALLOWANCE of 48 MiB (tests/e2e/attack_support.py); refused requests get 413 and write
nothing. The figures are printed and in every assert message.
"""

from __future__ import annotations

import contextlib
import socket
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from attack_support import (
    ALLOWANCE,
    ATTACK_SECONDS,
    BUDGET,
    MiB,
    attack,
    in_threads,
    start_server,
    written,
)
from support import ARROW, Server, ipc_bytes, start_upload

BUDGET_CONFIG: dict[str, Any] = {
    "limits": {
        "max_inflight_bytes": "64MiB",
        "max_request_decoded_bytes": "64MiB",
        "max_request_rows": 1_000_000,
    }
}


@pytest.fixture
def budget_server(server_factory: type[Server], tmp_path: Path) -> Server:
    return start_server(server_factory, tmp_path, BUDGET_CONFIG)


@cache
def _zstd_bomb() -> bytes:
    """One batch of 16 Mi int64 zeros (128 MiB decoded), ZSTD: about 10 kB on the wire."""
    zeros = pa.repeat(pa.scalar(0, pa.int64()), 16 * MiB)
    return ipc_bytes(pa.table({"id": zeros}), compression="zstd")


def _post(server: Server, stream: str, body: bytes) -> int:
    with httpx.Client(timeout=60) as client:
        response = client.post(
            f"{server.url}/ingest/{stream}", content=body, headers={"Content-Type": ARROW}
        )
        return response.status_code


def test_zstd_bombs_are_refused_before_decompression(budget_server: Server) -> None:
    """Four concurrent ZSTD bodies of ~10 kB, each declaring 128 MiB decoded, are refused 413
    from the declared sizes; the event loop stays responsive and memory flat."""
    body = _zstd_bomb()
    statuses: list[object] = []

    def run() -> None:
        statuses.extend(
            in_threads(*(lambda i=i: _post(budget_server, f"bomb{i}", body) for i in range(4)))
        )

    report = attack(budget_server, run, BUDGET + ALLOWANCE)
    report.notes.append(f"{len(body):,}-byte bodies answered {statuses}")
    report.check_service()
    assert statuses == [413] * 4, str(report)
    assert sum(written(budget_server, f"bomb{i}") for i in range(4)) == 0, str(report)


def test_dictionary_amplification_counts_the_expanded_size(budget_server: Server) -> None:
    """A ~100 kB stream whose one 100 kB dictionary value is referenced 2,000 times
    (200 MB expanded) is refused 413: a dictionary column counts at its expanded size."""
    indices = pa.array([0] * 2000, pa.int32())
    column = pa.DictionaryArray.from_arrays(indices, pa.array(["v" * 100_000]))
    body = ipc_bytes(pa.table({"blob": column}))
    statuses: list[int] = []

    def run() -> None:
        statuses.append(_post(budget_server, "amplified", body))

    report = attack(budget_server, run, BUDGET + ALLOWANCE)
    report.notes.append(f"{len(body):,}-byte body answered {statuses}")
    report.check_service()
    assert statuses == [413], str(report)
    assert written(budget_server, "amplified") == 0, str(report)


def test_received_undecoded_bytes_count_toward_the_budget(budget_server: Server) -> None:
    """Four uploads of one 48 MiB batch each, held 1 KiB before their end: bytes received
    but not yet decoded count toward max_inflight_bytes, so RSS stays within the budget
    (the server stops reading, or refuses 429); the abandoned uploads write nothing."""
    batch = pa.table({"id": pa.array(range(6 * MiB), pa.int64())})
    data = ipc_bytes(batch)
    sockets: list[socket.socket] = []
    sent: list[object] = []

    def upload(i: int) -> int:
        sock = start_upload(budget_server.url, f"held{i}", len(data))
        sockets.append(sock)
        sock.settimeout(ATTACK_SECONDS + 1)
        view = memoryview(data)[: len(data) - 1024]
        total = 0
        with contextlib.suppress(OSError):
            while total < len(view):
                total += sock.send(view[total:])
        return total

    def run() -> None:
        sent.extend(in_threads(*(lambda i=i: upload(i) for i in range(4))))
        for sock in sockets:
            sock.close()

    report = attack(budget_server, run, BUDGET + ALLOWANCE)
    report.notes.append(f"sent {[int(s) // MiB for s in sent]} MiB of {len(data) // MiB} MiB each")
    report.check_service()
    assert sum(written(budget_server, f"held{i}") for i in range(4)) == 0, str(report)


def _null_rows(rows: int) -> pa.Table:
    return pa.table({"nothing": pa.nulls(rows)})


def _ree_rows(rows: int) -> pa.Table:
    ends = pa.array([rows], pa.int32())
    return pa.table({"run": pa.RunEndEncodedArray.from_arrays(ends, pa.array([7], pa.int64()))})


@pytest.mark.parametrize("make", [_null_rows, _ree_rows], ids=["null_typed", "run_end_encoded"])
def test_tiny_bodies_declaring_huge_row_counts_are_refused(
    budget_server: Server, make: Any
) -> None:
    """A body of a few hundred bytes whose one column (null-typed, or run-end encoded)
    declares 20 million rows is refused 413 by max_request_rows (1,000,000); nothing is
    written."""
    body = ipc_bytes(make(20_000_000))
    statuses: list[int] = []

    def run() -> None:
        statuses.append(_post(budget_server, "huge", body))

    report = attack(budget_server, run, BUDGET + ALLOWANCE)
    report.notes.append(f"{len(body):,}-byte body answered {statuses}")
    report.check_service()
    assert statuses == [413], str(report)
    assert written(budget_server, "huge") == 0, str(report)
