# ruff: noqa: E501
"""Throughput of N Arrowport instances writing ONE table, divided by one instance's.

    python bench/multi_instance.py --quick                     # smoke test, < 60 s
    python bench/multi_instance.py                             # the measurement (~10 min on 2 cores)
    python bench/multi_instance.py --setups ducklake --instances 1,2,4 --producers 8 \
        --requests 5 --rows 200000 --repeat 5 --json /tmp/multi.json   # = the defaults
    python bench/multi_instance.py --quiet-wait 60             # the same, each run started on an idle machine
    python bench/multi_instance.py --setups delta-local        # Delta on a local directory instead of S3
    python bench/multi_instance.py --setups ducklake --rows 5000 --requests 40 --set ducklake.retry_wait_ms=10   # small requests, shorter DuckLake retry waits
    python bench/multi_instance.py --setups ducklake --protocol flight --quick   # Flight DoPut instead of HTTP

Setups (``--setups``, comma-separated):

* ``ducklake``: DuckLake with a PostgreSQL catalog. One throwaway PostgreSQL
  (``tests/pg_support.py``: 127.0.0.1, fsync off) serves the whole run; every
  (setup, N, repetition) gets a fresh database and a fresh data directory.
  Each instance runs ``arrowport serve --port 0 --db <its own file> --config
  shared.yaml`` with ``storage_backend: ducklake``, ``ducklake.catalog:
  'postgres:<conninfo>'``, ``data_path: <dir>``, ``merge_interval: 0``,
  ``cleanup_interval: 0``.
* ``delta-s3``: Delta on an S3-compatible store (moto on 127.0.0.1, started
  with ``tests/s3_support.py``), ``delta_config.table_path: s3://bucket/<fresh
  prefix>`` and ``delta_config.storage_options``. Only when that helper exists.
* ``delta-local``: Delta on a local directory that all instances share
  (``storage_backend: delta``, ``delta_config.table_path: <fresh dir>``).

Default setups: ``ducklake,delta-s3`` when ``tests/s3_support.py`` exists, else
``ducklake,delta-local``.

The workload is fixed per run: ``--producers`` P threads each send
``--requests`` R requests of ``--rows`` B rows of the lineitem-like table
(``bench/lineitem.py``'s generator; each producer's IPC stream is built in
memory beforehand, its own row range, and sent R times). Producer ``p`` talks
to instance ``p % N``; all write stream/table ``lineitem``. HTTP is
``POST /ingest/lineitem`` with httpx (the body is the prepared bytes); Flight
is ``do_put`` of the prepared table (pyarrow's client). Before the timed
phase every instance gets one small warm-up request, one after the other
(it creates the table, so that race is not timed). Timed: from the moment the
producers are released to the last 200 (or PutResult). Reported per run:
rows/s and MB/s (IPC bytes), the servers' CPU (utime+stime from
``/proc/<pid>/stat`` of every instance, read right before and after the
timed phase, before SIGINT), the store's CPU (PostgreSQL: the postmaster with
its reaped and live children; moto: its server process), this process's CPU
(the producers), and what else the machine did (``other``, from
``/proc/stat``; the busiest other processes are named). Per request: its
latency as the producer saw it (request start to the answer after commit; it
includes the wait for the instance's per-table writer lock).

After the servers have exited, the table's rows are counted and must equal
warm-up + P*R*B exactly (DuckLake: DuckDB with ``ATTACH 'ducklake:postgres:...'
(READ_ONLY)``; Delta: ``deltalake.DeltaTable`` and its dataset). DuckLake's
commit races are counted three ways:

* ``races``: the timed phase's ``duplicate key ... "ducklake_snapshot_pkey"``
  errors in PostgreSQL's log. Snapshot ids are sequential; a commit whose id
  another writer took first fails with this error and DuckLake retries it.
  This is the exact count of lost races.
* ``write_xacts``: transaction ids PostgreSQL assigned in the timed phase
  (``pg_snapshot_xmax(pg_current_snapshot())`` before and after): catalog
  write transactions, committed or not (1 per request when nothing races).
* ``xact_rollback`` (and ``xact_commit``) from ``pg_stat_database``, read after
  the instances exited (a backend's counters are flushed when it exits; the
  database is fresh per run, so they cover startup, warm-up and the timed
  phase). This counts every rolled-back catalog transaction, read-only ones
  included: N=1, which cannot race, shows that baseline.

For Delta, the table version tells the number of commits, and each instance's
``/metrics`` (read before SIGINT) counts its commits that lost their version to
another writer and landed later (``arrowport_delta_commits_raced``: delta-rs
retried them) and those Arrowport retried after delta-rs gave up
(``arrowport_delta_commit_retries``); their sums are ``races`` and ``retries``.

Then ``--probe-commits`` K small commits are timed in this process on a
probe table of the same lake, with no other writer: DuckLake: ``INSERT`` 1,000
rows then ``COMMIT``, the two timed apart; then K commits that lose a race on
purpose (two DuckDB connections, each with the lake attached as two instances
have it, both insert; one commits, the other's ``COMMIT`` is timed). Delta:
``write_deltalake`` of 1,000 rows. This is the commit latency that bounds how
many commits per second one lake can take, and the price of a lost race.

Each repetition runs every setup, and within it every N, in an order that
alternates between repetitions (1,2,4 then 4,2,1 ...). Ratios N÷1 (rows/s) are
computed per repetition from the same setup, then their median is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(TESTS))
import lineitem  # noqa: E402
from flight_transport import code_version, cpu_by_process, top_others, wait_quiet  # noqa: E402
from http_ingest import (  # noqa: E402
    CONTENT_TYPE,
    STREAM,
    Server,
    proc_cpu_seconds,
    system_busy_seconds,
)

TICK = os.sysconf("SC_CLK_TCK")
WARMUP_ROWS = 1_000
PROBE_ROWS = 1_000


# -- data --------------------------------------------------------------------------------


def producer_table(producer: int, rows: int) -> pa.Table:
    """Producer ``producer``'s rows: its own range of the lineitem-like table."""
    start = producer * rows
    batches = [
        lineitem.make_batch(s, min(lineitem.BATCH_ROWS, start + rows - s), 42)
        for s in range(start, start + rows, lineitem.BATCH_ROWS)
    ]
    return pa.Table.from_batches(batches, schema=lineitem.SCHEMA)


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=lineitem.BATCH_ROWS)
    return sink.getvalue().to_pybytes()


