"""GET /metrics, parsed with prometheus-client's own parser: counters move by exactly what
was sent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from deltalake import DeltaTable
from flight_helpers import flight_client, put_table
from prometheus_client.parser import text_string_to_metric_families
from support import Server, ipc_bytes, sample_table

TOKEN = "metrics-test-token-0123456789"


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def labels(stream: str, backend: str = "duckdb", protocol: str = "http") -> dict[str, str]:
    return {"stream": stream, "table": stream, "backend": backend, "protocol": protocol}


@pytest.fixture
def lake(server_factory: type[Server], tmp_path: Path) -> Server:
    config = tmp_path / "arrowport.yaml"
    config.write_text(
        "delta_config: {table_path: ./lake}\n"
        "streams:\n  events: {storage_backend: delta}\n"
        "metrics: {port: 0}\n"
    )
    return server_factory(tmp_path, config=config).start()


def test_counters_move_by_exactly_what_was_ingested(lake: Server, tmp_path: Path) -> None:
    before = scrape(lake.url)
    http_body = ipc_bytes(sample_table(1000), max_chunksize=250, compression="zstd")
    assert lake.post("m", http_body).status_code == 200
    keyed = {"Idempotency-Key": "metrics-key-1"}
    assert (
        lake.post("m", ipc_bytes(sample_table(10, offset=5000)), headers=keyed).json()["replayed"]
        is False
    )
    assert (
        lake.post("m", ipc_bytes(sample_table(10, offset=5000)), headers=keyed).json()["replayed"]
        is True
    )
    wrong = ipc_bytes(pa.table({"id": pa.array(["x"])}))  # id is BIGINT in m
    assert lake.post("m", wrong).status_code == 422
    acks = put_table(flight_client(lake), "f", sample_table(300), max_chunksize=100)
    assert acks[0]["committed_rows"] == 300
    assert lake.post("events", ipc_bytes(sample_table(40))).status_code == 200
    truncated = ipc_bytes(sample_table(50))[:-20]
    assert lake.post("m", truncated).status_code == 400
    after = scrape(lake.url)

    def moved(name: str, **wanted: str) -> float:
        return value(after, name, **wanted) - value(before, name, **wanted)

    m, f, events = labels("m"), labels("f", protocol="flight"), labels("events", "delta")
    assert moved("arrowport_rows_total", **m) == 1010  # the replay adds no rows
    assert moved("arrowport_batches_total", **m) == 5
    assert moved("arrowport_received_bytes_total", **m) == len(http_body) + len(
        ipc_bytes(sample_table(10, offset=5000))
    )
    assert (
        moved("arrowport_decoded_bytes_total", **m)
        > moved("arrowport_received_bytes_total", **m) / 4
    )
    assert moved("arrowport_requests_total", **m, result="ok") == 2
    assert moved("arrowport_requests_total", **m, result="replayed") == 1
    assert moved("arrowport_requests_total", **m, result="refused") == 2
    assert moved("arrowport_transactions_total", **m, outcome="committed") == 2
    assert moved("arrowport_transactions_total", **m, outcome="replayed") == 1
    assert moved("arrowport_transactions_total", **m, outcome="rolled_back") == 1  # truncated
    assert moved("arrowport_schema_mismatches_total", **m) == 1
    assert moved("arrowport_refusals_total", reason="schema_mismatch") == 1
    assert moved("arrowport_refusals_total", reason="bad_input") == 1
    assert moved("arrowport_ingest_duration_seconds_count", **m) == 3  # the replay too
    assert moved("arrowport_compression_ratio_count", **m) == 2
    assert moved("arrowport_rows_total", **f) == 300
    assert moved("arrowport_batches_total", **f) == 3
    assert moved("arrowport_requests_total", **f, result="ok") == 1
    assert moved("arrowport_rows_total", **events) == 40
    assert value(after, "arrowport_rows_per_second", **m) == pytest.approx(1010 / 60)
    assert value(after, "arrowport_in_flight_requests") == 0
    assert value(after, "arrowport_in_flight_bytes") == 0
    assert value(after, "process_resident_memory_bytes") > 50 * 1024**2
    assert ("arrowport_arrow_memory_pool_bytes", ()) in after
    db = str(lake.db)
    assert value(after, "arrowport_duckdb_file_bytes", path=db) == Path(db).stat().st_size
    assert ("arrowport_duckdb_wal_bytes", (("path", db),)) in after

    dt = DeltaTable(str(tmp_path / "lake" / "events"))
    files = dt.get_add_actions(flatten=True)
    assert value(after, "arrowport_delta_table_version", table="events") == 0
    assert value(after, "arrowport_delta_table_files", table="events") == len(dt.file_uris())
    assert value(after, "arrowport_delta_table_bytes", table="events") == sum(
        pa.table(files).column("size_bytes").to_pylist()
    )
    assert lake.post("events", ipc_bytes(sample_table(2))).status_code == 200
    later = scrape(lake.url)
    assert value(later, "arrowport_delta_table_version", table="events") == 1
    assert value(later, "arrowport_delta_table_versions_per_second", table="events") > 0


def test_the_metrics_port_serves_the_same_metrics(lake: Server) -> None:
    match = next(
        re.search(r"metrics on (http://\S+)/metrics", line)
        for line in lake.log
        if "metrics on" in line
    )
    assert match is not None
    port_url = match.group(1)
    assert port_url != lake.url
    assert lake.post("p", ipc_bytes(sample_table(7))).status_code == 200
    samples = scrape(port_url)
    assert value(samples, "arrowport_rows_total", **labels("p")) == 7
    assert httpx.get(f"{port_url}/streams", timeout=10).status_code == 404
    assert httpx.post(f"{port_url}/metrics", timeout=10).status_code == 405


@pytest.mark.parametrize("protect", [True, False])
def test_metrics_and_auth(server_factory: type[Server], tmp_path: Path, protect: bool) -> None:
    config = tmp_path / "arrowport.yaml"
    config.write_text(
        f"auth: {{tokens: [{TOKEN}], protect_metrics: {json.dumps(protect)}}}\n"
        "metrics: {port: 0}\n"
    )
    server = server_factory(tmp_path, config=config).start()
    line = next(line for line in server.log if "metrics on" in line)
    port_url = re.search(r"metrics on (http://\S+)/metrics", line).group(1)  # type: ignore[union-attr]
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for url in (server.url, port_url):
        anonymous = httpx.get(f"{url}/metrics", timeout=10)
        assert anonymous.status_code == (401 if protect else 200), (url, anonymous.text)
        assert ("arrowport_in_flight_requests", ()) in scrape(url, bearer)
        wrong = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == (401 if protect else 200)
    if protect:
        with pytest.raises(fl.FlightUnauthenticatedError):
            put_table(flight_client(server), "x", sample_table(1))


def test_every_metric_is_documented(lake: Server) -> None:
    """Each arrowport_* family the server exposes is described in docs/operations.md."""
    assert lake.post("events", ipc_bytes(sample_table(3))).status_code == 200  # Delta gauges too
    text = httpx.get(f"{lake.url}/metrics", timeout=30).text
    families = {f.name for f in text_string_to_metric_families(text)}
    ours = {name for name in families if name.startswith("arrowport_")}
    assert len(ours) >= 20, ours
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    missing = sorted(n for n in ours if f"`{n}" not in doc and f"`{n}_total" not in doc)
    assert not missing, f"metrics missing from docs/operations.md: {missing}"


def test_batch_mode_and_unknown_streams(server_factory: type[Server], tmp_path: Path) -> None:
    """Batch mode counts one transaction per commit (none for app_metadata after the last
    batch, no rollback); failures naming streams nothing was ever committed to share the
    `_unknown` label instead of making a series each."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("streams:\n  ticks: {commit: batch}\n")
    server = server_factory(tmp_path, config=config).start()
    before = scrape(server.url)
    table = sample_table(30)
    client = flight_client(server)
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("ticks"), table.schema)
    for batch in table.to_batches(max_chunksize=10):
        writer.write_batch(batch)
        assert reader.read() is not None  # each batch is acked as its commit
    writer.write_metadata(pa.py_buffer(b"trailing"))
    writer.done_writing()
    while reader.read() is not None:
        pass
    writer.close()
    for i in range(5):
        assert server.post(f"Random{i}", b"garbage").status_code == 400
    assert server.post("adhoc", ipc_bytes(sample_table(2))).status_code == 200
    assert server.post("adhoc", b"garbage").status_code == 400
    after = scrape(server.url)

    def moved(name: str, **wanted: str) -> float:
        return value(after, name, **wanted) - value(before, name, **wanted)

    ticks = labels("ticks", protocol="flight")
    assert moved("arrowport_rows_total", **ticks) == 30
    assert moved("arrowport_transactions_total", **ticks, outcome="committed") == 3
    assert moved("arrowport_transactions_total", **ticks, outcome="rolled_back") == 0
    assert moved("arrowport_requests_total", **ticks, result="ok") == 1
    unknown = {"stream": "_unknown", "table": "_unknown", "backend": "duckdb", "protocol": "http"}
    assert moved("arrowport_requests_total", **unknown, result="refused") == 5
    assert not any("random" in str(key).lower() for key in after)
    assert moved("arrowport_rows_total", **labels("adhoc")) == 2
    assert moved("arrowport_requests_total", **labels("adhoc"), result="refused") == 1
    names = {s["name"] for s in httpx.get(f"{server.url}/streams", timeout=10).json()["streams"]}
    assert names == {"ticks", "adhoc"}
