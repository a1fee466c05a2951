"""The documentation site builds offline, and its quickstart and how-tos work as written.

Snippet convention, for docs/quickstart.md and docs/howto/*.md:

- A fenced block whose info string is ``python`` or ``sh`` is run. Blocks in any other
  language (``text``, ``yaml``, none) are not. Fences start at the beginning of a line.
- An HTML comment on the line just above the fence, ``<!-- docs-test: WORD -->``, changes
  that. It does not show on the site. WORD is one of:
  - ``skip``: the block is not run (installing, ``arrowport serve``);
  - ``stop-server``: the page's server is stopped first (it holds the DuckDB file's lock);
  - ``auth``: the block runs against a second server that has ``ARROWPORT_TOKEN`` set, and
    gets the same variable in its environment;
  - ``config`` (on a ``yaml`` block): the page's server starts with this as its config file.
- A page's runnable blocks run in order, each in its own process (``python``, or ``bash`` with
  ``-euo pipefail``), all in one fresh directory: a block may use files an earlier one wrote,
  but no variables. The server runs there too, with ``--db arrowport.duckdb``.
- Snippets name the server ``127.0.0.1:8888`` (``http://`` or ``grpc://``); the test puts the
  real port there. No other ``8888`` may remain in a runnable block.
- After the page, the test checks the exact user tables and row counts in DuckDB (and Delta),
  and strings the snippets must have printed.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from support import Server

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNABLE = {"python", "sh"}
MARKS = {"skip", "stop-server", "auth", "config"}
FENCE = re.compile(r"^```([\w-]*)\s*$")
MARK = re.compile(r"^<!--\s*docs-test:\s*([\w-]+)\s*-->\s*$")
SNIPPET_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    mark: str | None
    line: int


@dataclass(frozen=True)
class Expect:
    """What a page leaves behind when all its snippets have run."""

    tables: dict[str, int]  # every user table in arrowport.duckdb, with its exact row count
    delta: dict[str, int] = field(default_factory=dict)  # Delta tables under arrowport_delta/
    auth_tables: dict[str, int] = field(default_factory=dict)  # on the server with a token
    printed: tuple[str, ...] = ()  # substrings of the snippets' combined stdout


PAGES: dict[str, Expect] = {
    "quickstart.md": Expect(tables={"trips": 5}, printed=("2\n", "5\n", "Accra")),
    "howto/curl.md": Expect(
        # 3 (--data-binary) + 3 (-T) + 3 (the keyed pair: one write, one replay) + 3 (--retry)
        tables={"trips": 12, "numbers": 10_000},
        delta={"trips": 3},
        auth_tables={"trips": 3},
        printed=("415", '"replayed":true', '"status":"ok"', "arrowport_rows_total{"),
    ),
    "howto/httpx.md": Expect(
        # trips: 3 + 0 (the 422) + 2 (sent twice with one key)
        tables={"trips": 5, "readings": 1_000_000, "ticks": 5},
        auth_tables={"tokens_demo": 3},
        printed=(
            "1000000",
            "aborted: the source went away",
            "422\nschema_mismatch",
            "2 False",
            "2 True",
            "nightly-load-42",
        ),
    ),
    "howto/polars.md": Expect(
        tables={
            "trips": 3,
            "readings": 1_000_000,
            "events": 240_000,  # ids 10,000 to 249,999
            "events_by_chunk": 250_000,
        },
        printed=("1000000 10", "240000", "2 50000 written", "49999"),
    ),
    "howto/pyarrow-http.md": Expect(
        tables={"trips": 3, "readings": 300_000},
        delta={"trips": 3},
        printed=("300000", "400 invalid_ipc_framing", "version 0"),
    ),
    "howto/pyarrow-flight.md": Expect(
        # trips: 3 + 0 (refused) + 2 (keyed, sent twice) + 1 (key as metadata) + 2 (put())
        # + 2 (per-batch metadata); the abandoned put leaves no table
        tables={"trips": 10, "sensor_events": 30},
        auth_tables={"secure": 3},
        printed=(
            "refused:",
            "not found:",
            "'replayed': True",
            "['offset=100', 'offset=200']",
            "30 ['batch 2']",
            "cancelled: nothing was committed",
            "no token: refused",
        ),
    ),
    "howto/adbc.md": Expect(
        # trips: 3 + 0 (create refused) + 2 (keyed, sent twice); cities replaced by 2 rows
        tables={"trips": 5, "cities": 2},
        auth_tables={"secure": 3},
        printed=(
            "ingested 3",
            "refused: ProgrammingError",
            "2\n2\n",
            "['TABLE']",
            "duckdb main ['cities', 'trips']",
            "{'city': 'Accra', 'n': 1}",
            "[(2,)]",
        ),
    ),
    "howto/duckdb.md": Expect(
        tables={"trips": 6},
        delta={"trips_lake": 3},
        printed=("42.25", "20.0", "Could not set lock", "[('trips',)]", "(6, 3)"),
    ),
}


def parse_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the docs-test mark above each, if any."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            assert not re.match(r"^\s+```", lines[i]), f"{page}:{i + 1}: indented fence"
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        mark = MARK.match(lines[i - 1]) if i else None
        if mark is not None:
            assert mark.group(1) in MARKS, f"{page}:{i}: unknown mark {mark.group(1)!r}"
        code = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(opening.group(1), code, mark.group(1) if mark else None, i + 1))
        i = end + 1
    return blocks


def run_block(block: Block, where: str, server: Server, cwd: Path, env: dict[str, str]) -> str:
    """Run one snippet against ``server``; return its stdout."""
    port = server.url.rsplit(":", 1)[1]
    code = block.code.replace("127.0.0.1:8888", f"127.0.0.1:{port}")
    assert "8888" not in code, f"{where}: names port 8888 in a way the test cannot rewrite"
    script = cwd.parent / "snippets" / f"{where.replace('/', '_').replace(':', '_L')}"
    script.parent.mkdir(exist_ok=True)
    script.write_text(code)
    if block.lang == "python":
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-euo", "pipefail", str(script)]
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT
    )
    assert proc.returncode == 0, (
        f"{where} exited {proc.returncode}\n--- code\n{code}--- stdout\n{proc.stdout}"
        f"--- stderr\n{proc.stderr}--- server log\n{''.join(server.log[-30:])}"
    )
    return proc.stdout


def table_counts(server: Server) -> dict[str, int]:
    """Every user table of the server's DuckDB file and its rows (stops the server)."""
    counts: dict[str, int] = {}
    for table in server.tables():
        (count,) = server.query(f'SELECT count(*) FROM "{table}"')[0]
        assert isinstance(count, int)
        counts[table] = count
    return counts