# -- /proc -------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    return out


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid``, its reaped children (cutime+cstime) and its live children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total = sum(int(v) for v in fields[11:15]) / TICK
    for child in children(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += proc_cpu_seconds(child)
    return total


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# -- setups -------------------------------------------------------------------------------


class Setup:
    """One kind of shared table; ``prepare`` makes a fresh one for a run."""

    name = ""
    backend = ""

    def prepare(self, run_dir: Path, tag: str) -> dict[str, Any]:
        """The config shared by the instances of one run."""
        raise NotImplementedError

    def count_rows(self) -> int:
        raise NotImplementedError

    def catalog_counters(self) -> dict[str, int]:
        return {}

    def mark(self) -> Any:
        """A point to count the timed phase's catalog events from (``since``)."""
        return None

    def since(self, mark: Any) -> dict[str, int]:
        return {}

    def catalog_cpu(self) -> float | None:
        """CPU seconds used so far by the catalog or store process (PostgreSQL, moto)."""
        return None

    def store_pids(self) -> set[int]:
        """The catalog or store processes, not counted among the machine's other load."""
        return set()

    def probe(self, n: int) -> dict[str, float]:
        """Median latency of ``n`` small commits, one at a time."""
        return {}

    def finish(self) -> None:
        """Remove the run's table (data files)."""

    def close(self) -> None:
        """Stop what ``__init__`` started."""


class DuckLakePg(Setup):
    name = "ducklake"
    backend = "ducklake"

    def __init__(self, tmp: Path) -> None:
        from pg_support import start_postgres

        self.pg = start_postgres(tmp)
        self.conninfo = ""
        self.data_path = Path()
        with open(self.pg.data / "postmaster.pid") as f:
            self.postmaster = int(f.readline())

    def prepare(self, run_dir: Path, tag: str) -> dict[str, Any]:
        self.conninfo = self.pg.create_database(f"lake_{tag}")
        self.data_path = run_dir / "lakedata"
        return {
            "storage_backend": "ducklake",
            "ducklake": {
                "catalog": f"postgres:{self.conninfo}",
                "data_path": str(self.data_path),
                "merge_interval": 0,
                "cleanup_interval": 0,
            },
        }

    @contextlib.contextmanager
    def _lake(self, read_only: bool = True) -> Iterator[Any]:
        import duckdb
        import duckdb_extensions  # type: ignore[import-untyped]

        for ext in ("ducklake", "postgres_scanner"):
            duckdb_extensions.import_extension(ext)
        con = duckdb.connect()
        try:
            con.execute("LOAD ducklake")
            con.execute("LOAD postgres")
            mode = " (READ_ONLY)" if read_only else ""
            con.execute(f"ATTACH 'ducklake:postgres:{self.conninfo}' AS lake{mode}")
            yield con
        finally:
            con.close()

    def count_rows(self) -> int:
        with self._lake() as con:
            return int(con.execute(f"SELECT count(*) FROM lake.{STREAM}").fetchone()[0])

    def catalog_counters(self) -> dict[str, int]:
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True) as con:
            row = con.execute(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        return {"xact_commit": int(row[0]), "xact_rollback": int(row[1])}

    def mark(self) -> tuple[int, int]:
        return self.pg.logfile.stat().st_size, self._next_xid()

    def since(self, mark: tuple[int, int]) -> dict[str, int]:
        """Commit races lost (unique violations on the snapshot id, from PostgreSQL's
        log), all errors logged, and transaction ids assigned (write transactions)."""
        offset, xid = mark
        with open(self.pg.logfile, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        return {
            "races": sum(
                1
                for line in text.splitlines()
                if "ERROR:" in line and "ducklake_snapshot_pkey" in line
            ),
            "errors": text.count("ERROR:"),
            "write_xacts": self._next_xid() - xid,
        }

    def _next_xid(self) -> int:
        import psycopg

        with psycopg.connect(self.pg.conninfo("postgres"), autocommit=True) as con:
            row = con.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
        assert row is not None
        return int(row[0])

    def catalog_cpu(self) -> float | None:
        return tree_cpu_seconds(self.postmaster)

    def store_pids(self) -> set[int]:
        return {self.postmaster, *children(self.postmaster)}

    def probe(self, n: int) -> dict[str, float]:
        """Plain commits, then commits that lost a race: two connections (two lakes
        attached, as two instances have) insert; one commits, then the other is timed."""
        batch = lineitem.make_batch(0, PROBE_ROWS, 7)
        inserts: list[float] = []
        commits: list[float] = []
        raced: list[float] = []
        offset = self.pg.logfile.stat().st_size
        with self._lake(read_only=False) as con, self._lake(read_only=False) as rival:
            con.register("probe_src", batch)
            rival.register("probe_src", batch)
            con.execute("CREATE TABLE lake.probe AS SELECT * FROM probe_src LIMIT 0")
            for _ in range(n):
                t0 = time.perf_counter()
                con.execute("BEGIN")
                con.execute("INSERT INTO lake.probe SELECT * FROM probe_src")
                t1 = time.perf_counter()
                con.execute("COMMIT")
                t2 = time.perf_counter()
                inserts.append(t1 - t0)
                commits.append(t2 - t1)
            for _ in range(n):
                for c in (con, rival):
                    c.execute("BEGIN")
                    c.execute("INSERT INTO lake.probe SELECT * FROM probe_src")
                rival.execute("COMMIT")
                t0 = time.perf_counter()
                con.execute("COMMIT")  # its snapshot predates the rival's commit
                raced.append(time.perf_counter() - t0)
        with open(self.pg.logfile, "rb") as f:
            f.seek(offset)
            races = f.read().decode(errors="replace").count("ducklake_snapshot_pkey")
        return {
            "probe_insert_ms": statistics.median(inserts) * 1e3,
            "probe_commit_ms": statistics.median(commits) * 1e3,
            "probe_raced_commit_ms": statistics.median(raced) * 1e3,
            "probe_races": float(races),
        }

    def finish(self) -> None:
        shutil.rmtree(self.data_path, ignore_errors=True)

    def close(self) -> None:
        self.pg.stop()


class DeltaLocal(Setup):
    name = "delta-local"
    backend = "delta"

    def __init__(self, tmp: Path) -> None:
        self.root = Path()

    def prepare(self, run_dir: Path, tag: str) -> dict[str, Any]:
        self.root = run_dir / "delta"
        return {"storage_backend": "delta", "delta_config": {"table_path": str(self.root)}}

    def _uri(self, table: str) -> str:
        return str(self.root / table)

    def _storage_options(self) -> dict[str, str] | None:
        return None

    def _table(self) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(self._uri(STREAM), storage_options=self._storage_options())

    def count_rows(self) -> int:
        return int(self._table().to_pyarrow_dataset().count_rows())

    def catalog_counters(self) -> dict[str, int]:
        return {"delta_version": int(self._table().version())}

    def probe(self, n: int) -> dict[str, float]:
        from deltalake import write_deltalake

        batch = pa.Table.from_batches([lineitem.make_batch(0, PROBE_ROWS, 7)])
        uri = self._uri("probe")
        opts = self._storage_options()
        write_deltalake(uri, batch, mode="append", storage_options=opts)
        times: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            write_deltalake(uri, batch, mode="append", storage_options=opts)
            times.append(time.perf_counter() - t0)
        return {"probe_commit_ms": statistics.median(times) * 1e3}

    def finish(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class DeltaS3(DeltaLocal):
    """Delta on moto's S3 on 127.0.0.1 (``tests/s3_support.py``; conditional PUTs
    are atomic there, as on S3), the config keys ``tests/e2e/test_multi_delta_s3.py`` uses."""

    name = "delta-s3"

    def __init__(self, tmp: Path) -> None:
        from s3_support import NO_AWS_ENV, MotoS3

        os.environ.update(NO_AWS_ENV)  # the servers inherit it: never ask AWS for anything
        self.s3 = MotoS3(bucket="arrowport-bench").start()
        self.prefix = ""

    def prepare(self, run_dir: Path, tag: str) -> dict[str, Any]:
        self.prefix = self.s3.root(tag)
        return {
            "storage_backend": "delta",
            "delta_config": {
                "table_path": self.prefix,
                "storage_options": dict(self.s3.storage_options),
            },
        }

    def _uri(self, table: str) -> str:
        return f"{self.prefix}/{table}"

    def _storage_options(self) -> dict[str, str] | None:
        return dict(self.s3.storage_options)

    def finish(self) -> None:
        """Delete the run's objects (moto keeps them in this machine's memory)."""
        keys = self.s3.keys(self.prefix)
        client = self.s3.client()
        for i in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=self.s3.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]},
            )

    def catalog_cpu(self) -> float | None:
        assert self.s3.proc is not None
        return tree_cpu_seconds(self.s3.proc.pid)

    def store_pids(self) -> set[int]:
        assert self.s3.proc is not None
        return {self.s3.proc.pid}

    def close(self) -> None:
        self.s3.stop()


