"""Random Arrow tables (every primitive type and temporal unit, time zones and values at their
extremes, decimals 32-256, views, list views, run-end encoding, nested dictionaries, structs,
maps, unions, fixed-size lists, wide and deep nesting) sent over HTTP to each backend: each is
stored and read back equal, or refused 4xx naming a column; never a 5xx or a death.

``ARROWPORT_PROPERTY_EXAMPLES=N`` sets the examples per backend (25 by default). DuckDB and
DuckLake are read back through the server's Flight DoGet (the server holds the file); Delta
with deltalake (and DuckDB's ``delta_scan`` when its extension package is installed).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pyarrow as pa
import pytest
from arrow_strategies import tables
from conformance_support import (
    BACKENDS,
    BackendServer,
    Stored,
    duckdb_delta_available,
    read_back,
    verdict,
)
from hypothesis import HealthCheck, given, settings
from support import ipc_bytes

EXAMPLES = int(os.environ.get("ARROWPORT_PROPERTY_EXAMPLES", "25"))
_names = itertools.count()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], BackendServer]]:
    started: dict[str, BackendServer] = {}

    def get(backend: str) -> BackendServer:
        if backend not in started:
            started[backend] = BackendServer(backend, tmp_path_factory.mktemp(f"prop_{backend}"))
        return started[backend]

    yield get
    for bs in started.values():
        bs.stop()


def _stored(bs: BackendServer, table: str) -> Stored:
    if bs.backend == "delta":
        return read_back("delta", bs.workdir, [table])[table]
    out = Stored()
    try:
        out.tables["server DoGet"] = bs.read_doget(table)
    except Exception as exc:
        out.errors["server DoGet"] = f"{type(exc).__name__}: {exc}"[:500]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_tables_are_stored_equal_or_refused(
    servers: Callable[[str], BackendServer], backend: str
) -> None:
    """Every random table is stored and read back equal, or refused 4xx naming a column."""
    bs = servers(backend)
    if backend == "delta":
        duckdb_delta_available()  # decided once; read_back uses it when present

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(table=tables())
    def check(table: pa.Table) -> None:
        name = f"prop_{backend}_{next(_names)}"
        outcome = bs.send_http(name, ipc_bytes(table))
        bs.check_after(outcome)
        problems = verdict(outcome, table, _stored(bs, name), bs.server, valid=True)
        assert not problems, f"{backend} {name} {table.schema}:\n" + "\n".join(problems)

    check()
