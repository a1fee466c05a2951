"""The DuckLake writer: the DuckDB writer, on a DuckLake attached as ``lake``.

Invariants (beyond ``duckdb.DuckDBStore``'s, which all hold here):

* The store's connection is an in-memory DuckDB with the lake ATTACHed as
  ``lake``; every cursor starts with ``USE lake``, so the DuckDB writer's SQL
  (``current_database()``, schema ``main``) reads and writes the lake.
* One committed transaction is one DuckLake snapshot: a request in request
  mode is exactly one snapshot, or nothing. Time travel reads a snapshot id
  (``AT (VERSION => n)``).
* With a PostgreSQL catalog several processes may write one table: DuckLake
  settles commit races itself (appends never logically conflict; a commit
  that lost the race is retried, ``max_retry_count`` times, each after
  ``retry_wait_ms * random(0.5, 1) * retry_backoff ** attempt`` ms). A
  commit that still fails is rolled back and answered 503.
* The idempotency ledger is a lake table per UTC day (DuckLake has no PRIMARY
  KEY, and a DELETE conflicts with concurrent INSERTs): a key is looked up,
  claimed (``claim_key``: rivals with the same key, on any instance, wait),
  looked up again, then inserted in the request's own transaction; expired
  days are dropped.
* Extensions load from registry packages; nothing is installed at run time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from ..names import quote_identifier
from ..protocol import ArrowportError
from ..redact import conninfo_secrets, redact
from . import ducklake_ledger as ledger
from .duckdb import DuckDBStore, load_extension
from .ducklake_claim import KeyClaim, LocalClaims
from .errors import InvalidReadError, StorageError, WriteRejectedError
from .recovery import GuardedReader
from .schema import Column
from .tables import (
    TableInfo,
    describe_table,
    resolve_table,
    select_list,
    snapshot,
    valid_table_name,
)

log = logging.getLogger("arrowport.storage")

LAKE = "lake"
CLEANUP_GRACE_HOURS = 1.0
CREATE_ATTEMPTS = 8
EXPIRY_WAIT_SECONDS = 60.0
LEDGER_INLINE_ROWS = 1000  # a keyed request's ledger row goes into the catalog
ORPHAN_GRACE_HOURS = 24.0
# DuckDB S3 secret options that ``ducklake.storage_options`` may set.
SECRET_OPTIONS = ("key_id", "secret", "session_token", "region", "endpoint", "url_style", "use_ssl")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class DuckLakeStore(DuckDBStore):
    """A DuckLake (catalog + Parquet data files) that Arrowport writes into."""

    backend = "ducklake"
    _checkpoint_target = f"__ducklake_metadata_{LAKE}"
    _probe_sql = f"SELECT id FROM {LAKE}.current_snapshot()"

    def __init__(
        self,
        catalog: str,
        data_path: str,
        *,
        storage_options: Mapping[str, str] | None = None,
        max_retry_count: int = 100,
        retry_wait_ms: int = 100,
        retry_backoff: float = 1.5,
        data_inlining_row_limit: int = 0,
        snapshot_retention_hours: float = 168.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(":memory:", **kwargs)
        self.catalog = catalog
        self.data_path = data_path
        self.storage_options = dict(storage_options or {})
        self.max_retry_count = max_retry_count
        self.retry_wait_ms = retry_wait_ms
        self.retry_backoff = retry_backoff
        self.data_inlining_row_limit = data_inlining_row_limit
        self.snapshot_retention_hours = snapshot_retention_hours
        # literal credentials, hidden in every message this store lets out
        self._secrets = conninfo_secrets(catalog) + [
            v for k, v in self.storage_options.items() if k in ("secret", "session_token")
        ]
        self.merges = 0
        self.expired_snapshots = 0
        # (job, "ok" | "failed") -> runs, for /metrics; jobs are "merge" and "cleanup"
        self.maintenance: dict[tuple[str, str], int] = {}
        self.claims = LocalClaims()  # keys being committed by this process (ducklake_claim)
        self._ledger_ready = ""  # today's ledger table, once it is known to exist
        self._ledger_day = ""  # ... and the day it is for
        # DuckLake 1.5.5 fails the commit of a transaction that creates a table, or
        # crashes, when snapshots are expired while it is open: expiry waits for
        # such transactions of this process to end, and they wait for expiry.
        self._creations = 0
        self._expiring = False
        self._expiry_turn = threading.Condition()

    @property
    def remote_catalog(self) -> bool:
        return self.catalog.startswith("postgres:")

    @property
    def catalog_label(self) -> str:
        """The catalog for logs and /streams: a file path, or 'postgres:' with the
        connection string's dbname and host only (never a password)."""
        if not self.remote_catalog:
            return self.catalog
        if "://" in self.catalog:  # a URI: without its user, password and parameters
            return re.sub(r"//[^@/]*@", "//", self.catalog.split("?")[0])
        keep = [
            p
            for p in self.catalog[len("postgres:") :].split()
            if p.split("=")[0] in ("dbname", "host", "port")
        ]
        return "postgres:" + " ".join(keep)

    @property
    def remote_data(self) -> bool:
        return self.data_path.startswith("s3://")

    # -- lifecycle ----------------------------------------------------------

    def open(self) -> None:
        try:
            self._con = duckdb.connect(":memory:", config=self._settings)
        except duckdb.Error as exc:
            raise StorageError(f"DuckDB refused the settings {self._settings}: {exc}") from None
        self._database = LAKE
        try:
            self._attach(self._con)
            self._create_ledger()
        except BaseException:
            self.close()
            raise

    def _attach(self, con: duckdb.DuckDBPyConnection) -> None:
        for name in ("ducklake", *self.extensions):
            load_extension(con, name)
        if self.remote_catalog:
            load_extension(con, "postgres")
        if self.remote_data:
            load_extension(con, "httpfs")
            self._create_secret(con)
        data_path = self.data_path
        if not self.remote_data:
            data_path = os.path.abspath(data_path)
            try:
                os.makedirs(data_path, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot create the DuckLake data path {data_path!r}: {exc}"
                ) from None
            data_path = data_path.rstrip(os.sep) + os.sep
        catalog = self.catalog if self.remote_catalog else os.path.abspath(self.catalog)
        options = [f"DATA_PATH {_sql_string(data_path)}"]
        options.append(f"DATA_INLINING_ROW_LIMIT {int(self.data_inlining_row_limit)}")
        attach = f"ATTACH {_sql_string('ducklake:' + catalog)} AS {LAKE} ({', '.join(options)})"
        for attempt in range(CREATE_ATTEMPTS):
            try:
                con.execute(attach)
                break
            except duckdb.Error as exc:
                # instances started together on a new PostgreSQL catalog race to create
                # its tables; the losers find them there on the next try
                if attempt == CREATE_ATTEMPTS - 1 or not self._lost_catalog_creation(exc):
                    raise StorageError(self._attach_failure(exc)) from None
                with contextlib.suppress(duckdb.Error):
                    con.execute(f"DETACH DATABASE IF EXISTS {LAKE}")
                time.sleep(min(0.05 * 2**attempt, 1.0))
        try:
            con.execute(f"SET ducklake_max_retry_count = {int(self.max_retry_count)}")
            con.execute(f"SET ducklake_retry_wait_ms = {int(self.retry_wait_ms)}")
            con.execute(f"SET ducklake_retry_backoff = {float(self.retry_backoff)!r}")
            con.execute(f"USE {LAKE}")
        except duckdb.Error as exc:
            raise StorageError(self._attach_failure(exc)) from None

    def _lost_catalog_creation(self, exc: duckdb.Error) -> bool:
        """Whether ATTACH failed because another process was creating the catalog's
        tables (PostgreSQL: a duplicate relation, type or key)."""
        text = str(exc)
        return self.remote_catalog and (
            "duplicate key" in text
            or bool(re.search(r'(relation|type) "ducklake_\w*" already exists', text))
        )

    def _attach_failure(self, exc: duckdb.Error) -> str:
        text = redact(str(exc), self._secrets)
        hint = ""
        if "lock" in text.lower() and not self.remote_catalog:
            hint = (
                ". A .ducklake file catalog has one writer process: stop the other one, or "
                "use a PostgreSQL catalog (ducklake.catalog: postgres:...) for several instances"
            )
        elif "does not match existing data path" in text:
            text = text.splitlines()[0].rstrip(".")
            hint = ". ducklake.data_path must be where this lake was created"
        elif self.remote_catalog:
            hint = ". Check ducklake.catalog: a libpq connection string after 'postgres:'"
        where = f"{self.catalog_label!r} (data {self.data_path!r})"
        return f"cannot attach DuckLake catalog {where}: {text}{hint}"

    def _create_secret(self, con: duckdb.DuckDBPyConnection) -> None:
        unknown = sorted(set(self.storage_options) - set(SECRET_OPTIONS))
        if unknown:
            raise StorageError(
                f"ducklake.storage_options: unknown option(s) {unknown}; "
                f"valid: {', '.join(SECRET_OPTIONS)}"
            )
        parts = ["TYPE s3"]
        options = dict(self.storage_options)
        if "key_id" not in options:
            load_extension(con, "aws")
            parts.append("PROVIDER credential_chain")
        for name, value in options.items():
            if name == "use_ssl":
                parts.append(
                    f"USE_SSL {'true' if value.lower() in ('1', 'true', 'yes') else 'false'}"
                )
            else:
                parts.append(f"{name.upper()} {_sql_string(value)}")
        try:
            con.execute(f"CREATE SECRET arrowport_lake_s3 ({', '.join(parts)})")
        except duckdb.Error as exc:
            refused = StorageError(f"ducklake.storage_options were refused: {exc}")
            raise self._hide(refused) from None

    # -- the idempotency ledger: a table per UTC day (see ducklake_ledger) --------

    def _create_ledger(self) -> None:
        self._ensure_ledger_day()

    def _ensure_ledger_day(self) -> str:
        """The name of today's ledger table, created (in a snapshot of its own) if missing;
        another instance may be creating it too."""
        if ledger.day_table(time.time()) == self._ledger_day:
            return self._ledger_ready
        for attempt in range(CREATE_ATTEMPTS):
            try:
                with self._creating(), self._cursor() as cur:
                    name, exists = ledger.today_table(ledger.day_tables(cur), time.time())
                    if not exists:
                        cur.execute(ledger.DDL.format(name=quote_identifier(name)))
                        # keys live in the catalog, not in a Parquet file per request (an
                        # optimisation: if another instance's option wins, so be it)
                        with contextlib.suppress(duckdb.Error):
                            cur.execute(
                                f"CALL ducklake_set_option('{LAKE}', 'data_inlining_row_limit', "
                                f"{LEDGER_INLINE_ROWS}, table_name => ?)",
                                [name],
                            )
                self._ledger_ready = name
                self._ledger_day = name[: len(ledger.day_table(0))]
                return name
            except duckdb.Error as exc:
                if attempt == CREATE_ATTEMPTS - 1:
                    raise self._hide(
                        StorageError(f"cannot prepare the idempotency ledger: {exc}")
                    ) from None
                time.sleep(min(0.05 * 2**attempt, 1.0))  # lost a creation race: retry
        raise AssertionError("unreachable")

    def ledger_entry(
        self, cur: duckdb.DuckDBPyConnection, table: str, key: str
    ) -> tuple[int, int] | None:
        return ledger.lookup(cur, table, key, self.key_ttl_hours, time.time())

    def record_key(
        self, cur: duckdb.DuckDBPyConnection, key: str, table: str, rows: int, batches: int
    ) -> None:
        """Insert ``key`` into the newest day's ledger, in the caller's transaction."""
        if not ledger.record(cur, key, table, rows, batches, time.time()):
            self._ledger_day = ""  # dropped or replaced by hand: the next write makes one
            raise StorageError("the idempotency ledger is missing; retry the request")

    @property
    def metadata_catalog(self) -> str:
        """The DuckDB name of the lake's attached catalog database."""
        return self._checkpoint_target

    def catalog_cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor outside the lake (no ``USE lake``), for ``postgres_execute`` on the
        catalog: a transaction there costs 1 ms where one in the lake costs 14 (1.5.5)."""
        return super().new_cursor()

    def claim_key(self, table: str, key: str) -> KeyClaim:
        """Claim ``key`` for ``table`` until the claim's ``release``: wait for a rival
        request (here, or on another instance with a PostgreSQL catalog) committing the
        same key, then look the key up afresh (see ducklake_claim)."""
        return KeyClaim(self, table, key)

    def prune_ledger(self) -> None:
        """Drop the day tables whose keys have all outlived the TTL (by a day's margin)."""
        today = self._ensure_ledger_day()
        with self._cursor() as cur:
            days = list(ledger.day_tables(cur))  # malformed ones too, once expired
            for name in ledger.expired(days, self.key_ttl_hours, time.time()):
                if name != today:
                    cur.execute(f"DROP TABLE IF EXISTS {quote_identifier(name)}")

    def open_write(self, table: str, schema: pa.Schema, **kwargs: Any) -> Any:
        if kwargs.get("idempotency_key") is not None:
            self.before_keyed_write()
        return super().open_write(table, schema, **kwargs)

    def before_keyed_write(self) -> None:
        try:
            self._ensure_ledger_day()  # before the data transaction: see _ensure_ledger_day
        except duckdb.Error as exc:  # preparing today's ledger table, outside a TableWrite
            raise self.translate(exc) from None

    def close(self, *, checkpoint: bool = True) -> None:
        """Close the connection. (DuckLake's CHECKPOINT is maintenance: see ``maintain``.)"""
        with self._cursor_lock:
            con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(duckdb.Error):
                con.execute("USE memory")
                con.execute(f"DETACH {LAKE}")
            con.close()

    def checkpoint(self) -> None:
        """Nothing to do: each commit is durable in the catalog and data files."""

    def create_shared_table(
        self, cur: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema
    ) -> bool:
        """With a PostgreSQL catalog, create a missing table in a snapshot of its own.

        Other instances may create it at the same moment: two creates of one name
        are a DuckLake conflict that fails the later commit, so a table created
        with the data would lose the request. Created alone, the loser retries and
        finds the table; the data commit that follows is a plain append. (A request
        that then fails leaves the new, empty table.) With a file catalog there is
        one process, and the table is created in the request's own transaction.
        """
        if not self.remote_catalog or self.table_columns(cur, table) is not None:
            return False
        with self._creating():
            return self._create_alone(cur, table, schema)

    def _create_alone(self, cur: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema) -> bool:
        for attempt in range(CREATE_ATTEMPTS):
            try:
                cur.begin()
                created = self.prepare_table(cur, table, schema)
                cur.commit()
                return created
            except duckdb.TransactionException:
                with contextlib.suppress(duckdb.Error):
                    cur.rollback()
                if self.table_columns(cur, table) is not None:
                    return False  # another instance created it first
                time.sleep(min(0.05 * 2**attempt, 1.0))
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cur.rollback()
                raise
        raise StorageError(f"could not create table {table!r}: other writers kept conflicting")

    def insert_rows(
        self,
        cur: duckdb.DuckDBPyConnection,
        table: str,
        schema: pa.Schema,
        batches: list[pa.RecordBatch],
    ) -> None:
        self.check_rows(cur, table, schema, batches)
        super().insert_rows(cur, table, schema, batches)

    def check_rows(
        self,
        cur: duckdb.DuckDBPyConnection,
        table: str,
        schema: pa.Schema,
        batches: list[pa.RecordBatch],
        existing: list[Column] | None = None,
    ) -> None:
        """Refuse nulls in NOT NULL columns before inserting: DuckLake 1.5.5 leaves the
        data file of an INSERT that fails a constraint behind (unreferenced). ``existing``:
        the table's columns, if the caller has them."""
        if existing is None:
            existing = self.table_columns(cur, table) or []
        required = {c.name.lower() for c in existing if not c.nullable}
        for index, field in enumerate(schema):
            if field.name.lower() in required:
                nulls = sum(batch.column(index).null_count for batch in batches)
                if nulls:
                    raise WriteRejectedError(
                        f"DuckDB refused the rows: NOT NULL constraint failed: "
                        f"{table}.{field.name} ({nulls} null values)"
                    )
        missing = required - {name.lower() for name in schema.names}
        if missing:
            raise WriteRejectedError(
                f"DuckDB refused the rows: NOT NULL constraint failed: the stream has no "
                f"column {', '.join(sorted(missing))} of table {table!r}"
            )

    def enter_create(
        self, cur: duckdb.DuckDBPyConnection, table: str, *, replacing: bool = False
    ) -> bool:
        if not replacing and self.table_columns(cur, table) is not None:
            return False
        self._enter_create()
        return True

    def _enter_create(self) -> None:
        with self._expiry_turn:
            while self._expiring:
                self._expiry_turn.wait()
            self._creations += 1

    def exit_create(self) -> None:
        with self._expiry_turn:
            self._creations -= 1
            self._expiry_turn.notify_all()

    @contextlib.contextmanager
    def _creating(self) -> Iterator[None]:
        self._enter_create()
        try:
            yield
        finally:
            self.exit_create()

    @contextlib.contextmanager
    def _expiry(self) -> Iterator[None]:
        """Expiry's turn: once no transaction that may create a table is open."""
        with self._expiry_turn:
            if not self._expiry_turn.wait_for(
                lambda: self._creations == 0, timeout=EXPIRY_WAIT_SECONDS
            ):
                raise StorageError(
                    f"snapshot expiry skipped: tables were being created for "
                    f"{EXPIRY_WAIT_SECONDS:g} s; it runs again next time"
                )
            self._expiring = True
        try:
            yield
        finally:
            with self._expiry_turn:
                self._expiring = False
                self._expiry_turn.notify_all()

    def committed_version(self, cur: duckdb.DuckDBPyConnection) -> int | None:
        """The snapshot ``cur``'s last commit made (None if it made none)."""
        try:
            row = cur.execute(
                f"SELECT * FROM ducklake_last_committed_snapshot('{LAKE}')"
            ).fetchone()
        except duckdb.Error as exc:  # the commit stands; only its answer lacks the version
            log.warning("DuckLake: the committed snapshot id is unknown: %s", self._hide(exc))
            return None
        return None if row is None or row[0] is None else int(row[0])

    def new_cursor(self) -> duckdb.DuckDBPyConnection:
        cur = super().new_cursor()
        try:
            cur.execute(f"USE {LAKE}")
        except duckdb.Error as exc:
            cur.close()
            raise self.translate(exc) from None
        return cur

    def translate(self, exc: BaseException) -> BaseException:  # type: ignore[override]
        """``DuckDBStore.translate``, with credentials hidden (drivers quote them)."""
        return self._hide(super().translate(exc))

    def _hide(self, exc: BaseException) -> BaseException:
        """``exc`` with credentials in its message redacted (in place)."""
        text = str(exc)
        clean = redact(text, self._secrets)
        if clean != text:
            exc.args = (clean,)
            if isinstance(exc, ArrowportError):
                exc.detail = clean
        return exc

    def statistics(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "catalog": self.catalog_label,
            "data_path": self.data_path,
            "commits": self.commits,
            "rollbacks": self.rollbacks,
            "schema_mismatches": self.schema_mismatches,
            "merges": self.merges,
            "expired_snapshots": self.expired_snapshots,
        }
        if not self.remote_catalog and os.path.exists(self.catalog):
            stats["catalog_bytes"] = os.path.getsize(self.catalog)
        return stats

    # -- reads: the current snapshot, or one by id ------------------------------

    def table_info_at(self, name: str) -> tuple[TableInfo, int]:
        """``table_info`` and the snapshot it describes, read in one transaction."""
        table = valid_table_name(name)
        with self._read_cursor() as cur:
            try:
                with snapshot(cur):
                    info = describe_table(cur, resolve_table(cur, table))
                    row = cur.execute(f"SELECT id FROM {LAKE}.current_snapshot()").fetchone()
            except duckdb.Error as exc:
                raise self.translate(exc) from None
        return info, int(row[0]) if row else 0

    def current_snapshot(self) -> int:
        with self._cursor() as cur:
            try:
                row = cur.execute(f"SELECT id FROM {LAKE}.current_snapshot()").fetchone()
            except duckdb.Error as exc:
                raise self.translate(exc) from None
            return int(row[0]) if row else 0

    def snapshots(self, table: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The lake's snapshots, newest first (those that changed ``table`` if given)."""
        with self._cursor() as cur:
            try:
                sql = (
                    "SELECT snapshot_id, epoch_ms(snapshot_time) AS at_ms, changes "
                    f"FROM ducklake_snapshots('{LAKE}') ORDER BY snapshot_id DESC"
                )
                if table is None and limit is not None:
                    sql += f" LIMIT {int(limit)}"
                data = cur.execute(sql).to_arrow_table()
            except duckdb.Error as exc:
                raise self.translate(exc) from None
        out = []
        resolved = ids = None
        if table is not None:
            resolved = self.table_info(table).name.lower()
            ids = self._table_ids(resolved)
        for row in data.to_pylist():
            changes = dict(row["changes"] or ())
            if resolved is not None:
                touched = {
                    str(value).split(".")[-1].strip('"').lower()
                    for values in changes.values()
                    for value in values or ()
                }
                if resolved not in touched and not touched & (ids or set()):
                    continue
            out.append(
                {
                    "version": int(row["snapshot_id"]),
                    "timestamp_ms": int(row["at_ms"]),
                    "changes": {k: [str(v) for v in vs] for k, vs in changes.items() if vs},
                }
            )
            if limit is not None and len(out) >= limit:
                break
        return out

    def _table_ids(self, table: str) -> set[str]:
        with self._cursor() as cur:
            try:
                rows = cur.execute(
                    f"SELECT table_id FROM ducklake_table_info('{LAKE}') "
                    "WHERE lower(table_name) = ?",
                    [table],
                ).fetchall()
            except duckdb.Error as exc:
                raise self.translate(exc) from None
        return {str(r[0]) for r in rows}

    def scan(
        self,
        table: str,
        *,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        batch_rows: int = 122_880,
        version: int | None = None,
    ) -> GuardedReader:
        """``DuckDBStore.scan``, at snapshot ``version`` if given (time travel)."""
        if version is None:
            return super().scan(table, columns=columns, limit=limit, batch_rows=batch_rows)
        name = valid_table_name(table)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidReadError(f"version must be a non-negative integer, not {version!r}")
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise InvalidReadError(f"limit must be a non-negative integer, not {limit!r}")
        with self._read_cursor() as cur:
            try:
                cur.begin()
                latest = cur.execute(f"SELECT id FROM {LAKE}.current_snapshot()").fetchone()
                if latest is None or version > int(latest[0]):
                    raise InvalidReadError(
                        f"version {version} of table {name!r} does not exist; the lake's "
                        f"latest snapshot is {0 if latest is None else int(latest[0])}"
                    )
                resolved = resolve_table(cur, name)
                selected = select_list(cur, resolved, columns)
                sql = (
                    f"SELECT {selected} FROM {quote_identifier(resolved)} "
                    f"AT (VERSION => {int(version)})"
                )
                if limit is not None:
                    sql += f" LIMIT {int(limit)}"
                reader: pa.RecordBatchReader = cur.execute(sql).to_arrow_reader(batch_rows)
                return self.gate.track(reader)
            except duckdb.Error as exc:
                if isinstance(exc, duckdb.CatalogException | duckdb.InvalidInputException):
                    raise InvalidReadError(
                        f"version {version} of table {name!r} cannot be read: "
                        f"{str(exc).splitlines()[0]}"
                    ) from None
                raise self.translate(exc) from None

    # -- maintenance (the server runs these in the background) -----------------

    def merge_files(self) -> None:
        """Merge small adjacent data files (a snapshot of its own; data unchanged)."""
        with self._counted("merge"), self._cursor() as cur:
            cur.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}')").fetchall()
        self.merges += 1

    @contextlib.contextmanager
    def _counted(self, job: str) -> Iterator[None]:
        result = "failed"
        try:
            yield
            result = "ok"
        except duckdb.Error as exc:
            raise self.translate(exc) from None
        finally:
            key = (job, result)
            self.maintenance[key] = self.maintenance.get(key, 0) + 1

    def expire_and_clean(self) -> None:
        """Expire snapshots older than the retention, delete files no snapshot needs,
        and forget idempotency keys older than their TTL."""
        hours = float(self.snapshot_retention_hours)
        grace = min(hours, CLEANUP_GRACE_HOURS)  # for reads still on a just-expired snapshot
        with self._counted("cleanup"):
            with self._expiry(), self._cursor() as cur:
                expired = cur.execute(
                    f"CALL ducklake_expire_snapshots('{LAKE}', "
                    f"older_than => now() - INTERVAL '{hours} hours')"
                ).to_arrow_table()
            self.expired_snapshots += expired.num_rows
            with self._cursor() as cur:
                cur.execute(
                    f"CALL ducklake_cleanup_old_files('{LAKE}', "
                    f"older_than => now() - INTERVAL '{grace} hours')"
                ).to_arrow_table()
                # data files no snapshot references (a failed INSERT's): long after any
                # request that could still be writing them
                cur.execute(
                    f"CALL ducklake_delete_orphaned_files('{LAKE}', "
                    f"older_than => now() - INTERVAL '{ORPHAN_GRACE_HOURS} hours')"
                ).to_arrow_table()
            # Keys are pruned here, not at open: the ledger is shared by every instance.
            self.prune_ledger()
