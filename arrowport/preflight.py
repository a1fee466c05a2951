"""What ``arrowport serve`` needs at start, checked without writing anything.

``serve`` runs ``preflight`` before it opens its stores, and ``arrowport
config check`` runs the same, so that a config the check passes starts a
server, and one that ``serve`` would refuse fails the check with the same
message. Nothing is created: DuckDB settings and extensions are tried on an
in-memory database, and paths are checked for the directory they would be
created in.

Raises ``ConfigError`` (an unusable TLS file) or ``StorageError`` (settings
DuckDB refuses, an extension that cannot be loaded offline, a directory that
cannot be written); returns notes worth printing (extensions that are built in).
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from .config import Config
from .storage import DeltaStore, DuckDBStore, StorageError
from .storage.duckdb import BUILT_IN_EXTENSIONS, load_extension
from .storage.ducklake import SECRET_OPTIONS


def preflight(config: Config) -> list[str]:
    """Check what serving ``config`` needs (see the module docstring); notes for the user."""
    notes = []
    tls = config.tls
    if tls.certfile is not None and tls.keyfile is not None:
        from .io.listener import tls_context

        tls_context(tls.certfile, tls.keyfile)
    store = DuckDBStore.from_config(config)
    needed = list(store.extensions)
    if config.uses("ducklake"):
        lake = config.ducklake
        needed.append("ducklake")
        if lake.catalog.startswith("postgres:"):
            needed.append("postgres")
        if lake.data_path.startswith("s3://"):
            needed.append("httpfs")
            if "key_id" not in lake.storage_options:
                needed.append("aws")
            unknown = sorted(set(lake.storage_options) - set(SECRET_OPTIONS))
            if unknown:
                raise StorageError(
                    f"ducklake.storage_options: unknown option(s) {unknown}; "
                    f"valid: {', '.join(SECRET_OPTIONS)}"
                )
        else:
            _writable_dir(lake.data_path, "the DuckLake data path")
        if not lake.catalog.startswith("postgres:"):
            catalog_dir = os.path.dirname(os.path.abspath(lake.catalog))
            _writable_dir(catalog_dir, "the DuckLake catalog's", exists=True)
    try:
        con = duckdb.connect(":memory:", config=store._settings)
    except duckdb.Error as exc:
        raise StorageError(f"DuckDB refused the settings {store._settings}: {exc}") from None
    try:
        for name in dict.fromkeys(needed):
            load_extension(con, name)
            if name.lower() in BUILT_IN_EXTENSIONS:
                notes.append(f"extension {name}: built in, {BUILT_IN_EXTENSIONS[name.lower()]}")
    finally:
        con.close()
    if config.db_path != ":memory:":
        db_dir = os.path.dirname(os.path.abspath(config.db_path))
        _writable_dir(db_dir, "the DuckDB file's", exists=True)
    if config.uses("delta"):
        delta = DeltaStore.from_config(config)
        if delta.location.local is None:
            delta.location.check_concurrency()  # the options, as serve checks them (no network)
        else:
            _writable_dir(str(delta.location.local), "the Delta root")
    return notes


def _writable_dir(path: str, what: str, *, exists: bool = False) -> None:
    """``path`` (unless it must already ``exist``: or the nearest directory it would be
    created in) must be a writable directory."""
    if exists and not os.path.isdir(path):
        raise StorageError(f"{what} directory {path!r} does not exist")
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise StorageError(f"{what} directory {path!r} cannot be created: {str(here)!r} is a file")
    if not os.access(here, os.W_OK | os.X_OK):
        raise StorageError(f"{what} directory {path!r} is not writable")
