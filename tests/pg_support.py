"""Test support: a throwaway PostgreSQL server on 127.0.0.1 (e.g. a DuckLake catalog).

``start_postgres(tmpdir)`` runs ``initdb`` and ``pg_ctl start`` from the distribution's
PostgreSQL binaries (on PATH, or under ``/usr/lib/postgresql/*/bin``; ``.ci/run`` installs
them). The server trusts every local connection, listens on 127.0.0.1 only, at a free port,
and trades durability for speed (``fsync=off``): it is for tests, never for data.

PostgreSQL refuses to run as root. As root, the cluster is therefore created and run as
the ``postgres`` user (``runuser``), in a fresh directory under the system temp dir that
this user owns (pytest's own temp dirs are private to root); otherwise it lives in
``tmpdir``. ``stop()`` kills the server (``pg_ctl stop -m immediate``) and removes it all.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

SUPERUSER = "postgres"
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
# The longest unix socket path the kernel takes is 107 bytes; PostgreSQL adds ".s.PGSQL.NNNNN".
MAX_SOCKET_DIR = 80


class PostgresNotFound(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory of ``initdb``/``pg_ctl``/``postgres``: from PATH, else the newest
    ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which("initdb")
    if found is not None:
        bindir = Path(os.path.realpath(found)).parent
        if (bindir / "pg_ctl").exists() and (bindir / "postgres").exists():
            return bindir
    candidates = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates = [p for p in candidates if (p / "initdb").exists() and (p / "pg_ctl").exists()]

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    if candidates:
        return max(candidates, key=version)
    raise PostgresNotFound(
        "PostgreSQL is not installed: no initdb on PATH or in /usr/lib/postgresql/*/bin. "
        "Install the distribution's server package (Debian/Ubuntu: "
        "`apt-get install -y postgresql`; .ci/run does this), or put initdb, pg_ctl and "
        "postgres on PATH."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    """A running throwaway cluster; ``create_database`` hands out libpq conninfo strings."""

    def __init__(self, root: Path, bindir: Path, *, as_user: str | None) -> None:
        self.root = root
        self.bindir = bindir
        self.as_user = as_user
        self.data = root / "data"
        self.socket_dir = root / "s"
        self.logfile = root / "postgres.log"
        self.host = "127.0.0.1"
        self.port = 0
        self.user = SUPERUSER
        self._running = False

    # -- lifecycle -----------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user is not None:
            runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
            if runuser is None:
                raise PostgresNotFound(
                    "running as root needs runuser (util-linux) to start PostgreSQL"
                )
            cmd = [runuser, "-u", self.as_user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}{log}"
            )

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def _start(self, port: int) -> None:
        options = [f"-p {port}", f"-k {self.socket_dir}"]
        options += [f"-c {key}={value}" for key, value in SETTINGS.items()]
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-o",
            " ".join(options),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.port = port
        self._running = True

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until a TCP connection to the server succeeds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=5):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Kill the server at once and remove its directory (idempotent)."""
        if self._running:
            self._running = False
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- use -----------------------------------------------------------------------------

    def conninfo(self, dbname: str) -> str:
        """The libpq conninfo string of ``dbname`` on this server."""
        return f"dbname={dbname} host={self.host} port={self.port} user={self.user}"

    def create_database(self, name: str) -> str:
        """Create the database ``name``; return its libpq conninfo string."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as con:
            con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.conninfo(name)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _owned_root(tmpdir: Path) -> tuple[Path, str | None]:
    """A fresh directory for the cluster, and the user to run PostgreSQL as (None: us)."""
    if os.geteuid() != 0:
        tmpdir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="pg-", dir=tmpdir))
        if len(str(root / "s")) > MAX_SOCKET_DIR:
            root = Path(tempfile.mkdtemp(prefix="arrowport-pg-"))
        return root, None
    try:
        account = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresNotFound(
            "running as root, PostgreSQL must run as another user, and there is no "
            f"{SUPERUSER!r} user: install the distribution's postgresql package, which "
            "creates it"
        ) from None
    root = Path(tempfile.mkdtemp(prefix="arrowport-pg-"))
    os.chown(root, account.pw_uid, account.pw_gid)
    return root, SUPERUSER


def start_postgres(tmpdir: Path | str) -> PgServer:
    """Create and start a throwaway PostgreSQL cluster; ready for connections on return."""
    bindir = find_bindir()
    root, as_user = _owned_root(Path(tmpdir))
    server = PgServer(root, bindir, as_user=as_user)
    try:
        server.socket_dir.mkdir()
        if as_user is not None:
            account = pwd.getpwnam(as_user)
            os.chown(server.socket_dir, account.pw_uid, account.pw_gid)
        server._initdb()
        for attempt in range(5):  # a free port may be taken before the server binds it
            try:
                server._start(free_port())
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    atexit.register(server.stop)
    return server
