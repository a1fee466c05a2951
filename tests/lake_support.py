"""Reading a DuckLake from tests, the way a user would: DuckDB with the lake attached."""

from __future__ import annotations

from pathlib import Path

import duckdb
import duckdb_extensions  # type: ignore[import-untyped,unused-ignore]


def attach_lake(
    con: duckdb.DuckDBPyConnection,
    catalog: Path | str,
    data_path: Path | str | None = None,
    *,
    read_only: bool = True,
) -> None:
    """ATTACH the lake at ``catalog`` (a file, or ``postgres:...``) as ``lake``."""
    for name in ("ducklake", "postgres_scanner"):
        duckdb_extensions.import_extension(name)
    con.execute("LOAD ducklake")
    catalog = str(catalog)
    if catalog.startswith("postgres:"):
        con.execute("LOAD postgres")
    options = ["READ_ONLY"] if read_only else []
    if data_path is not None:
        options.append(f"DATA_PATH '{data_path}/'")
    con.execute(f"ATTACH 'ducklake:{catalog}' AS lake ({', '.join(options)})")


def lake_query(catalog: Path | str, sql: str, data_path: Path | str | None = None) -> list[tuple]:
    """Run ``sql`` against the lake (tables as ``lake.<name>``) and fetch every row."""
    with duckdb.connect() as con:
        attach_lake(con, catalog, data_path)
        return con.execute(sql).fetchall()
