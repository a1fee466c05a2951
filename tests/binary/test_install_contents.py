"""What a plain install (`pip install .`, `pipx install .`, the single binary) must bring.

These run in the normal suite, in seconds: they catch, without building anything, what
would break Arrowport on a machine that has only its declared dependencies and an empty
home directory.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def imported_top_level(package: Path) -> set[str]:
    """Top-level names of the absolute imports in ``package``'s modules."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def installed_by(requirements: list[str]) -> set[str]:
    """The distributions that installing ``requirements`` brings (no extras), by name."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in md.requires(requirement.name) or []]
    return seen


def test_every_imported_module_comes_with_the_declared_dependencies() -> None:
    """Each third-party module arrowport/ imports is installed by the dependencies that
    pyproject.toml declares (directly or through them), not only by the test extra."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    installed = installed_by(declared)
    providers = md.packages_distributions()
    third_party = imported_top_level(ROOT / "arrowport") - set(sys.stdlib_module_names)
    missing = {
        module: providers.get(module, [])
        for module in sorted(third_party - {"arrowport"})
        if not any(canonicalize_name(d) in installed for d in providers.get(module, []))
    }
    assert missing == {}, f"imported but not brought by [project] dependencies: {missing}"


def test_config_check_loads_lake_extensions_into_an_empty_home(tmp_path: Path) -> None:
    """With an empty HOME (no extension installed yet), `config check` of a DuckLake on a
    PostgreSQL catalog with S3 data installs and loads ducklake, postgres, httpfs and aws
    from their packages."""
    home, workdir = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    workdir.mkdir()
    config = workdir / "lake.yaml"
    config.write_text(
        "storage_backend: ducklake\n"
        "ducklake: {catalog: 'postgres:dbname=lake host=127.0.0.1', data_path: 's3://b/lake/'}\n"
    )
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}
    checked = subprocess.run(
        [sys.executable, "-m", "arrowport", "config", "check", str(config)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    installed = sorted(p.name for p in home.glob(".duckdb/extensions/*/*/*.duckdb_extension"))
    assert installed == [
        f"{name}.duckdb_extension" for name in ("aws", "ducklake", "httpfs", "postgres_scanner")
    ]