def delta_counts(root: Path) -> dict[str, int]:
    from deltalake import DeltaTable

    if not root.is_dir():
        return {}
    tables = sorted(p for p in root.iterdir() if (p / "_delta_log").is_dir())
    return {p.name: DeltaTable(str(p)).to_pyarrow_dataset().count_rows() for p in tables}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_snippets_work(page: str, server_factory: type[Server], tmp_path: Path) -> None:
    """Each runnable snippet of the page succeeds against a real server, with the exact result."""
    expect = PAGES[page]
    blocks = parse_blocks(DOCS / page)
    runnable = [b for b in blocks if b.lang in RUNNABLE and b.mark not in ("skip", "config")]
    assert runnable, f"{page} has no runnable snippet"
    work = tmp_path / "work"
    work.mkdir()
    configs = [b for b in blocks if b.mark == "config"]
    config = None
    if configs:
        assert len(configs) == 1 and configs[0].lang == "yaml", f"{page}: one yaml config block"
        config = work / "arrowport.yaml"
        config.write_text(configs[0].code)
    server = server_factory(work, db=work / "arrowport.duckdb", config=config).start()
    token = secrets.token_hex(16)
    auth_server: Server | None = None
    env = {k: v for k, v in os.environ.items() if k != "ARROWPORT_TOKEN"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    printed = []
    for block in runnable:
        where = f"{page}:{block.line}"
        target = server
        block_env = env
        if block.mark == "stop-server":
            server.stop()
        elif block.mark == "auth":
            if auth_server is None:
                auth_dir = tmp_path / "auth"
                auth_dir.mkdir()
                auth_server = server_factory(
                    auth_dir, db=auth_dir / "arrowport.duckdb", env={"ARROWPORT_TOKEN": token}
                ).start()
            target = auth_server
            block_env = {**env, "ARROWPORT_TOKEN": token}
        printed.append(run_block(block, where, target, work, block_env))
    output = "".join(printed)
    for text in expect.printed:
        assert text in output, f"{page}: the snippets did not print {text!r}:\n{output}"
    assert table_counts(server) == expect.tables
    assert delta_counts(work / "arrowport_delta") == expect.delta
    if auth_server is not None or expect.auth_tables:
        assert auth_server is not None, f"{page}: no block marked auth"
        assert table_counts(auth_server) == expect.auth_tables


def test_every_howto_is_tested() -> None:
    """Every page under docs/howto/ is in PAGES, so its snippets run."""
    howtos = {f"howto/{p.name}" for p in (DOCS / "howto").glob("*.md")}
    assert howtos <= set(PAGES), f"how-tos whose snippets no test runs: {howtos - set(PAGES)}"


def _nav_pages(nav: list[object]) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages += _nav_pages(value)
        else:
            pages.append(str(value))
    return pages


def test_site_builds_offline(tmp_path: Path) -> None:
    """mkdocs build --strict succeeds with no network, every nav page is built, and no page
    loads a script, style or font from another host."""
    site = tmp_path / "site"
    dead = "http://127.0.0.1:9"  # any attempt to reach the network fails at once
    env = {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "NO_PROXY": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = _nav_pages(nav)
    assert set(PAGES) <= set(pages), "every tested page is in the nav"
    for page in pages:
        assert (site / page.replace(".md", ".html")).is_file(), f"{page} was not built"
    remote = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)
    for html in site.rglob("*.html"):
        for tag in re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", html.read_text()):
            assert not remote.search(tag), f"{html.relative_to(site)} loads {tag}"
    for css in site.rglob("*.css"):
        assert not re.search(r"(?:url\(|@import)\s*['\"]?(?:https?:)?//", css.read_text()), css
