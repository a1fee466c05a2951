"""HTTP/2 floods against a real server (issue 17): Rapid Reset, PING and PING(ACK) floods,
empty DATA frames, a client that never reads, CONTINUATION.

Each attack is scaled down from the issue's figures but still far past any sane budget. For
each: fresh clients (a new connection each) are answered within 1 s during and after it
(GET /health, then a small POST /ingest that commits); the server's RSS grows by at most the
test's bound: ``limits.max_inflight_bytes`` (64 MiB, where data is involved) or nothing, plus
a fixed ALLOWANCE of 48 MiB (tests/e2e/attack_support.py); the attacking connection gets
GOAWAY ENHANCE_YOUR_CALM (or is closed) where the issue says so; nothing is written. The
figures are printed and in every assert message.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from attack_h2 import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    HEADERS,
    PING,
    RST_STREAM,
    RawH2,
    frame,
    frames_of,
    grpc_message,
    header_block,
    repeat,
)
from attack_support import (
    ALLOWANCE,
    ATTACK_SECONDS,
    MiB,
    attack,
    in_threads,
    start_server,
    written,
)
from support import Server

TOKEN = "attack-test-token-0123456789abcdef"
# The connection must be gone this long after a flood stopped (GOAWAY then close).
CLOSE_WITHIN = 2.0


@pytest.fixture
def h2_server(server_factory: type[Server], tmp_path: Path) -> Server:
    return start_server(server_factory, tmp_path)


def _calm(attacker: RawH2) -> str:
    return f"GOAWAY {attacker.goaway}, closed {attacker.eof or attacker.closed_at is not None}"


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no_auth", "auth_refusals"])
def test_rapid_reset_is_cut_off_and_the_server_stays_responsive(
    server_factory: type[Server], tmp_path: Path, token: str | None
) -> None:
    """Two connections opening and resetting DoAction streams in a loop (answered, or with a
    token configured refused UNAUTHENTICATED) get GOAWAY ENHANCE_YOUR_CALM; fresh clients
    are answered within 1 s throughout."""
    auth = {"auth": {"tokens": [token]}} if token else {}
    h2_server = start_server(server_factory, tmp_path, auth)
    block = header_block("DoAction")
    body = grpc_message(b"\x0a\x06health")  # Action{type: "health"}

    def stream(sid: int) -> bytes:
        return (
            frame(HEADERS, END_HEADERS, sid, block)
            + frame(DATA, 0, sid, body)
            + frame(RST_STREAM, 0, sid, CANCEL.to_bytes(4, "big"))
        )

    attackers = [RawH2(h2_server) for _ in range(2)]
    sent: list[object] = []

    def run() -> None:
        sent.extend(
            in_threads(*(lambda a=a: a.flood(frames_of(stream), ATTACK_SECONDS) for a in attackers))
        )

    report = attack(h2_server, run, ALLOWANCE, token=token)
    closed = [a.closed_within(CLOSE_WITHIN) for a in attackers]
    report.notes.append(
        f"sent {[int(s) // MiB for s in sent]} MiB; " + ", ".join(map(_calm, attackers))
    )
    for a in attackers:
        a.close()
    report.check_service()
    assert all(a.goaway == ENHANCE_YOUR_CALM for a in attackers), str(report)
    assert all(closed), str(report)
    assert written(h2_server, "probe") >= 1


@pytest.mark.parametrize("flags", [0, ACK], ids=["ping", "ping_ack"])
def test_ping_floods_are_cut_off(h2_server: Server, flags: int) -> None:
    """A flood of PING (or unsolicited PING ACK) frames gets GOAWAY ENHANCE_YOUR_CALM and
    does not delay fresh clients."""
    chunk = frame(PING, flags, 0, b"\x00" * 8) * 4096
    attacker = RawH2(h2_server)
    sent = [0]

    def run() -> None:
        sent[0] = attacker.flood(repeat(chunk), ATTACK_SECONDS)

    report = attack(h2_server, run, ALLOWANCE)
    closed = attacker.closed_within(CLOSE_WITHIN)
    report.notes.append(f"{sent[0] // 17:,} PINGs sent; {_calm(attacker)}")
    attacker.close()
    report.check_service()
    assert attacker.goaway == ENHANCE_YOUR_CALM and closed, str(report)


def test_empty_data_frames_on_a_doput_are_cut_off(h2_server: Server) -> None:
    """Endless empty DATA frames on one DoPut get GOAWAY ENHANCE_YOUR_CALM, do not delay
    fresh clients, and write nothing."""
    attacker = RawH2(h2_server)
    attacker.send(frame(HEADERS, END_HEADERS, 1, header_block("DoPut")))
    sent = [0]

    def run() -> None:
        sent[0] = attacker.flood(repeat(frame(DATA, 0, 1) * 8192), ATTACK_SECONDS)

    report = attack(h2_server, run, ALLOWANCE)
    closed = attacker.closed_within(CLOSE_WITHIN)
    report.notes.append(f"{sent[0] // 9:,} empty DATA frames sent; {_calm(attacker)}")
    attacker.close()
    report.check_service()
    assert attacker.goaway == ENHANCE_YOUR_CALM and closed, str(report)
    assert written(h2_server, "attack") == 0


def test_a_client_that_never_reads_cannot_pile_up_ping_acks(h2_server: Server) -> None:
    """A client that sends PINGs and never reads its ACKs costs the server a bounded
    outbound queue (it stops being read), not memory per PING."""
    chunk = frame(PING, 0, 0, b"\x01" * 8) * 4096
    attacker = RawH2(h2_server, read=False, rcvbuf=4096)
    sent = [0]

    def run() -> None:
        sent[0] = attacker.flood(repeat(chunk), ATTACK_SECONDS, max_bytes=64 * MiB)

    report = attack(h2_server, run, ALLOWANCE)
    report.notes.append(f"{sent[0] // 17:,} PINGs sent, none read")
    attacker.close()
    report.check_service()
    assert report.growth <= ALLOWANCE, str(report)


def test_continuation_flood_is_bounded_before_it_is_buffered(h2_server: Server) -> None:
    """HEADERS without END_HEADERS, then endless 1 MiB CONTINUATION frames (valid HPACK; the
    server's MAX_FRAME_SIZE) on four connections: each is closed once its header block passes
    the header list limit, before it is buffered; memory does not grow with the flood."""
    pad = b"\x00\x05x-pad\x7f\xe9\x06" + b"a" * 1000  # literal, not indexed: "x-pad: a…"
    block = pad * 1038  # whole representations, 1,048,380 bytes: the MAX_FRAME_SIZE we see
    head = frame(HEADERS, 0, 1, header_block("DoAction"))
    chunk = frame(CONTINUATION, 0, 1, block)
    attackers = [RawH2(h2_server) for _ in range(4)]
    sent: list[object] = []

    def run() -> None:
        def one(a: RawH2) -> int:
            a.send(head)
            return a.flood(repeat(chunk), ATTACK_SECONDS, max_bytes=48 * MiB)

        sent.extend(in_threads(*(lambda a=a: one(a) for a in attackers)))

    report = attack(h2_server, run, ALLOWANCE)
    closed = [a.closed_within(CLOSE_WITHIN) for a in attackers]
    report.notes.append(
        f"sent {[int(s) // MiB for s in sent]} MiB of CONTINUATION; "
        + ", ".join(map(_calm, attackers))
    )
    for a in attackers:
        a.close()
    report.check_service()
    assert all(closed), str(report)
    assert all(int(s) < 48 * MiB for s in sent), "the server read every byte: " + str(report)


def test_the_raw_attacker_speaks_valid_grpc(h2_server: Server) -> None:
    """Sanity of the attackers: a well-formed DoAction over the raw client is answered
    (so the floods above are refused for what they are, not for being malformed)."""
    attacker = RawH2(h2_server)
    attacker.send(
        frame(HEADERS, END_HEADERS, 1, header_block("DoAction"))
        + frame(DATA, END_STREAM, 1, grpc_message(b"\x0a\x06health"))
    )
    attacker.closed_within(1.0)
    kinds = [kind for kind, _, sid, _ in attacker.frames if sid == 1]
    attacker.close()
    assert HEADERS in kinds and 1 not in attacker.resets, attacker.frames