SETUPS: dict[str, type[Setup]] = {
    "ducklake": DuckLakePg,
    "delta-s3": DeltaS3,
    "delta-local": DeltaLocal,
}


def default_setups() -> str:
    return "ducklake,delta-s3" if (TESTS / "s3_support.py").exists() else "ducklake,delta-local"


# -- one run ------------------------------------------------------------------------------


@dataclass
class Result:
    setup: str
    n: int
    repetition: int
    seconds: float
    rows: int
    nbytes: int
    requests: int
    server_cpu_s: float
    server_cpu_total_s: float
    client_cpu_s: float
    other_cpu_s: float
    others: str
    catalog_cpu_s: float | None
    durations_ms: list[float]
    counters: dict[str, int] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds


def delta_races(servers: list[Server]) -> dict[str, int]:
    """Delta commits that lost their version to another writer (delta-rs retried them)
    and commits Arrowport retried after delta-rs gave up, summed over the instances'
    ``/metrics`` (counted since each instance started; the warm-up cannot race)."""
    import httpx

    totals = {"races": 0, "retries": 0}
    names = {"arrowport_delta_commits_raced": "races", "arrowport_delta_commit_retries": "retries"}
    for server in servers:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=30).text
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in names:
                totals[names[name]] += int(float(value))
    return totals


