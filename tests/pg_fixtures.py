"""The ``postgres`` fixture: one throwaway PostgreSQL server for the whole test session.

Import it into a test module (pytest finds fixtures by name in the module's namespace)::

    from pg_fixtures import postgres  # noqa: F401

then ask for ``postgres`` and call ``postgres.create_database("name")`` for a libpq conninfo
string. Each test should create its own database (e.g. named after the test) to stay
independent of the others.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_support import PgServer, start_postgres


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A PostgreSQL server on 127.0.0.1 at a free port, trusting local connections."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.stop()
