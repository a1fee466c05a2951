"""Structured logs: JSON or text lines, a request id on every line of a request, levels obeyed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx
import pyarrow.flight as fl
import pytest
from flight_helpers import flight_client, put_table
from support import Server, ipc_bytes, sample_table

from arrowport import logs


def _json_lines(server: Server) -> list[dict]:
    out = []
    for line in server.log:
        assert line.startswith("{"), f"not a JSON log line: {line!r}"
        out.append(json.loads(line))
    return out


def _wait_logged(server: Server, text: str) -> None:
    deadline = time.monotonic() + 10
    while not any(text in line for line in server.log):
        assert time.monotonic() < deadline, "".join(server.log)
        time.sleep(0.05)


def test_json_logs_carry_the_request_id(server_factory: type[Server], tmp_path: Path) -> None:
    server = server_factory(tmp_path, args=("--log-format", "json")).start()
    sent = server.post("j", ipc_bytes(sample_table(5)), headers={"X-Request-Id": "req-abc.1"})
    assert sent.status_code == 200 and sent.headers["x-request-id"] == "req-abc.1"
    made = server.post("j", ipc_bytes(sample_table(3)))
    generated = made.headers["x-request-id"]
    assert len(generated) == 16 and generated != "req-abc.1"
    hostile = server.post("j", ipc_bytes(sample_table(1)), headers={"X-Request-Id": "a b\x7f"})
    assert hostile.headers["x-request-id"] != "a b\x7f"  # not echoed: a fresh id instead
    refused = server.post("j", b"not arrow", headers={"X-Request-Id": "bad-1"})
    assert refused.status_code == 400 and refused.headers["x-request-id"] == "bad-1"
    options = fl.FlightCallOptions(headers=[(b"x-request-id", b"flight-7")])
    put_table(flight_client(server), "j", sample_table(2), options=options)
    _wait_logged(server, "flight-7")

    lines = _json_lines(server)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    by_id: dict[str | None, list[dict]] = {}
    for line in lines:
        by_id.setdefault(line.get("request_id"), []).append(line)
    assert any(
        "ingest j -> j" in line["message"] and "5 rows" in line["message"]
        for line in by_id["req-abc.1"]
    )
    assert not any("3 rows" in line["message"] for line in by_id["req-abc.1"])
    assert any("3 rows" in line["message"] for line in by_id[generated])
    assert any("refused" in line["message"] for line in by_id["bad-1"])
    assert any("DoPut j -> j: 2 rows" in line["message"] for line in by_id["flight-7"])
    startup = [line for line in by_id[None] if "serving on" in line["message"]]
    assert len(startup) == 1 and startup[0]["level"] == "info"


def test_text_logs_show_the_id_in_brackets(server_factory: type[Server], tmp_path: Path) -> None:
    server = server_factory(tmp_path).start()
    response = server.post("t", ipc_bytes(sample_table(4)), headers={"X-Request-Id": "txt-9"})
    assert response.status_code == 200
    _wait_logged(server, "[txt-9]")
    line = next(line for line in server.log if "[txt-9]" in line)
    assert " INFO arrowport.http [txt-9]: ingest t -> t" in line, line
    assert httpx.get(f"{server.url}/health", timeout=10).headers["x-request-id"]


def test_levels_are_obeyed(capfd: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("arrowport.test_levels")
    try:
        logs.configure("warning", "json")
        log.info("quiet info")
        log.warning("loud warning")
        logs.configure("debug", "text")
        log.debug("debug shown")
    finally:
        logging.getLogger().handlers.clear()
    err = capfd.readouterr().err
    assert "quiet info" not in err
    assert json.loads(err.splitlines()[0])["message"] == "loud warning"
    assert "DEBUG arrowport.test_levels: debug shown" in err
    with pytest.raises(ValueError, match="log level"):
        logs.configure("loud")
