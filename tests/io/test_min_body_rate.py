"""limits.min_body_rate: the body-wait credit, on trio's mock clock (exact times, no waiting)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from arrowport.config import ConfigError, Limits, parse_config
from arrowport.io.body import with_eof as _with_eof
from arrowport.io.status import http_status
from arrowport.protocol.errors import ArrowportError


async def _trickle(pieces: int, size: int, every: float) -> AsyncIterator[bytes]:
    for _ in range(pieces):
        await trio.sleep(every)
        yield b"x" * size


async def _read(
    chunks: AsyncIterator[bytes], limits: Limits, pause: float = 0.0, mode: str = "request"
) -> int:
    """Consume the body as ingest does (``pause``: the server busy after each chunk)."""
    total = 0
    async for chunk in _with_eof(chunks, limits, mode):
        total += len(chunk)
        if pause:
            await trio.sleep(pause)
    return total


async def test_trickle_below_the_rate_is_cut_off_once_its_credit_is_spent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """100 B/s against 1000 B/s: each second costs 0.9 s of a 10 s credit, so ~11 s, not 10."""
    limits = Limits(body_idle_timeout=10, min_body_rate=1000)
    started = trio.current_time()
    with pytest.raises(ArrowportError) as caught:
        await _read(_trickle(1000, 100, 1.0), limits)
    elapsed = trio.current_time() - started
    assert 10.5 < elapsed < 12.0, elapsed  # past the 10 s credit: ~1 s earned back
    error = caught.value
    assert error.error == "body_too_slow" and http_status(error) == 408
    assert "below limits.min_body_rate (1,000 bytes/s)" in str(error)
    assert "nothing was committed" in str(error)


async def test_a_client_at_the_rate_is_never_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """2000 B/s against 1000 B/s for 200 s (twenty times the credit) completes."""
    limits = Limits(body_idle_timeout=10, min_body_rate=1000)
    assert await _read(_trickle(200, 2000, 1.0), limits) == 400_000


async def test_bursts_average_out(autojump_clock: trio.testing.MockClock) -> None:
    """A 9 s silence then 20 kB, again and again: 2.2 kB/s on average, never idle 10 s."""
    limits = Limits(body_idle_timeout=10, min_body_rate=1000)
    assert await _read(_trickle(30, 20_000, 9.0), limits) == 600_000


async def test_time_the_server_holds_the_client_back_is_not_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Chunks ready at once, but the server spends 30 s writing each: no rate error."""
    limits = Limits(body_idle_timeout=10, min_body_rate=1_000_000)
    assert await _read(_trickle(20, 10, 0.0), limits, pause=30.0) == 200


async def test_batch_mode_has_only_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Batch-mode streams are long-lived (a producer may wait for each ack): a trickle that
    request mode cuts off after ~11 s runs its whole 1000 s there."""
    limits = Limits(body_idle_timeout=10, min_body_rate=1000)
    assert await _read(_trickle(1000, 100, 1.0), limits, mode="batch") == 100_000


async def test_rate_zero_leaves_only_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """min_body_rate 0: one byte every 9 s for 15 minutes completes; 11 s of silence does not."""
    limits = Limits(body_idle_timeout=10, min_body_rate=0)
    assert await _read(_trickle(100, 1, 9.0), limits) == 100
    with pytest.raises(ArrowportError) as caught:
        await _read(_trickle(2, 1, 11.0), limits)
    assert caught.value.error == "body_timeout"


async def test_silence_is_body_timeout_not_too_slow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the rate on, a client silent from the start gets the idle error after exactly 10 s."""
    limits = Limits(body_idle_timeout=10, min_body_rate=1000)
    started = trio.current_time()
    with pytest.raises(ArrowportError) as caught:
        await _read(_trickle(1, 1, 60.0), limits)
    assert caught.value.error == "body_timeout"
    assert trio.current_time() - started == pytest.approx(10.0)


def test_config_parses_sizes_and_zero() -> None:
    assert Limits().min_body_rate == 1024
    assert parse_config({"limits": {"min_body_rate": "4KiB"}}).limits.min_body_rate == 4096
    assert parse_config({"limits": {"min_body_rate": 0}}).limits.min_body_rate == 0
    with pytest.raises(ConfigError, match=r"limits\.min_body_rate"):
        parse_config({"limits": {"min_body_rate": -1}})