def send_http(port: int, body: bytes, requests: int, out: list[dict[str, Any]]) -> None:
    """``requests`` POSTs of ``body``; each answer and its latency (ms) go to ``out``."""
    import httpx

    url = f"http://127.0.0.1:{port}/ingest/{STREAM}"
    with httpx.Client(timeout=600) as client:
        for _ in range(requests):
            t0 = time.perf_counter()
            response = client.post(url, content=body, headers={"Content-Type": CONTENT_TYPE})
            ms = (time.perf_counter() - t0) * 1e3
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
            out.append({"rows": int(response.json()["rows"]), "ms": ms})


def send_flight(port: int, table: pa.Table, requests: int, out: list[dict[str, Any]]) -> None:
    """``requests`` DoPuts of ``table``, each answered by one PutResult after commit."""
    import pyarrow.flight as fl

    client = fl.FlightClient(f"grpc://127.0.0.1:{port}")
    try:
        for _ in range(requests):
            t0 = time.perf_counter()
            writer, reader = client.do_put(fl.FlightDescriptor.for_path(STREAM), table.schema)
            writer.write_table(table, max_chunksize=lineitem.BATCH_ROWS)
            writer.done_writing()
            answer = json.loads(reader.read().to_pybytes())
            writer.close()
            ms = (time.perf_counter() - t0) * 1e3
            out.append({"rows": int(answer["committed_rows"]), "ms": ms})
    finally:
        client.close()


