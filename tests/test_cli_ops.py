"""``arrowport streams`` and ``arrowport config check``: real servers, real config files."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import Result
from support import Server, ipc_bytes, sample_table
from typer.testing import CliRunner

from arrowport import cli
from arrowport.config import (
    ENV_CONFIG_PATH,
    ENV_OVERRIDES,
    ENV_TOKEN,
    load_config,
    parse_config,
)

runner = CliRunner()
TOKEN = "cli-ops-token-0123456789abcdef"
FILE_TOKEN = "file-token-0123456789abcdefgh"
COUNTERS = {"rows", "batches", "bytes", "decoded_bytes", "requests", "failed_requests"}
CONFIG = """
streams:
  sensors:
    target_table: sensor_data
    compression: lz4
  events:
    storage_backend: delta
    commit: batch
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [*ENV_OVERRIDES, ENV_CONFIG_PATH, ENV_TOKEN]:
        monkeypatch.delenv(var, raising=False)


def _invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "200", **(env or {})})


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _dead_port() -> int:
    """A port nothing listens on (just released by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _rows(output: str) -> dict[str, list[str]]:
    """The body rows of a rich table, by first cell."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            rows[cells[0]] = cells
    return rows


def test_live_listing_shows_the_servers_exact_counters(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Live output and --json carry exactly the server's /streams counters, ad-hoc streams too."""
    config = _write(tmp_path / "arrowport.yaml", CONFIG)
    server = server_factory(tmp_path, config=config).start()
    ok = server.post("sensors", ipc_bytes(sample_table(7), max_chunksize=3))
    assert ok.status_code == 200
    assert server.post("adhoc", ipc_bytes(sample_table(5))).status_code == 200
    assert server.post("adhoc", b"garbage!").status_code == 400
    report = server.get("/streams").json()
    entries = {e["name"]: e for e in report["streams"]}

    out = _invoke("streams", "--url", server.url, "--json")
    assert out.exit_code == 0, out.output
    listed = json.loads(out.stdout)
    assert (listed["source"], listed["url"]) == ("live", server.url)
    assert listed["streams"] == report["streams"]
    sensors, adhoc, events = entries["sensors"], entries["adhoc"], entries["events"]
    assert (sensors["rows"], sensors["batches"], sensors["requests"]) == (7, 3, 1)
    assert (sensors["table"], sensors["backend"], sensors["compression"]["algorithm"]) == (
        "sensor_data",
        "duckdb",
        "lz4",
    )
    assert (adhoc["rows"], adhoc["requests"], adhoc["failed_requests"]) == (5, 2, 1)
    assert not adhoc["configured"] and adhoc["table"] == "adhoc"
    assert (events["backend"], events["commit"], events["rows"]) == ("delta", "batch", 0)
    assert events["last_ingest"] is None
    when = datetime.fromisoformat(sensors["last_ingest"])
    assert when.tzinfo is not None and when.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=5)

    out = _invoke("streams", "--url", server.url)
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0] == f"live from {server.url} (server config: {config})"
    rows = _rows(out.stdout)
    assert rows["sensors"] == [
        *("sensors", "sensor_data", "duckdb", "request", "lz4", "7"),
        f"{sensors['bytes']:,}",
        *("1", "0", sensors["last_ingest"][:19].replace("T", " ")),
    ]
    assert rows["adhoc *"][:9] == [
        *("adhoc *", "adhoc", "duckdb", "request", "zstd:3", "5"),
        *(f"{adhoc['bytes']:,}", "1", "1"),
    ]
    assert rows["events"] == [
        "events",
        "events",
        "delta",
        "batch",
        "zstd:3",
        "0",
        "0",
        "0",
        "0",
        "-",
    ]
    assert "in flight: 0; refused requests: bad_input 1" in lines

    # The offline listing of the same config says what the server says, counters aside.
    dead = f"http://127.0.0.1:{_dead_port()}"
    out = _invoke("streams", "--config", str(config), "--url", dead, "--json")
    assert out.exit_code == 0, out.output
    offline = json.loads(out.stdout)["streams"]
    assert [e["name"] for e in offline] == ["events", "sensors"]
    for e in offline:
        assert all(e[k] is None for k in [*COUNTERS, "last_ingest"])
        assert {k: v for k, v in e.items() if k not in COUNTERS | {"last_ingest"}} == {
            k: v for k, v in entries[e["name"]].items() if k not in COUNTERS | {"last_ingest"}
        }


