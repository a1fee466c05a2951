"""Shared fixtures and options."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Server


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[Server]]:
    started: list[Server] = []

    class _Server(Server):
        def start(self, timeout: float = 30.0) -> Server:
            started.append(self)
            return super().start(timeout)

    yield _Server
    for s in started:
        s.stop()


@pytest.fixture
def server(server_factory: type[Server], tmp_path: Path) -> Server:
    return server_factory(tmp_path).start()


# --soak (tests/e2e/test_crash_safety.py): the long crash-safety run, 100 kills per backend
# (ARROWPORT_SOAK_KILLS=N sets any count). Appended: it extends the hook above.
_addoption_base = pytest_addoption


def pytest_addoption(parser: pytest.Parser) -> None:
    _addoption_base(parser)
    parser.addoption(
        "--soak",
        action="store_true",
        help="crash-safety soak: 100 SIGKILLs per backend (ARROWPORT_SOAK_KILLS=N for any N)",
    )