def run_once(
    setup: Setup,
    n: int,
    rep: int,
    tables: list[pa.Table],
    bodies: list[bytes],
    tmp: Path,
    args: argparse.Namespace,
) -> Result:
    tag = f"{setup.name.replace('-', '_')}_{rep}_{n}"
    run_dir = tmp / tag
    run_dir.mkdir()
    config = setup.prepare(run_dir, tag)
    for setting in args.set:  # e.g. ducklake.retry_wait_ms=10
        dotted, _, value = setting.partition("=")
        *parents, leaf = dotted.split(".")
        section = config
        for parent in parents:
            section = section.setdefault(parent, {})
            if not isinstance(section, dict):
                raise SystemExit(f"--set {setting}: {parent} is not a section of the config")
        section[leaf] = yaml.safe_load(value)
    config_path = run_dir / "shared.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    servers: list[Server] = []
    try:
        for i in range(n):
            servers.append(
                Server(run_dir / f"instance{i}.duckdb", str(config_path), [], args.verbose)
            )
        warm = ipc_bytes(producer_table(len(tables) + 1, WARMUP_ROWS))
        for server in servers:  # one after the other: creates the table, warms each instance
            send_http(server.port, warm, 1, [])
        answers: list[list[dict[str, Any]]] = [[] for _ in tables]
        errors: list[BaseException] = []
        starts: list[float] = [0.0] * len(tables)
        ends: list[float] = [0.0] * len(tables)
        gate = threading.Barrier(len(tables) + 1)

        def produce(p: int) -> None:
            port = servers[p % n].port
            try:
                gate.wait()
                starts[p] = time.perf_counter()
                if args.protocol == "flight":
                    send_flight(port, tables[p], args.requests, answers[p])
                else:
                    send_http(port, bodies[p], args.requests, answers[p])
            except BaseException as exc:
                errors.append(exc)
            ends[p] = time.perf_counter()

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(len(tables))]
        for t in threads:
            t.start()
        if args.quiet_wait:
            wait_quiet(args.quiet_wait)
        procs0 = cpu_by_process()
        cpu0 = [proc_cpu_seconds(s.pid) for s in servers]
        catalog0, mark = setup.catalog_cpu(), setup.mark()
        busy0, self0 = system_busy_seconds(), self_cpu_seconds()
        gate.wait()
        for t in threads:
            t.join()
        seconds = max(ends) - min(starts)
        busy, client = system_busy_seconds() - busy0, self_cpu_seconds() - self0
        cpu1 = [proc_cpu_seconds(s.pid) for s in servers]
        catalog1, timed = setup.catalog_cpu(), setup.since(mark)
        if setup.backend == "delta":
            timed |= delta_races(servers)
        others = top_others(procs0, {os.getpid(), *(s.pid for s in servers), *setup.store_pids()})
        if errors:
            raise SystemExit(f"FAIL: {setup.name} N={n}: {errors[0]!r}")
    finally:
        for server in servers:
            server.stop()
    server_cpu = sum(cpu1) - sum(cpu0)
    catalog_cpu = None if catalog0 is None or catalog1 is None else catalog1 - catalog0
    time.sleep(0.2)  # the exited backends' statistics reach pg_stat_database
    counters = timed | setup.catalog_counters()  # before count_rows' own transactions
    expected = n * WARMUP_ROWS + len(tables) * args.requests * args.rows
    found = setup.count_rows()
    answered = sum(int(a["rows"]) for per in answers for a in per)
    if found != expected or answered != len(tables) * args.requests * args.rows:
        raise SystemExit(
            f"FAIL: {setup.name} N={n}: the table holds {found} rows, the answers say "
            f"{answered} (+{n * WARMUP_ROWS} warm-up); expected {expected}"
        )
    probe = setup.probe(args.probe_commits) if args.probe_commits else {}
    setup.finish()
    shutil.rmtree(run_dir, ignore_errors=True)
    return Result(
        setup=setup.name,
        n=n,
        repetition=rep,
        seconds=seconds,
        rows=len(tables) * args.requests * args.rows,
        nbytes=sum(len(b) for b in bodies) * args.requests,
        requests=len(tables) * args.requests,
        server_cpu_s=server_cpu,
        server_cpu_total_s=sum(cpu1),
        client_cpu_s=client,
        other_cpu_s=max(0.0, busy - server_cpu - client - (catalog_cpu or 0.0)),
        others=others,
        catalog_cpu_s=catalog_cpu,
        durations_ms=[float(a["ms"]) for per in answers for a in per],
        counters=counters,
        probe=probe,
    )


