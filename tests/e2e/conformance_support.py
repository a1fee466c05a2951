"""What the conformance suite and the type property test share: one real server per backend,
sending a stream over HTTP or Flight, reading a table back through the backend's own readers,
and judging an answer: stored equal, or refused 4xx naming a column; never 5xx or a death.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from arrow_equal import canonical, differences
from catalogue_inputs import Msg, flight_message, path_descriptor  # also puts tests/io on sys.path
from deltalake import DeltaTable
from h2_client import SERVICE, H2Client, Response
from lake_support import attach_lake
from support import ARROW, Server

from arrowport.protocol.grpc import decode_grpc_message

BACKENDS = ("duckdb", "ducklake", "delta")
TRANSPORTS = ("http", "flight")
TIMEOUT = 60.0
REFUSAL_STATUSES = {400, 415, 422}  # a refused valid stream (413: over a limit, not expected)
CLIENT_GRPC = {3: "INVALID_ARGUMENT", 9: "FAILED_PRECONDITION", 11: "OUT_OF_RANGE"}
PROBE = "conformance_probe"
# Readers scan on one thread and order by rowid (rows in insertion order; a DuckLake of
# several data files is not read in insertion order without it) and export DuckDB types losslessly
# (UUID as arrow.uuid, TIMESTAMP_NS as ns, HUGEINT as an opaque 16-byte integer).
READER_CONFIG = {
    "threads": 1,
    "arrow_lossless_conversion": True,
}  # a table a known-good row goes to after each refusal

CONFIGS = {
    "duckdb": "storage_backend: duckdb\n",
    "ducklake": (
        "storage_backend: ducklake\nducklake: {catalog: ./meta.ducklake, data_path: ./lakedata}\n"
    ),
    "delta": "storage_backend: delta\ndelta_config: {table_path: ./lake}\n",
}

# -- the corpus -----------------------------------------------------------------------------

HOW_TO_GET = (
    "the Arrow test corpus is not here: git clone https://github.com/apache/arrow-testing "
    "and set ARROW_TEST_DATA=<that clone>/data (by default ../shared/arrow-testing/data "
    "beside the repository is used when it exists)"
)


def corpus_data() -> Path | None:
    """The arrow-testing ``data`` directory, found as Arrow's own implementations do."""
    env = os.environ.get("ARROW_TEST_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    default = Path(__file__).resolve().parents[2] / ".." / "shared" / "arrow-testing" / "data"
    return default.resolve() if default.is_dir() else None


# -- answers --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one send got: an HTTP status (or 200 + gRPC status) and the answer's text."""

    transport: str
    status: int | None = None  # HTTP status; for Flight the gRPC status's HTTP-like class
    grpc: int | None = None  # the gRPC status code (Flight)
    error: str | None = None  # the JSON ``error`` (HTTP)
    detail: str = ""  # the JSON ``detail`` or the gRPC message
    body: str = ""  # the whole answer text, for hygiene checks
    died: str | None = None  # the server's log tail when the process died on this send
    broken: str | None = None  # what a known-good write got right after this send
    seconds: float = 0.0

    @property
    def stored(self) -> bool:
        return self.status == 200 and self.grpc in (None, 0)

    @property
    def refused(self) -> bool:
        """Refused as a valid stream may be: 400/415/422, or INVALID_ARGUMENT and kin."""
        if self.transport == "http":
            return self.status in REFUSAL_STATUSES
        return self.grpc in CLIENT_GRPC

    @property
    def client_error(self) -> bool:
        """Any 4xx, or a gRPC status that blames the client (RESOURCE_EXHAUSTED too)."""
        if self.transport == "http":
            return self.status is not None and 400 <= self.status < 500
        return self.grpc in CLIENT_GRPC or self.grpc == 8

    def show(self) -> str:
        code = f"gRPC {self.grpc}" if self.grpc is not None else f"HTTP {self.status}"
        return f"{self.transport} {code} {self.error or ''}: {self.detail[:300]}"


FORBIDDEN = ("Traceback", "INTERNAL Error", "site-packages", "/arrowport/", ".cpp", "std::")
PATH = re.compile(r"(?<![\w:/.])/(?:[\w.+-]+/){2,}[\w.+-]*")  # 3+ components: a file path


def hygiene(outcome: Outcome, server: Server) -> list[str]:
    """Internals an answer must not carry: a traceback, an engine's internals, a path."""
    text = outcome.body + outcome.detail
    problems = [f"the answer contains {word!r}" for word in FORBIDDEN if word in text]
    if str(server.workdir) in text:
        problems.append("the answer contains the server's directory")
    problems += [f"the answer contains a path {m!r}" for m in PATH.findall(text)[:2]]
    return problems


def names_a_column(outcome: Outcome, names: Sequence[str]) -> bool:
    """The refusal names one of ``names`` (a column with an empty name: it says so)."""
    return any(
        (name in outcome.detail) if name else ("empty" in outcome.detail.lower()) for name in names
    )


# -- a server per backend -------------------------------------------------------------------


@dataclass
class BackendServer:
    """One backend's server, restarted if a send killed it or left it unable to write."""

    backend: str
    workdir: Path
    server: Server = field(init=False)
    deaths: int = 0
    restarts: int = 0

    def __post_init__(self) -> None:
        config = self.workdir / "arrowport.yaml"
        config.write_text(CONFIGS[self.backend])
        self.server = Server(self.workdir, config=config)
        self.server.start()
        self._client: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=TIMEOUT)
        return self._client

    @property
    def port(self) -> int:
        port = httpx.URL(self.server.url).port
        assert port is not None
        return port

    def flight(self) -> fl.FlightClient:
        return fl.FlightClient(f"grpc://127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.server.stop()

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.server.start()

    # -- sending --

    def send_http(self, table: str, body: bytes) -> Outcome:
        out = Outcome("http")
        start = time.monotonic()
        try:
            response = self.http.post(
                f"{self.server.url}/ingest/{table}", content=body, headers={"Content-Type": ARROW}
            )
        except httpx.HTTPError as exc:
            out.detail = f"no answer: {exc!r}"
        else:
            out.status = response.status_code
            out.body = response.text
            try:
                payload = response.json()
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                out.error = str(payload.get("error"))
                out.detail = str(payload.get("detail", ""))
        out.seconds = time.monotonic() - start
        return out

    def send_flight_table(
        self, table: str, schema: pa.Schema, batches: list[pa.RecordBatch]
    ) -> Outcome:
        """DoPut with pyarrow's client: the schema, then every batch."""
        out = Outcome("flight")
        start = time.monotonic()
        client = self.flight()
        try:
            writer, reader = client.do_put(fl.FlightDescriptor.for_path(table), schema)
            try:
                for batch in batches:
                    writer.write_batch(batch)
                writer.done_writing()
                while reader.read() is not None:
                    pass
            finally:
                writer.close()
            out.status, out.grpc = 200, 0
        except pa.ArrowInvalid as exc:
            out.status, out.grpc, out.detail = 200, 3, str(exc)
        except Exception as exc:
            out.status, out.grpc, out.detail = 200, _grpc_code(exc), f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        out.body = out.detail
        out.seconds = time.monotonic() - start
        return out

    def send_flight_raw(self, table: str, stream: bytes) -> Outcome:
        """DoPut with a raw h2 client: the stream's messages as FlightData, as far as they
        can be taken apart; what cannot is sent as one last message header."""
        out = Outcome("flight")
        start = time.monotonic()
        data = b"".join(
            flight_message(m, path_descriptor(table) if i == 0 else None)
            for i, m in enumerate(split_messages(stream))
        )
        raw = H2Client(self.server.url)
        try:
            sid = raw.conn.get_next_available_stream_id()
            raw.conn.send_headers(
                sid,
                [
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":authority", b"127.0.0.1"),
                    (b":path", (SERVICE + "DoPut").encode()),
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                ],
            )
            response = raw.responses[sid] = Response()
            raw.flush()
            view = memoryview(data)
            deadline = time.monotonic() + TIMEOUT
            while view and not (response.ended or response.reset is not None):
                window = min(
                    raw.conn.local_flow_control_window(sid), raw.conn.max_outbound_frame_size
                )
                if window <= 0:
                    if time.monotonic() > deadline:
                        break
                    raw.pump(1.0, auto_ack=True)
                    continue
                raw.conn.send_data(sid, view[:window].tobytes())
                view = view[window:]
                raw.flush()
            if not (response.ended or response.reset is not None):
                raw.conn.end_stream(sid)
                raw.flush()
            response = raw.finish(sid, TIMEOUT)
            out.status = response.status
            final = response.final_headers
            out.grpc = int(final.get(b"grpc-status", b"-1"))
            out.detail = decode_grpc_message(final.get(b"grpc-message", b""))
            out.body = out.detail + bytes(response.data).decode("utf-8", "replace")
        except Exception as exc:  # no answer at all: the check below reports it
            out.detail = f"no answer: {exc!r}"
        finally:
            raw.close()
        out.seconds = time.monotonic() - start
        return out

    # -- after each send --

    def check_after(self, out: Outcome) -> None:
        """Record a death (and restart), or a backend left unable to write (and restart)."""
        if not self.server.running:
            out.died = "".join(self.server.log[-15:])
            self.deaths += 1
            self.restart()
            return
        try:
            health = self.http.get(f"{self.server.url}/health")
            healthy = health.status_code == 200
        except httpx.HTTPError as exc:
            healthy, health = False, exc
        if not healthy:
            out.broken = f"/health answered {health!r}"
            self.restart()
            return
        if out.stored:
            return
        probe = pa.table({"id": pa.array([1], pa.int64())})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, probe.schema) as writer:
            writer.write_table(probe)
        answer = self.send_http(PROBE, sink.getvalue().to_pybytes())
        if answer.status != 200:
            out.broken = f"a good 1-row write then got {answer.show()}"
            if self.server.running:
                self.restart()
            else:
                out.died = "".join(self.server.log[-15:])
                self.deaths += 1
                self.restart()

    # -- reading back --

    def read_doget(self, table: str) -> pa.Table | None:
        """The table through the server's Flight DoGet (None: it does not exist)."""
        client = self.flight()
        try:
            return client.do_get(fl.Ticket(table.encode())).read_all()
        except KeyError:
            return None
        except pa.ArrowException as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                return None
            raise
        finally:
            client.close()