def test_offline_listing_says_so_and_lists_configured_streams(tmp_path: Path) -> None:
    """No server at the config's port: the configured streams, marked as from the config."""
    port = _dead_port()
    config = _write(tmp_path / "arrowport.yaml", f"port: {port}\n{CONFIG}")
    out = _invoke("streams", "--config", str(config))
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0] == (
        f"from config {config}; no server answered at http://127.0.0.1:{port}: "
        "counters unavailable (connection refused)"
    )
    assert _rows(out.stdout) == {
        "events": ["events", "events", "delta", "batch", "zstd:3"],
        "sensors": ["sensors", "sensor_data", "duckdb", "request", "lz4"],
    }
    out = _invoke("streams", "--json", env={ENV_CONFIG_PATH: str(config)})
    assert out.exit_code == 0, out.output
    listed = json.loads(out.stdout)
    assert (listed["source"], listed["url"]) == ("config", f"http://127.0.0.1:{port}")
    assert listed["config_source"] == str(config)
    assert [(e["name"], e["table"], e["rows"]) for e in listed["streams"]] == [
        ("events", "events", None),
        ("sensors", "sensor_data", None),
    ]
    out = _invoke("streams", "--url", "localhost:8888")
    assert out.exit_code == 2 and "--url: expected http://HOST:PORT" in out.stderr