# -- report --------------------------------------------------------------------------------


def _line(r: Result) -> str:
    d = sorted(r.durations_ms)
    extra = " ".join(f"{k}={v}" for k, v in r.counters.items())
    extra += "".join(f" {k}={v:.1f}" for k, v in r.probe.items())
    cat = f" store CPU {r.catalog_cpu_s:5.1f} s" if r.catalog_cpu_s is not None else ""
    return (
        f"[rep {r.repetition + 1}] {r.setup:11} N={r.n}  {r.seconds:6.2f} s  "
        f"{r.rows_per_s / 1e6:6.3f} M rows/s  {r.mb_per_s:5.0f} MB/s  "
        f"server CPU {r.server_cpu_s:5.1f} s{cat}  client {r.client_cpu_s:4.1f} s  "
        f"other {r.other_cpu_s:4.1f} s ({r.others})  request ms p50 {statistics.median(d):.0f} max {d[-1]:.0f}  {extra}"
    )


def _loaded(r: Result) -> bool:
    """Did other processes use over 10% of a core during the timed phase?"""
    return r.other_cpu_s > max(0.1 * r.seconds, 0.2)


def report(results: list[Result], args: argparse.Namespace, load: list[str]) -> None:
    med = statistics.median
    print()
    print(
        f"nproc {os.cpu_count()}  producers {args.producers}  requests/producer {args.requests}  "
        f"rows/request {args.rows:,}  protocol {args.protocol}  repeat {args.repeat}  "
        f"pyarrow {pa.__version__}  code {code_version()}  load average {' -> '.join(load)}"
        + (f"  set {' '.join(args.set)}" if args.set else "")
    )
    header = (
        f"{'setup':11} {'N':>2} {'M rows/s':>9} {'MB/s':>6} {'wall s':>7} {'N÷1':>6} "
        f"{'srv CPU s':>9} {'cores':>5} {'µs CPU/row':>10} {'store CPU':>9} {'req p50 ms':>10} "
        f"{'races':>5} {'races/req':>9} {'rollbacks':>9} {'write xacts/req':>15} {'probe commit ms':>15} {'raced ms':>8}"
    )
    print(header)
    print("-" * len(header))
    ratios: dict[tuple[str, int], list[float]] = {}
    for setup in dict.fromkeys(r.setup for r in results):
        ns = sorted({r.n for r in results if r.setup == setup})
        base = {r.repetition: r for r in results if r.setup == setup and r.n == ns[0]}
        for n in ns:
            runs = [r for r in results if r.setup == setup and r.n == n]
            ratios[(setup, n)] = [
                r.rows_per_s / base[r.repetition].rows_per_s for r in runs if r.repetition in base
            ]

            def m(values: list[float | None]) -> float:
                known = [v for v in values if v is not None]
                return med(known) if known else float("nan")

            def c(r: Result, key: str, per_request: bool = False) -> float | None:
                v = r.counters.get(key)
                return None if v is None else v / r.requests if per_request else float(v)

            print(
                f"{setup:11} {n:2} {m([r.rows_per_s for r in runs]) / 1e6:9.3f} "
                f"{m([r.mb_per_s for r in runs]):6.0f} {m([r.seconds for r in runs]):7.2f} "
                f"{m(list(ratios[(setup, n)])):6.3f} {m([r.server_cpu_s for r in runs]):9.1f} "
                f"{m([r.server_cpu_s / r.seconds for r in runs]):5.2f} "
                f"{m([r.server_cpu_s / r.rows * 1e6 for r in runs]):10.2f} "
                f"{m([r.catalog_cpu_s for r in runs]):9.2f} "
                f"{m([med(r.durations_ms) for r in runs]):10.0f} "
                f"{m([c(r, 'races') for r in runs]):5.0f} "
                f"{m([c(r, 'races', True) for r in runs]):9.2f} "
                f"{m([c(r, 'xact_rollback') for r in runs]):9.0f} "
                f"{m([c(r, 'write_xacts', True) for r in runs]):15.2f} "
                f"{m([r.probe.get('probe_commit_ms') for r in runs]):15.1f} "
                f"{m([r.probe.get('probe_raced_commit_ms') for r in runs]):8.1f}"
            )
    print()
    for (setup, n), values in ratios.items():
        if n != min(r.n for r in results if r.setup == setup):
            print(
                f"{setup} N={n} ÷ N=1 per repetition: {', '.join(f'{v:.3f}' for v in values)}  median {med(values):.3f}"
            )
    for setup, n in ratios:
        if n == min(r.n for r in results if r.setup == setup):
            continue
        pairs = [
            (r, b)
            for r in results
            if r.setup == setup and r.n == n
            for b in results
            if b.setup == setup
            and b.n == min(x.n for x in results if x.setup == setup)
            and b.repetition == r.repetition
            and not _loaded(r)
            and not _loaded(b)
        ]
        clean = [r.rows_per_s / b.rows_per_s for r, b in pairs]
        print(
            f"{setup} N={n} ÷ N=1 from repetitions where neither run was loaded: "
            + (
                f"{', '.join(f'{v:.3f}' for v in clean)}  median {med(clean):.3f}  "
                f"(N={n} {med([r.rows_per_s for r, _ in pairs]) / 1e6:.3f} vs "
                f"{med([b.rows_per_s for _, b in pairs]) / 1e6:.3f} M rows/s)"
                if clean
                else "none"
            )
        )
    loaded = [r for r in results if _loaded(r)]
    if loaded:
        print(
            f"WARNING: other processes used over 10% of a core in {len(loaded)} of {len(results)} runs "
            f"({', '.join(f'{r.setup} N={r.n} rep {r.repetition + 1}: {r.other_cpu_s:.1f} s' for r in loaded)})"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "load": load,
                    "results": [asdict(r) | {"rows_per_s": r.rows_per_s} for r in results],
                },
                indent=2,
            )
        )


