"""The parent of the query processes: a process that forks one process per query call.

A query runs in a process of its own because DuckDB's ``memory_limit`` bounds
its buffer manager, not every allocation: ``SELECT repeat('x', 5000000000)``
or a list comprehension over a large range allocates gigabytes outside it,
and the optimizer folds such constants even when nothing runs. In the
server's process that would take it down; in a process of its own it hits
that process's data limit and fails ``RESOURCE_EXHAUSTED``.

Invariants:

* The zygote is a fresh interpreter started by the server (not a fork of it:
  no trio, no server threads, no open database), in a session of its own,
  with only the environment Python needs (no tokens, no cloud credentials).
  It imports DuckDB and pyarrow before it forks, so a query process starts
  in tens of milliseconds. (Those imports leave two idle native threads, of
  Arrow's and DuckDB's pools, which the fork does not copy; a query process
  that hung on a lock they held would be killed at its timeout like any.)
  It exits when the server closes its socket, and dies with the server
  (``PR_SET_PDEATHSIG``).
* Each query process (``sql_worker.child``) is single-use. The zygote reaps
  it; the server kills it through a pidfd the zygote opened before it could
  exit, so a kill can never reach another process that reused its pid.
* Linux only (pidfds, ``SCM_RIGHTS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .sql_sandbox import QueryError

ZYGOTE_FLAG = "--arrowport-query-zygote"  # arrowport/__main__.py and packaging/entry.py run main()
START_TIMEOUT = 120.0  # seconds for the zygote to import DuckDB and pyarrow
# what a query process keeps of the server's environment (Python and its libraries)
_ENV_KEPT = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "HOME")
_ENV_PREFIXES = ("LC_", "LANG")


@dataclass(frozen=True, slots=True)
class Spawned:
    """A query process, from the server's side: its socket and a pidfd to kill it by."""

    sock: socket.socket
    pid: int
    pidfd: int

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        self.sock.close()
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def _environment() -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if k in _ENV_KEPT or k.startswith(_ENV_PREFIXES)}
    # no jemalloc background thread in the zygote: fewer threads at each fork
    return kept | {
        "PYTHONDONTWRITEBYTECODE": "1",
        "JE_ARROW_MALLOC_CONF": "background_thread:false",
    }


class Zygote:
    """The server's handle on the zygote, started on first use and again if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    def _start(self) -> socket.socket:
        if self._control is not None and self._proc is not None and self._proc.poll() is None:
            return self._control
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        if getattr(sys, "frozen", False):  # the single binary runs arrowport's __main__
            command = [sys.executable, ZYGOTE_FLAG, str(fd)]
        else:
            command = [sys.executable, "-m", "arrowport", ZYGOTE_FLAG, str(fd)]
        try:
            self._proc = subprocess.Popen(
                command,
                pass_fds=[fd],
                env=_environment(),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C is the server's to handle
            )
        finally:
            theirs.close()
        ours.settimeout(START_TIMEOUT)
        try:
            ready = ours.recv(4096)
        except OSError:
            ready = b""
        if not ready:
            ours.close()
            self._stop()
            raise QueryError("the query engine did not start", error="storage_unavailable")
        ours.settimeout(None)
        self._control = ours
        return ours

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None

    def spawn(self, limits: dict[str, Any]) -> Spawned:
        """A new query process, connected to the returned socket (blocking: a worker thread)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                for attempt in (1, 2):  # once more if the zygote had died meanwhile
                    control = self._start()
                    try:
                        message = json.dumps({"limits": limits}).encode()
                        socket.send_fds(control, [message], [theirs.fileno()])
                        reply, fds, _, _ = socket.recv_fds(control, 4096, 1)
                    except OSError:
                        reply, fds = b"", []
                    if reply and fds:
                        break
                    for fd in fds:
                        os.close(fd)
                    self._stop()
                    if attempt == 2:
                        raise QueryError(
                            "the query engine could not start a query", error="storage_unavailable"
                        )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return Spawned(sock=ours, pid=int(json.loads(reply)["pid"]), pidfd=fds[0])

    def close(self) -> None:
        with self._lock:
            self._stop()


ZYGOTE = Zygote()


# -- the zygote's own process ----------------------------------------------------------


def die_with_parent() -> None:
    """Be killed when the parent process ends (Linux ``PR_SET_PDEATHSIG``; best effort)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _reap(children: set[int]) -> None:
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
        children.discard(pid)


def main(argv: list[str]) -> None:
    """The zygote: fork a query process for each request on the control socket."""
    control = socket.socket(fileno=int(argv[0]))
    die_with_parent()
    if os.getppid() == 1:
        return
    import duckdb  # noqa: F401  (imported once, before any fork)
    import pyarrow.ipc  # noqa: F401

    from . import sql_worker

    control.send(json.dumps({"ready": True}).encode())
    children: set[int] = set()
    while True:
        _reap(children)
        readable, _, _ = select.select([control], [], [], 1.0)
        if not readable:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(control, 65536, 1)
        except OSError:
            break
        if not message:
            break
        if not fds:
            continue
        limits = json.loads(message)["limits"]
        pid = os.fork()
        if pid == 0:
            control.close()
            code = 0
            try:
                sql_worker.child(fds[0], limits)
            except BaseException:
                code = 1
            os._exit(code)
        os.close(fds[0])
        children.add(pid)
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(control, [json.dumps({"pid": pid}).encode()], [pidfd])
        except OSError:
            break
        finally:
            os.close(pidfd)
    for pid in children:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
