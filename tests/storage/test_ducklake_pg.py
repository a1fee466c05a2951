"""DuckLakeStore on a PostgreSQL catalog (a real server on 127.0.0.1): credentials in
errors, the catalog going away, and instances starting together on a new catalog."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from pg_fixtures import postgres  # noqa: F401
from pg_support import PgServer

from arrowport.storage import DuckLakeStore, StorageError

PASSWORD = "Hunter2-secret"  # trust auth ignores it; drivers still quote it back


def table(rows: int) -> pa.Table:
    return pa.table({"id": pa.array(range(rows), pa.int64())})


def block_connections(server: PgServer, dbname: str) -> None:
    """Turn new connections to ``dbname`` away and end the open ones."""
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as con:
        con.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
        con.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            [dbname],
        )


def test_a_lost_catalog_fails_writes_without_showing_its_password(
    postgres: PgServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """With its PostgreSQL catalog unreachable, a write fails with a 503 whose message
    hides the password the driver quotes back, and nothing of it is written."""
    conninfo = postgres.create_database("lake_lost") + f" password={PASSWORD}"
    store = DuckLakeStore(f"postgres:{conninfo}", str(tmp_path / "data"))
    store.open()
    try:
        store.write("t", table(10).schema, table(10).to_batches())
        block_connections(postgres, "lake_lost")
        messages = []
        for _ in range(3):  # the first attempt may meet the dead connection, later ones none
            with pytest.raises(StorageError) as caught:
                write = store.open_write("t", table(10).schema, idempotency_key="k1")
                for group in write.groups(table(10).to_batches()):
                    write.insert(group)
                write.finish()
            messages.append(str(caught.value))
        assert all(PASSWORD not in m for m in messages), messages
        assert PASSWORD not in caught.value.detail  # the JSON body / gRPC message
        # the driver did quote the connection string: it was there to hide
        assert any("password=<redacted>" in m for m in messages), messages
    finally:
        store.close()
        with psycopg.connect(postgres.conninfo("postgres"), autocommit=True) as con:
            con.execute("ALTER DATABASE lake_lost ALLOW_CONNECTIONS true")
    reopened = DuckLakeStore(f"postgres:{conninfo}", str(tmp_path / "data"))
    reopened.open()
    try:
        assert reopened.count_rows("t") == 10  # the failed requests wrote nothing
    finally:
        reopened.close()


def test_a_refused_attach_does_not_show_the_password(tmp_path: Path) -> None:
    """A catalog that cannot be reached at start is refused with the password hidden,
    in each way a libpq connection string can hold it."""
    for catalog in (
        f"postgres:host=127.0.0.1 port=1 dbname=x user=u password={PASSWORD}",
        f"postgres:host=127.0.0.1 port=1 dbname=x password='{PASSWORD} with space'",
        f"postgres:postgresql://u:{PASSWORD}@127.0.0.1:1/x",
    ):
        store = DuckLakeStore(catalog, str(tmp_path / "data"))
        with pytest.raises(StorageError) as caught:
            store.open()
        assert PASSWORD not in str(caught.value)
        assert "cannot attach DuckLake catalog" in str(caught.value)
        assert "<redacted>" in str(caught.value)  # the driver quoted it: it was hidden
        assert store._con is None  # closed, not left half open
        assert PASSWORD not in store.catalog_label


def test_instances_starting_together_on_a_new_catalog_all_attach(
    postgres: PgServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The first ATTACH creates DuckLake's catalog tables; several at once race on it."""
    conninfo = postgres.create_database("lake_new_together")
    stores = [DuckLakeStore(f"postgres:{conninfo}", str(tmp_path / "data")) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def open_one(store: DuckLakeStore) -> None:
        start.wait()
        try:
            store.open()
        except BaseException as exc:  # collected: the assertion below shows them
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        for store in stores:
            store.write("t", table(5).schema, table(5).to_batches())
        assert stores[0].count_rows("t") == 5 * len(stores)
    finally:
        for store in stores:
            store.close()
