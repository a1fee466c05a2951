"""Held streams and connections against a real server (issue 17): streams that never send
their message, answered streams never ended, preface-only connections, descriptor
exhaustion, DoGet readers that advertise a zero window.

The servers here run with a short stream idle deadline (attack_support.STREAM_IDLE_CONFIG:
ASSUMED key, see there). For each attack: fresh clients are answered within 1 s; the
server's RSS grows by at most the test's stated bound plus the fixed ALLOWANCE of 48 MiB;
held streams end (RST_STREAM, or their connection closed) within two idle deadlines; nothing
is written. The figures are printed and in every assert message.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
from attack_h2 import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    RawH2,
    frame,
    grpc_message,
    header_block,
    settings_frame,
)
from attack_support import (
    ALLOWANCE,
    IDLE_TIMEOUT,
    STREAM_IDLE_CONFIG,
    MiB,
    Report,
    attack,
    start_server,
    written,
)
from support import Server, ipc_bytes

# A held stream must be gone (reset, or its connection closed) this long after it went idle.
RELEASED_WITHIN = 2 * IDLE_TIMEOUT + 2.0


def _ticket(table: str) -> bytes:
    raw = table.encode()
    return grpc_message(b"\x0a" + bytes([len(raw)]) + raw)  # Ticket{ticket}


def _released(held: list[tuple[RawH2, list[int]]], seconds: float) -> list[bool]:
    """For each (connection, stream ids): whether every stream was reset, or the connection
    closed, within ``seconds`` (one deadline for all)."""

    def gone(attacker: RawH2, sids: list[int]) -> bool:
        return attacker.eof or all(s in attacker.resets for s in sids)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(gone(a, sids) for a, sids in held):
        time.sleep(0.05)
    return [gone(a, sids) for a, sids in held]


def _hold(attacker: RawH2, streams: int, method: str = "DoAction") -> list[int]:
    """Open ``streams`` streams with HEADERS only: the call waits for a message never sent."""
    block = header_block(method)
    sids = list(range(1, 2 * streams, 2))
    attacker.send(b"".join(frame(HEADERS, END_HEADERS, sid, block) for sid in sids))
    return sids


def test_held_streams_time_out_and_cost_bounded_memory(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """40 connections x 32 HEADERS-only streams (DoAction, DoGet, Handshake) cost bounded
    memory, and every stream is released after the stream idle deadline."""
    server = start_server(server_factory, tmp_path, STREAM_IDLE_CONFIG)
    methods = ["DoAction", "DoGet", "Handshake"]
    attackers: list[tuple[RawH2, list[int]]] = []

    def run() -> None:
        for i in range(40):
            attacker = RawH2(server)
            attackers.append((attacker, _hold(attacker, 32, methods[i % 3])))
        time.sleep(1.0)  # let the server take them all in

    report = attack(server, run, ALLOWANCE)
    started = time.monotonic()
    released = _released(attackers, RELEASED_WITHIN)
    report.notes.append(
        f"{sum(released)}/{len(released)} connections' held streams released within "
        f"{time.monotonic() - started:.1f} s"
    )
    for a, _ in attackers:
        a.close()
    report.check_service()
    assert all(released), str(report)


def test_answered_streams_never_ended_are_released(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A Handshake answered but never ended by its client, and a call the server answered
    at once (unknown method) whose client never ends it, are released after the deadline."""
    server = start_server(server_factory, tmp_path, STREAM_IDLE_CONFIG)
    attacker = RawH2(server)
    attacker.send(
        frame(HEADERS, END_HEADERS, 1, header_block("Handshake"))
        + frame(DATA, 0, 1, grpc_message(b"\x08\x00"))  # HandshakeRequest{}; never ended
        + frame(HEADERS, END_HEADERS, 3, header_block("NoSuchMethod"))
    )
    report = Report(bound=ALLOWANCE)
    started = time.monotonic()
    (released,) = _released([(attacker, [1, 3])], RELEASED_WITHIN)
    took = time.monotonic() - started
    answered = {sid for _, _, sid, _ in attacker.frames}
    attacker.close()
    report.notes.append(f"answered streams {sorted(answered)}; released {released} in {took:.1f} s")
    print(report)
    assert answered >= {1, 3}, str(report)
    assert released, str(report)


