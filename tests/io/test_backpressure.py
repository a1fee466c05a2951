"""Bounded memory: the server holds fast clients back instead of buffering them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
from support import Server, read_response, start_upload


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _big_stream(batches: int, rows: int = 1_000_000) -> tuple[bytes, list[int]]:
    """An IPC stream of ``batches`` batches of 4 int64 columns, and each message's end offset."""
    columns = {f"c{i}": pa.array(range(i, rows + i), pa.int64()) for i in range(4)}
    batch = pa.record_batch(columns)
    sink = pa.BufferOutputStream()
    ends = []
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        ends.append(sink.tell())
        for _ in range(batches):
            writer.write_batch(batch)
            ends.append(sink.tell())
    return sink.getvalue().to_pybytes(), ends


def test_blocked_upload_is_held_back_not_buffered(server: Server) -> None:
    """An upload waiting for a busy table is held back by flow control; server RSS stays flat."""
    assert server.proc is not None
    pid = server.proc.pid
    data, ends = _big_stream(10)  # ~320 MB
    # A: starts writing the table (schema + one batch), then pauses, holding the table.
    holder = start_upload(server.url, "bp", len(data))
    holder.sendall(data[: ends[1]])
    time.sleep(0.5)
    before = _rss_mb(pid)
    # B: a fast client sending 320 MB to the same table while A holds it.
    pusher = start_upload(server.url, "bp", len(data))
    sent = [0]

    def push() -> None:
        view = memoryview(data)
        try:
            while sent[0] < len(data):
                sent[0] += pusher.send(view[sent[0] : sent[0] + (1 << 20)])
        except OSError:
            pass

    thread = threading.Thread(target=push, daemon=True)
    thread.start()
    time.sleep(3)
    grown = _rss_mb(pid) - before
    assert sent[0] < len(data) // 4, f"server accepted {sent[0]} bytes while blocked"
    assert grown < 64, f"server RSS grew {grown:.0f} MB while an upload was blocked"
    # A finishes; both commit in order.
    holder.sendall(data[ends[1] :])
    assert b" 200 " in read_response(holder).split(b"\r\n")[0]
    thread.join(120)
    assert sent[0] == len(data)
    assert b" 200 " in read_response(pusher).split(b"\r\n")[0]
    holder.close()
    pusher.close()
    assert server.query("SELECT count(*) FROM bp") == [(20_000_000,)]


def test_large_upload_memory_does_not_scale_with_request(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A 640 MB upload raises server RSS by far less than its size (bounded by the limits)."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("duckdb:\n  memory_limit: 64MB\nlimits:\n  queue_depth: 2\n")
    server = server_factory(tmp_path, config=config).start()
    assert server.proc is not None
    pid = server.proc.pid
    data, _ = _big_stream(80, rows=250_000)  # 80 batches of 8 MB
    idle = _rss_mb(pid)
    sock = start_upload(server.url, "big", len(data))
    sock.sendall(data)
    status = read_response(sock).split(b"\r\n")[0]
    sock.close()
    peak = _rss_mb(pid, "VmHWM")
    assert b" 200 " in status
    print(f"idle {idle:.0f} MB, peak {peak:.0f} MB, body {len(data) / 2**20:.0f} MB")
    assert peak - idle < 256, f"RSS grew {peak - idle:.0f} MB for a {len(data) >> 20} MB body"
    assert server.query("SELECT count(*) FROM big") == [(20_000_000,)]


def test_large_delta_upload_memory_does_not_scale_with_request(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A 640 MB upload into Delta is written file by file: RSS grows by far less than the body
    (delta-rs's own writer may collect a whole reader in memory, delta-rs #2968)."""
    from deltalake import DeltaTable

    config = tmp_path / "arrowport.yaml"
    config.write_text(
        "delta_config: {table_path: lake}\nlimits: {queue_depth: 2}\n"
        "streams:\n  big: {delta_options: {target_file_size: 64MiB}}\n"
    )
    server = server_factory(tmp_path, config=config).start()
    assert server.proc is not None
    pid = server.proc.pid
    data, _ = _big_stream(80, rows=250_000)  # 80 batches of 8 MB
    idle = _rss_mb(pid)
    sock = start_upload(server.url, "big", len(data), path="/delta/big")
    sock.sendall(data)
    status = read_response(sock).split(b"\r\n")[0]
    sock.close()
    peak = _rss_mb(pid, "VmHWM")
    assert b" 200 " in status
    print(f"delta: idle {idle:.0f} MB, peak {peak:.0f} MB, body {len(data) / 2**20:.0f} MB")
    assert peak - idle < 256, f"RSS grew {peak - idle:.0f} MB for a {len(data) >> 20} MB body"
    table = DeltaTable(str(tmp_path / "lake" / "big"))
    assert table.version() == 0
    assert table.count() == 20_000_000
    assert len(table.file_uris()) >= 2  # rolled over at target_file_size
