"""The log reader wired into the running exporter (exporter/scrape/logfeed.py): a real server's
csvlog read from its log directory, refusals counted exactly on /metrics, the counts kept over
a reload, and a log directory that vanishes reported without stopping the exporter."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config.model import parse_config
from harness.localpg import LocalCluster
from tests.conftest import new_cluster
from tests.helpers import RunningExporter, Samples, refuse_at_once, wait_until
from tests.pgbouncer_server import PgBouncer

FAILURES = "pg_connection_failures_total"
# One slot for the exporter's own connection, five for the test to fill the server with.
FULL = {"max_connections": 6, "superuser_reserved_connections": 0}


@pytest.fixture
def csvlog_cluster() -> Iterator[LocalCluster]:
    cluster = new_cluster(
        "15", logging_collector="on", log_destination="csvlog", log_directory="log", **FULL
    )
    try:
        yield cluster
    finally:
        cluster.stop()


class Reloadable:
    """An exporter whose configuration the test changes, then reloads."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.exporter = Exporter(
            parse_config(config, "test config"),
            "127.0.0.1",
            0,
            load_config=lambda: parse_config(self.config, "test config"),
        )
        self.exporter.start()
        self.running = RunningExporter(self.exporter)

    def reload(self, config: dict[str, Any]) -> None:
        self.config = config
        assert self.exporter.reload() == []