def _grpc_code(exc: Exception) -> int:
    """The gRPC status a pyarrow Flight exception stands for (2 UNKNOWN if it cannot tell)."""
    kinds: list[tuple[type[BaseException], int]] = [
        (fl.FlightCancelledError, 1),
        (fl.FlightTimedOutError, 4),
        (KeyError, 5),
        (fl.FlightUnauthorizedError, 7),
        (pa.ArrowNotImplementedError, 12),
        (fl.FlightInternalError, 13),
        (fl.FlightUnavailableError, 14),
        (fl.FlightUnauthenticatedError, 16),
    ]
    for kind, code in kinds:
        if isinstance(exc, kind):
            return code
    text = str(exc)
    for code, name in CLIENT_GRPC.items():
        if name.lower().replace("_", " ") in text.lower():
            return code
    return 2


def split_messages(stream: bytes) -> list[Msg]:
    """The IPC messages pyarrow can frame (metadata + body); the rest as one raw header."""
    reader = pa.BufferReader(stream)
    out: list[Msg] = []
    while True:
        position = reader.tell()
        try:
            message = pa.ipc.read_message(reader)
        except (pa.ArrowException, OSError, EOFError, ValueError):
            rest = stream[position:]
            if rest:
                out.append(Msg(rest))
            break
        body = message.body
        out.append(Msg(message.metadata.to_pybytes(), b"" if body is None else body.to_pybytes()))
    return out or [Msg(stream)]