def test_preface_only_connections_cost_little_memory(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """200 connections that send the preface and SETTINGS and nothing more cost at most
    64 KiB each (receive buffers sized to what is in flight, not 4 MiB each)."""
    server = start_server(server_factory, tmp_path)
    count, each = 200, 64 * 1024
    attackers: list[RawH2] = []

    def run() -> None:
        for _ in range(count):
            attackers.append(RawH2(server, source="127.0.0.3"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(a.received == 0 for a in attackers):
            time.sleep(0.05)  # every connection served (its SETTINGS received)
        time.sleep(0.5)

    report = attack(server, run, ALLOWANCE + count * each)
    served = sum(a.received > 0 for a in attackers)
    report.notes.append(
        f"{served}/{count} connections served; {(report.growth / count) / 1024:.0f} KiB each"
    )
    for a in attackers:
        a.close()
    report.check_service()
    assert served == count, str(report)


def test_connections_over_the_limits_are_refused_not_the_server_locked(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Under a 128-descriptor limit, with max_connections_per_client: 32, 150 connections
    from one address holding a stream each: those over the limit are closed at once, accept
    never fails with EMFILE, and a client from another address is answered within 1 s."""
    limits = {"limits": {"max_connections_per_client": 32}}
    server = start_server(server_factory, tmp_path, STREAM_IDLE_CONFIG, limits, nofile=128)
    attackers: list[RawH2] = []

    def run() -> None:
        for _ in range(150):
            try:
                attacker = RawH2(server, source="127.0.0.2")
            except OSError:
                continue
            _hold(attacker, 1)
            attackers.append(attacker)
        time.sleep(1.0)

    report = attack(server, run, ALLOWANCE)
    held = sum(a.received > 0 and not a.eof for a in attackers)
    emfile = [line for line in server.log if "EMFILE" in line or "Too many open files" in line]
    report.notes.append(
        f"{held} of {len(attackers)} attacker connections held; {len(emfile)} EMFILE lines"
    )
    for a in attackers:
        a.close()
    report.check_service()
    assert held <= 32, str(report)
    assert not emfile, str(report) + "\n" + "".join(emfile[:3])


def _wide_table(server: Server, table: str, rows: int, width: int) -> None:
    value = b"x" * width
    data = pa.table({"id": pa.array(range(rows), pa.int64()), "blob": pa.array([value] * rows)})
    assert server.post(table, ipc_bytes(data)).status_code == 200


def test_doget_readers_with_a_zero_window_cost_bounded_memory(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Six DoGet streams of a wide table (1 KiB rows) whose client advertises a zero window
    and never reads: at most 24 MiB each (the scan's batch of 4,096 rows, its IPC message
    and FlightData framing of at most flight.max_message_size, DuckDB's scan state; 50 MB
    each before), and released after the stream idle deadline (no window progress)."""
    server = start_server(server_factory, tmp_path, STREAM_IDLE_CONFIG)
    _wide_table(server, "wide", 40_000, 1024)
    streams, each = 6, 24 * MiB
    attackers: list[RawH2] = []

    def run() -> None:
        for _ in range(streams // 2):
            attacker = RawH2(server, settings=settings_frame(initial_window_size=0))
            for sid in (1, 3):
                attacker.send(
                    frame(HEADERS, END_HEADERS, sid, header_block("DoGet"))
                    + frame(DATA, END_STREAM, sid, _ticket("wide"))
                )
            attackers.append(attacker)
        time.sleep(1.5)

    report = attack(server, run, ALLOWANCE + streams * each)
    started = time.monotonic()
    released = _released([(a, [1, 3]) for a in attackers], RELEASED_WITHIN)
    took = time.monotonic() - started
    report.notes.append(f"{sum(released)}/{len(released)} connections released in {took:.1f} s")
    for a in attackers:
        a.close()
    report.check_service()
    assert all(released), str(report)
    assert written(server, "wide") == 40_000
