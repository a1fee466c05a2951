"""The throwaway PostgreSQL of tests/pg_support.py is real, and reachable on loopback only."""

from __future__ import annotations

import socket

import psycopg
from pg_fixtures import postgres  # noqa: F401
from pg_support import PgServer


def test_database_roundtrip(postgres: PgServer) -> None:  # noqa: F811
    """A database created through the fixture takes a table whose rows read back."""
    conninfo = postgres.create_database("roundtrip")
    assert conninfo == f"dbname=roundtrip host=127.0.0.1 port={postgres.port} user=postgres"
    with psycopg.connect(conninfo) as con:
        con.execute("CREATE TABLE t (id bigint PRIMARY KEY, name text)")
        with con.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s)", [(1, "Oslo"), (2, "Lima")])
    with psycopg.connect(conninfo) as con:
        rows = con.execute("SELECT id, name FROM t ORDER BY id").fetchall()
        (db,) = con.execute("SELECT current_database()").fetchone() or ("",)
    assert rows == [(1, "Oslo"), (2, "Lima")]
    assert db == "roundtrip"


def test_listens_on_loopback_only(postgres: PgServer) -> None:  # noqa: F811
    """The server's listen_addresses is 127.0.0.1 alone: it accepts there and nowhere else."""
    with psycopg.connect(postgres.conninfo("postgres")) as con:
        (listen,) = con.execute("SHOW listen_addresses").fetchone() or ("",)
        (port,) = con.execute("SHOW port").fetchone() or (0,)
    assert listen == "127.0.0.1"
    assert int(port) == postgres.port
    with socket.create_connection(("127.0.0.1", postgres.port), timeout=5):
        pass
    # Another address of this host (if it has one) is refused on that port.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            other = probe.getsockname()[0]
    except OSError:
        other = ""
    for address in ([other] if other and not other.startswith("127.") else []) + ["::1"]:
        try:
            socket.create_connection((address, postgres.port), timeout=2).close()
        except OSError:
            pass
        else:
            raise AssertionError(f"PostgreSQL also accepts connections on {address}")