# -- reading tables back through the backends' own readers ----------------------------------


@dataclass
class Stored:
    """A table as each reader of a backend returns it (None: absent), or why it could not."""

    tables: dict[str, pa.Table | None] = field(default_factory=dict)  # reader -> table
    errors: dict[str, str] = field(default_factory=dict)  # reader -> error


def duckdb_delta_available() -> bool:
    """DuckDB's ``delta`` extension, if its package is installed (no download at run time)."""
    try:
        import duckdb_extensions  # type: ignore[import-untyped,unused-ignore]

        duckdb_extensions.import_extension("delta")
        with duckdb.connect() as con:
            con.execute("LOAD delta")
    except Exception:
        return False
    return True


def read_back(backend: str, workdir: Path, tables: Sequence[str]) -> dict[str, Stored]:
    """Every table, read with the server stopped: DuckDB read-only; the lake attached in DuckDB;
    Delta with deltalake and (if its extension is installed) DuckDB's ``delta_scan``."""
    out = {t: Stored() for t in tables}
    if backend == "delta":
        with_scan = duckdb_delta_available()
        con = duckdb.connect(config=READER_CONFIG) if with_scan else None
        if con is not None:
            con.execute("LOAD delta")
        for t in tables:
            path = workdir / "lake" / t
            if not (path / "_delta_log").is_dir():
                out[t].tables["deltalake"] = None
                if con is not None:
                    out[t].tables["duckdb delta_scan"] = None
                continue
            try:
                out[t].tables["deltalake"] = DeltaTable(str(path)).to_pyarrow_table()
            except Exception as exc:
                out[t].errors["deltalake"] = f"{type(exc).__name__}: {exc}"[:500]
            if con is not None:
                try:
                    sql = f"SELECT * FROM delta_scan('{path}')"
                    out[t].tables["duckdb delta_scan"] = con.execute(sql).to_arrow_table()
                except Exception as exc:
                    out[t].errors["duckdb delta_scan"] = f"{type(exc).__name__}: {exc}"[:500]
        if con is not None:
            con.close()
        return out
    if backend == "duckdb":
        con = duckdb.connect(str(workdir / "test.duckdb"), read_only=True, config=READER_CONFIG)
        prefix, reader = "", "duckdb"
    else:
        con = duckdb.connect(config=READER_CONFIG)
        attach_lake(con, workdir / "meta.ducklake", workdir / "lakedata")
        prefix, reader = "lake.", "ducklake"
    with con:
        catalog = "lake" if backend == "ducklake" else None
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables"
            + (" WHERE table_catalog = 'lake'" if catalog else "")
        ).fetchall()
        present = {str(r[0]).lower() for r in rows}
        for t in tables:
            if t.lower() not in present:
                out[t].tables[reader] = None
                continue
            try:
                out[t].tables[reader] = con.execute(
                    f'SELECT * FROM {prefix}"{t}" ORDER BY rowid'
                ).to_arrow_table()
            except Exception as exc:
                out[t].errors[reader] = f"{type(exc).__name__}: {exc}"[:500]
    return out