def test_auth_on_server_needs_the_token(server_factory: type[Server], tmp_path: Path) -> None:
    """With auth on: no or a wrong token exits 1 saying so; --token or ARROWPORT_TOKEN lists."""
    config = _write(tmp_path / "arrowport.yaml", f"auth:\n  tokens: [{TOKEN}]\n")
    server = server_factory(tmp_path, config=config).start()
    ok = server.post("t", ipc_bytes(sample_table(4)), headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200

    out = _invoke("streams", "--url", server.url)
    assert out.exit_code == 1 and out.stdout == ""
    assert out.stderr.startswith(f"arrowport: {server.url} answered 401 unauthenticated: ")
    assert out.stderr.rstrip().endswith("; pass --token or set ARROWPORT_TOKEN")
    out = _invoke("streams", "--url", server.url, "--token", "wrong-token-0123456789abcdef")
    assert out.exit_code == 1 and "the token given was not accepted" in out.stderr

    out = _invoke("streams", "--url", server.url, "--token", TOKEN)
    assert out.exit_code == 0, out.output
    assert _rows(out.stdout)["t *"][5] == "4"
    out = _invoke("streams", "--url", server.url, "--json", env={ENV_TOKEN: TOKEN})
    assert out.exit_code == 0, out.output
    expected = httpx.get(
        f"{server.url}/streams", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert json.loads(out.stdout)["streams"] == expected["streams"]

    process = subprocess.run(
        [sys.executable, "-m", "arrowport", "streams", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**server.env, ENV_TOKEN: ""},
    )
    assert process.returncode == 1 and "401" in process.stderr
    assert "Traceback" not in process.stderr


def test_config_check_marks_env_overrides_and_redacts_tokens(tmp_path: Path) -> None:
    """config check shows env values marked with their variable; no token appears in clear."""
    config = _write(
        tmp_path / "arrowport.yaml",
        f"{CONFIG}auth:\n  tokens:\n    - {{token: {FILE_TOKEN}, streams: [events]}}\n",
    )
    db = str(tmp_path / "env.duckdb")
    env = {
        ENV_CONFIG_PATH: str(config),
        "ARROWPORT_PORT": "9123",
        "ARROWPORT_DB": db,
        ENV_TOKEN: TOKEN,
    }
    out = _invoke("config", "check", env=env)
    assert out.exit_code == 0, out.output
    assert TOKEN not in out.output and FILE_TOKEN not in out.output
    lines = out.stdout.splitlines()
    assert lines[:2] == [
        "# arrowport config check: valid",
        f"# config file: {config} (named by {ENV_CONFIG_PATH})",
    ]
    for line in (
        "host: 127.0.0.1",
        "port: 9123  # from ARROWPORT_PORT",
        f"db_path: {db}  # from ARROWPORT_DB",
        "  - token: <redacted>",
        "  - <redacted>  # from ARROWPORT_TOKEN",
    ):
        assert line in lines, line
    assert sum("# from" in line for line in lines[3:]) == 3

    out = _invoke("config", "check", str(config), "--json", env=env)
    assert out.exit_code == 0, out.output
    assert TOKEN not in out.output and FILE_TOKEN not in out.output
    checked = json.loads(out.stdout)
    assert checked["from_env"] == {
        "port": "ARROWPORT_PORT",
        "db_path": "ARROWPORT_DB",
        "auth.tokens[1]": ENV_TOKEN,
    }
    assert (checked["valid"], checked["config_file"], checked["config_file_from"]) == (
        True,
        str(config),
        "argument",
    )
    settings = checked["settings"]
    assert (settings["port"], settings["db_path"]) == (9123, db)
    assert settings["auth"]["tokens"] == [
        {"token": "<redacted>", "streams": ["events"]},
        "<redacted>",
    ]
    assert settings["streams"]["sensors"]["compression"] == {"algorithm": "lz4", "level": None}


def test_config_check_redacts_catalog_passwords_and_storage_secrets(tmp_path: Path) -> None:
    """A PostgreSQL catalog password and S3 secrets are never printed; the rest is."""
    config = _write(
        tmp_path / "arrowport.yaml",
        "storage_backend: ducklake\n"
        "ducklake:\n"
        "  catalog: 'postgres:dbname=lake host=db.internal password=hunter2-pw user=ap'\n"
        "  storage_options: {key_id: AKIDEXAMPLE, secret: s3-secret-value, region: eu-west-1}\n"
        "delta_config:\n"
        "  storage_options: {AWS_SECRET_ACCESS_KEY: delta-secret, AWS_SESSION_TOKEN: tok-9,"
        " AWS_REGION: us-east-1}\n",
    )
    for args in (("config", "check", str(config)), ("config", "check", str(config), "--json")):
        out = _invoke(*args, env={})
        assert out.exit_code == 0, out.output
        for secret in ("hunter2-pw", "s3-secret-value", "delta-secret", "tok-9"):
            assert secret not in out.output
        for kept in ("dbname=lake host=db.internal", "AKIDEXAMPLE", "eu-west-1", "us-east-1"):
            assert kept in out.output
    settings = json.loads(out.stdout)["settings"]
    assert settings["ducklake"]["catalog"] == (
        "postgres:dbname=lake host=db.internal password=<redacted> user=ap"
    )
    assert settings["delta_config"]["storage_options"]["AWS_SESSION_TOKEN"] == "<redacted>"


def test_config_check_yaml_parses_back_to_the_same_config(tmp_path: Path) -> None:
    """The printed YAML is a config file that parses to exactly the config checked."""
    config = _write(
        tmp_path / "arrowport.yaml",
        CONFIG
        + "    delta_options:\n      partition_by: [day]\n      compression: zstd:5\n"
        + "limits:\n  max_body_size: 64MiB\n  body_idle_timeout: 12.5\n"
        + "duckdb:\n  memory_limit: 1GB\n  threads: 2\n"
        + "delta_config:\n  version_retention_hours: 48\n"
        + "compression: none\nreload_interval: 0.5\n",
    )
    out = _invoke("config", "check", str(config))
    assert out.exit_code == 0, out.output
    printed = parse_config(yaml.safe_load(out.stdout))
    expected = load_config(config, env={})
    assert printed == dataclasses.replace(expected, source=None)
    assert printed.streams["events"].delta_options.partition_by == ("day",)
    assert printed.limits.max_body_size == 64 * 1024**2


def test_broken_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    """A bad key or value exits 2 with the ConfigError naming it, in check and in streams."""
    bad = _write(tmp_path / "bad.yaml", "streams:\n  s:\n    target_tabel: x\n")
    message = "arrowport: config error: streams.s.target_tabel: unknown key (did you mean"
    out = _invoke("config", "check", str(bad))
    assert out.exit_code == 2 and out.stdout == ""
    assert out.stderr.startswith(message)
    out = _invoke("config", "check", str(bad), "--json")
    assert out.exit_code == 2
    failed: dict[str, Any] = json.loads(out.stdout)
    assert failed["valid"] is False and failed["error"].startswith("streams.s.target_tabel:")
    out = _invoke("streams", "--config", str(bad))
    assert out.exit_code == 2 and out.stderr.startswith(message)
    out = _invoke("config", "check", env={"ARROWPORT_PORT": "eighty"})
    assert out.exit_code == 2
    assert out.stderr.startswith("arrowport: config error: port: expected an integer")
    out = _invoke("config", "check", str(tmp_path / "missing.yaml"))
    assert out.exit_code == 2 and "cannot read config file" in out.stderr