def loadavg() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setups", default=None, help=f"comma-separated of {', '.join(SETUPS)}")
    parser.add_argument("--instances", default="1,2,4", help="values of N, comma-separated")
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5, help="requests per producer")
    parser.add_argument("--rows", type=int, default=200_000, help="rows per request")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--protocol", choices=["http", "flight"], default="http")
    parser.add_argument("--probe-commits", type=int, default=10, help="0: no commit probe")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: N=1,2, 4 producers x 2 requests x 50k rows, once, 3 probe commits",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each timed phase, wait up to this many seconds for the machine to be idle",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every instance's shared config, dotted (repeatable), e.g. "
        "--set ducklake.retry_wait_ms=10",
    )
    parser.add_argument("--json", help="write all runs to this JSON file")
    parser.add_argument("--verbose", "-v", action="store_true", help="echo the servers' logs")
    args = parser.parse_args()
    for setting in args.set:
        dotted, eq, _ = setting.partition("=")
        if not eq or not dotted or "" in dotted.split("."):
            parser.error(f"--set {setting!r}: expected KEY=VALUE, e.g. ducklake.retry_wait_ms=10")
    if args.quick:
        args.instances, args.producers, args.requests = "1,2", 4, 2
        args.rows, args.repeat, args.probe_commits = 50_000, 1, 3
    args.setups = args.setups or default_setups()
    ns = [int(v) for v in args.instances.split(",")]
    names = [s.strip() for s in args.setups.split(",")]
    for name in names:
        if name not in SETUPS:
            raise SystemExit(f"unknown setup {name!r}; choose from {', '.join(SETUPS)}")

    load = [loadavg()]
    tables = [producer_table(p, args.rows) for p in range(args.producers)]
    bodies = [ipc_bytes(t) for t in tables]
    print(
        f"{args.producers} payloads of {args.rows:,} rows, {len(bodies[0]) / 1e6:.1f} MB each; "
        f"setups {', '.join(names)}; N in {ns}; load average {load[0]}",
        file=sys.stderr,
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="arrowport-multi-"))
    setups: list[Setup] = []
    results: list[Result] = []
    try:
        for name in names:
            setups.append(SETUPS[name](tmp))
        for rep in range(args.repeat):
            order = ns if rep % 2 == 0 else ns[::-1]
            for setup in setups if rep % 2 == 0 else setups[::-1]:
                for n in order:
                    result = run_once(setup, n, rep, tables, bodies, tmp, args)
                    results.append(result)
                    print(_line(result), file=sys.stderr, flush=True)
        load.append(loadavg())
        report(results, args, load)
    finally:
        for setup in setups:
            with contextlib.suppress(Exception):
                setup.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