def _open_in(directory: Path) -> list[str]:
    """Files of `directory` this process holds open."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{directory}/"):
                out.append(target)
    return out


def _target(cluster: LocalCluster, **log: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "main", "dsn": cluster.dsn()}
    if log:
        spec["log"] = log
    return spec


def test_refusals_are_counted_on_metrics_and_kept_over_a_reload(
    csvlog_cluster: LocalCluster,
) -> None:
    cluster = csvlog_cluster
    log = {"source": "file", "directory": str(cluster.data / "log"), "format": "csvlog"}
    exp = Reloadable({"targets": [_target(cluster, **log)]})
    held: list[psycopg.Connection] = []
    stopped = False
    try:
        first = exp.running.scrape_until(
            lambda s: (
                s.get("pg_up", target="main") == 1
                and s.get("pg_connections_exporter_log_up", target="main") == 1
            ),
            what="the target up and its log read",
        )
        # Every reason has a 0 series from the first scrape, so increase() sees the first one.
        zeros = first.by(FAILURES, "reason", target="main", usename="", datname="")
        assert zeros["too_many_clients"] == 0 and zeros["role_limit"] == 0, zeros
        assert zeros.keys() >= {"authentication_failed", "no_hba_entry", "could_not_fork"}

        held = [psycopg.connect(cluster.dsn()) for _ in range(5)]
        refused = refuse_at_once(cluster.dsn(host="127.0.0.1"), 40)
        others = [r for r in refused if "too many clients" not in r]
        assert len(refused) == 40 and not others, others
        who = {
            "target": "main",
            "reason": "too_many_clients",
            "usename": "postgres",
            "datname": "postgres",
            "client_addr": "127.0.0.1",
        }
        exp.running.scrape_until(
            lambda s: s.get(FAILURES, **who) == 40,
            what="40 refusals counted on /metrics",
        )

        # A reload that leaves the target's log settings alone keeps its stream and counts.
        other = {"name": "other", "dsn": cluster.dsn(), "connect_timeout": 3}
        exp.reload({"targets": [_target(cluster, **log), other]})
        assert exp.running.scrape().get(FAILURES, **who) == 40
        refused = refuse_at_once(cluster.dsn(host="127.0.0.1"), 3)
        assert len(refused) == 3, refused
        exp.running.scrape_until(lambda s: s.get(FAILURES, **who) == 43, what="43 counted")

        # Removed: its series go; added again: a new stream from the end of the log (the
        # refusals already counted are not counted again).
        exp.reload({"targets": [_target(cluster), other]})
        assert exp.running.scrape().series(FAILURES, target="main") == []
        logs = cluster.data / "log"
        wait_until(lambda: not _open_in(logs), 10, what="its log file closed")
        exp.reload({"targets": [_target(cluster, **log), other]})
        again = exp.running.scrape_until(
            lambda s: s.get("pg_connections_exporter_log_up", target="main") == 1,
            what="the log read again",
        )
        assert again.get(FAILURES, **who) is None
        assert again.get(FAILURES, **{**who, "usename": "", "datname": "", "client_addr": ""}) == 0
        assert _open_in(logs)
        # Stopped: its task cancelled and the file closed.
        exp.running.stop()
        stopped = True
        wait_until(lambda: not _open_in(logs), 10, what="the log file closed on stop")
    finally:
        for conn in held:
            conn.close()
        if not stopped:
            exp.running.stop()


def test_a_vanished_log_directory_is_log_up_0_and_the_exporter_keeps_serving(
    csvlog_cluster: LocalCluster,
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="pgce-logwiring-"))
    (directory / "postgresql.csv").write_text("")
    log = {"directory": str(directory), "format": "csvlog"}
    exp = Reloadable({"targets": [_target(csvlog_cluster, **log)]})
    try:
        exp.running.scrape_until(
            lambda s: s.get("pg_connections_exporter_log_up", target="main") == 1,
            what="the log read",
        )
        shutil.rmtree(directory)

        def unreadable(s: Samples) -> bool:
            return (
                s.get("pg_connections_exporter_log_up", target="main") == 0
                and (s.get("pg_connections_exporter_log_errors_total", reason="missing") or 0) > 0
            )

        samples = exp.running.scrape_until(unreadable, what="log_up 0, errors by missing")
        assert samples.get("pg_up", target="main") == 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        exp.running.stop()


def test_pgbouncer_refusals_are_counted_on_metrics(
    pgbouncer_for: Callable[..., PgBouncer],
) -> None:
    """A `kind: pgbouncer` target's own log, read through the running exporter: clients over
    max_client_conn counted exactly."""
    cluster = new_cluster("15")
    try:
        bouncer = pgbouncer_for(cluster, max_client_conn=4)
        log = {"directory": str(bouncer.dir), "format": "pgbouncer", "pattern": "pgbouncer.log"}
        target = {"name": "pool", "kind": "pgbouncer", "dsn": bouncer.dsn(), "log": log}
        exp = Reloadable({"targets": [target]})
        refused = {"target": "pool", "reason": "max_client_conn"}
        clients: list[psycopg.Connection] = []
        try:
            first = exp.running.scrape_until(
                lambda s: (
                    s.get("pg_up", target="pool") == 1
                    and s.get("pg_connections_exporter_log_up", target="pool") == 1
                ),
                what="the pgbouncer target up and its log read",
            )
            assert first.get("pgbouncer_client_failures_total", **refused, user="") == 0
            # The exporter's own console connection and 3 clients: max_client_conn reached.
            clients = [psycopg.connect(bouncer.dsn("postgres", "app")) for _ in range(3)]
            for _ in range(5):
                with pytest.raises(psycopg.OperationalError, match="max_client_conn"):
                    psycopg.connect(bouncer.dsn("postgres", "app"), connect_timeout=5)
            who = {**refused, "user": "", "database": "", "client_addr": "127.0.0.1"}
            exp.running.scrape_until(
                lambda s: s.get("pgbouncer_client_failures_total", **who) == 5,
                what="5 clients refused for max_client_conn on /metrics",
            )
            threading.Event().wait(0.5)  # more polls: counted once
            again = exp.running.scrape()
            assert again.get("pgbouncer_client_failures_total", **who) == 5
            assert again.series("pg_connection_failures_total") == []
        finally:
            for conn in clients:
                conn.close()
            exp.running.stop()
    finally:
        cluster.stop()
