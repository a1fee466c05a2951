"""Running the built single binary (``dist/arrowport``) the way a user on another machine would.

Every process gets a clean environment, as ``env -i PATH=/usr/bin:/bin HOME=<empty dir>``
gives, and an empty working directory: no virtualenv, PYTHONPATH or Arrowport settings leak
in from the test's own Python.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

CLEAN_PATH = "/usr/bin:/bin"


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """What ``env -i PATH=/usr/bin:/bin HOME=<home>`` leaves, plus ``extra``."""
    return {"PATH": CLEAN_PATH, "HOME": str(home), **extra}


def run(
    binary: Path, *args: str, cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


class BinaryServer:
    """``arrowport serve`` from the binary, on a free port of 127.0.0.1."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        env: dict[str, str],
        *args: str,
        cafile: Path | None = None,
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.env = env
        self.args = args
        self.cafile = cafile
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: list[str] = []
        self.startup = 0.0  # seconds from exec to the first healthy /health
        self.startup_cpu = 0.0  # CPU seconds (user + system) the server had used by then
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> BinaryServer:
        ready = threading.Event()
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--port", "0", *self.args],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                match = re.search(r"serving on (https?://\S+?);", line)
                if match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise AssertionError("the binary's server did not start:\n" + "".join(self.log))
        deadline = started + timeout
        while not self.healthy():
            if time.perf_counter() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError("/health never answered ok:\n" + "".join(self.log))
            time.sleep(0.01)
        self.startup = time.perf_counter() - started
        self.startup_cpu = self.cpu_seconds()
        return self

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server process has used so far."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def context(self) -> ssl.SSLContext | None:
        return None if self.cafile is None else ssl.create_default_context(cafile=self.cafile)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=2, context=self.context()
            ) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def mapped_files(self) -> set[str]:
        """The files the running server has mapped: its executable and shared libraries."""
        assert self.proc is not None
        files = set()
        for line in Path(f"/proc/{self.proc.pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(parts[5].removesuffix(" (deleted)"))
        return files

    def stop(self) -> int:
        """Stop with Ctrl-C (SIGINT), as a user would; the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        self.proc = None
        return code

    def __enter__(self) -> BinaryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def openssl_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its unencrypted key (PEM)."""
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key)),
            *("-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