# -- the verdict ----------------------------------------------------------------------------


def verdict(
    outcome: Outcome, sent: pa.Table | None, stored: Stored, server: Server, *, valid: bool
) -> list[str]:
    """Everything wrong with how one stream was handled (empty: stored equal or refused well).

    ``valid``: pyarrow reads the stream (it may be stored); otherwise it must be refused.
    """
    problems = []
    if outcome.died:
        problems.append(f"the server process DIED:\n{outcome.died}")
    if outcome.broken:
        problems.append(f"the backend could not write afterwards: {outcome.broken}")
    problems += hygiene(outcome, server)
    names = [f.name for f in sent.schema] if sent is not None else []
    if outcome.stored and valid and sent is not None:
        problems += _stored_equal(sent, stored)
    elif outcome.stored:
        problems.append("an invalid stream was answered 200")
    elif outcome.refused or (not valid and outcome.client_error):
        if outcome.transport == "http" and outcome.error in (None, "None"):
            problems.append(f"the refusal has no JSON error body: {outcome.body[:200]!r}")
        if valid and names and not names_a_column(outcome, names):
            problems.append(f"the refusal does not name a column {names[:8]}: {outcome.show()}")
        for reader, table in stored.tables.items():
            if table is not None and table.num_rows:
                problems.append(f"refused, yet {reader} holds {table.num_rows} rows")
        for reader, error in stored.errors.items():
            problems.append(f"refused, and the table is left unreadable by {reader}: {error}")
    else:
        kind = (
            "5xx" if (outcome.status or 0) >= 500 or (outcome.grpc or 0) in (2, 13, 14) else "wrong"
        )
        problems.append(f"{kind} answer: {outcome.show()}")
    return problems


def _stored_equal(sent: pa.Table, stored: Stored) -> list[str]:
    problems = [f"{reader} cannot read it: {error}" for reader, error in stored.errors.items()]
    for reader, table in stored.tables.items():
        if table is None:
            if sent.num_rows:
                problems.append(f"answered 200 but {reader} finds no table")
            continue
        found = differences(sent, table)
        if found and same_rows_in_another_order(sent, table):
            # DuckLake 1.5.5 numbers the rows of one INSERT as its threads write them
            # (docs/ducklake.md); a DuckDB file and Delta keep the order sent.
            found = (
                []
                if reader == "ducklake"
                else ["every row is stored, but in another order than sent"]
            )
        problems += [f"{reader}: {d}" for d in found]
    if not stored.tables and not stored.errors:
        problems.append("nothing was read back")
    return problems


def same_rows_in_another_order(sent: pa.Table, stored: pa.Table) -> bool:
    """The stored rows are the sent rows, reordered (columns matched as ``differences`` does)."""
    if sent.num_rows != stored.num_rows or sent.num_columns != stored.num_columns:
        return False
    by_name = {f.name.lower(): i for i, f in enumerate(stored.schema)}
    if len(by_name) != stored.num_columns or any(
        f.name.lower() not in by_name for f in sent.schema
    ):
        return False
    left = [canonical(c) for c in sent.columns]
    right = [canonical(stored.column(by_name[f.name.lower()])) for f in sent.schema]
    return sorted(map(repr, zip(*left, strict=True))) == sorted(map(repr, zip(*right, strict=True)))


def table_name(*parts: str) -> str:
    """A fresh, readable table name: lower case, letters, digits and underscores."""
    name = "_".join(parts).lower()
    return re.sub(r"[^a-z0-9_]", "_", name)[:120]


def json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def skip_without_corpus() -> Path:
    data = corpus_data()
    if data is None:
        pytest.skip(HOW_TO_GET)
    return data
