"""The log read over the target's held connection (`log: {source: remote}`) and the stderr
prefix read with SHOW, through a running exporter against real servers: a storm of refusals
counted exactly on /metrics, the function missing reported without stopping the exporter, a
scrape never waiting for more than one read, and stderr lines read with the server's own
prefix."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config.model import parse_config
from harness.localpg import LocalCluster
from tests.conftest import new_cluster
from tests.helpers import RunningExporter, Samples, refuse_at_once

SQL = Path(__file__).resolve().parents[1] / "exporter" / "logs" / "sql" / "pgce_read_log.sql"
FAILURES = "pg_connection_failures_total"
UP = "pg_connections_exporter_log_up"
ERRORS = "pg_connections_exporter_log_errors_total"
# One slot for the exporter's own connection, five for the test to fill the server with.
FULL = {"max_connections": 6, "superuser_reserved_connections": 0}
PREFIX = "%m [%p] %q%u@%d %h "
GRANT = "GRANT EXECUTE ON FUNCTION pgce_read_log(text, bigint, integer) TO monitor"


def _cluster(major: str, log_format: str, **settings: Any) -> LocalCluster:
    cluster = new_cluster(
        major,
        logging_collector="on",
        log_destination=log_format,
        log_directory="log",
        **{**FULL, **settings},
    )
    cluster.execute("CREATE ROLE monitor LOGIN IN ROLE pg_monitor")
    return cluster


@pytest.fixture
def servers() -> Iterator[list[LocalCluster]]:
    started: list[LocalCluster] = []
    try:
        yield started
    finally:
        for cluster in started:
            cluster.stop()


class Running:
    """An exporter on one target (`main`, connecting as the pg_monitor role `monitor`)."""

    def __init__(self, cluster: LocalCluster, log: dict[str, Any], remote_poll: float = 0.2):
        self.config: dict[str, Any] = {
            "targets": [{"name": "main", "dsn": cluster.dsn(user="monitor"), "log": log}]
        }
        self.exporter = Exporter(
            parse_config(self.config, "test config"),
            "127.0.0.1",
            0,
            load_config=lambda: parse_config(self.config, "test config"),
        )
        # Polled faster than the shipped 2 s, so the test waits less (the rule is the same).
        self.exporter.log_feeds.remote_poll = remote_poll
        self.exporter.start()
        self.running = RunningExporter(self.exporter)

    def reload(self, **target: Any) -> None:
        """The target's settings changed by `target`, reloaded."""
        self.config = {"targets": [{**self.config["targets"][0], **target}]}
        assert self.exporter.reload() == []

    def until(self, check: Any, what: str, timeout: float = 30.0) -> Samples:
        return self.running.scrape_until(check, timeout, what)

    def stop(self) -> None:
        self.running.stop()


def _storm(cluster: LocalCluster, times: int) -> None:
    """Fill the server, then `times` attempts at once over TCP (test_log_sources.py says why
    not the Unix socket); every one refused for too many clients."""
    held = [psycopg.connect(cluster.dsn()) for _ in range(5)]
    try:
        refused = refuse_at_once(cluster.dsn(host="127.0.0.1"), times)
    finally:
        for conn in held:
            conn.close()
    others = [r for r in refused if "too many clients" not in r]
    assert len(refused) == times and not others, others


def _log_read(s: Samples) -> bool:
    return s.get("pg_up", target="main") == 1 and s.get(UP, target="main") == 1


WHO = {
    "target": "main",
    "reason": "too_many_clients",
    "usename": "postgres",
    "datname": "postgres",
    "client_addr": "127.0.0.1",
}


@pytest.mark.parametrize(
    ("major", "log_format"),
    # The function and the listing on every major (pg_ls_logdir() and pg_read_binary_file's
    # four-argument form are the same from 12 on); jsonlog from 15.
    [
        ("12", "csvlog"),
        ("13", "csvlog"),
        ("14", "csvlog"),
        ("15", "csvlog"),
        ("16", "jsonlog"),
        ("17", "csvlog"),
        ("18", "jsonlog"),
    ],
)
def test_a_storm_read_remotely_is_counted_exactly(
    servers: list[LocalCluster], major: str, log_format: str
) -> None:
    cluster = _cluster(major, log_format)
    servers.append(cluster)
    cluster.execute(SQL.read_text(), GRANT)
    exp = Running(cluster, {"source": "remote", "format": log_format})
    try:
        exp.until(_log_read, "the target up and its log read remotely")
        _storm(cluster, 40)
        exp.until(lambda s: s.get(FAILURES, **WHO) == 40, "40 refusals counted on /metrics")
        time.sleep(1.0)  # several more polls: nothing counted twice
        after = exp.running.scrape()
        assert after.get(FAILURES, **WHO) == 40
        assert after.get(ERRORS, target="main", reason="function_missing") is None
        # Through the held connection only: the server has one session of the exporter's.
        assert _sessions_of_monitor(cluster) == 1
    finally:
        exp.stop()


def _sessions_of_monitor(cluster: LocalCluster) -> int:
    with psycopg.connect(cluster.dsn()) as conn:
        [(sessions,)] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'monitor'"
        ).fetchall()
    return int(sessions)


def test_a_reload_keeps_the_remote_counts_and_follows_a_new_connection(
    servers: list[LocalCluster],
) -> None:
    cluster = _cluster("15", "csvlog")
    servers.append(cluster)
    cluster.execute(SQL.read_text(), GRANT)
    exp = Running(cluster, {"source": "remote", "format": "csvlog"})
    try:
        exp.until(_log_read, "the log read remotely")
        _storm(cluster, 5)
        exp.until(lambda s: s.get(FAILURES, **WHO) == 5, "5 refusals counted")
        [(old_pid,)] = _monitor_pids(cluster)
        # A changed connect_timeout: a new connection, the same log settings: the same stream.
        exp.reload(connect_timeout=7)
        assert exp.running.scrape().get(FAILURES, **WHO) == 5
        exp.until(
            lambda s: _log_read(s) and _monitor_pids(cluster) not in ([], [(old_pid,)]),
            "the new connection in use",
        )
        _storm(cluster, 3)
        exp.until(lambda s: s.get(FAILURES, **WHO) == 8, "3 more through the new connection")
        assert _sessions_of_monitor(cluster) == 1
    finally:
        exp.stop()


def _monitor_pids(cluster: LocalCluster) -> list[tuple[int]]:
    with psycopg.connect(cluster.dsn()) as conn:
        return conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = 'monitor'").fetchall()


def test_the_function_missing_is_log_up_0_one_log_line_and_the_exporter_serves(
    servers: list[LocalCluster], caplog: pytest.LogCaptureFixture
) -> None:
    cluster = _cluster("15", "csvlog")
    servers.append(cluster)
    caplog.set_level(logging.WARNING, logger="exporter.scrape.logfeed")
    exp = Running(cluster, {"source": "remote", "format": "csvlog"})
    try:
        missing = exp.until(
            lambda s: (s.get(ERRORS, target="main", reason="function_missing") or 0) >= 5,
            "five polls failing for the missing function",
        )
        assert missing.get("pg_up", target="main") == 1
        assert missing.get(UP, target="main") == 0
        lines = [r for r in caplog.records if getattr(r, "reason", None) == "function_missing"]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert getattr(lines[0], "target", None) == "main"

        # Installed but not granted: permission denied, its own reason and line.
        cluster.execute(SQL.read_text())
        exp.until(
            lambda s: (s.get(ERRORS, target="main", reason="permission") or 0) >= 1,
            "permission denied counted",
        )
        assert len([r for r in caplog.records if getattr(r, "reason", None) == "permission"]) == 1

        # Granted: read from then on.
        cluster.execute(GRANT)
        exp.until(_log_read, "the log read once the function is granted")
        _storm(cluster, 3)
        exp.until(lambda s: s.get(FAILURES, **WHO) == 3, "3 refusals counted")
    finally:
        exp.stop()


def test_a_scrape_waits_for_at_most_one_log_read(servers: list[LocalCluster]) -> None:
    cluster = _cluster("15", "csvlog", log_statement="all")  # the log grows with each query
    servers.append(cluster)
    read_seconds = 0.8
    # The function as shipped, but each read takes read_seconds: a read the scrape must wait for.
    slow = SQL.read_text().replace(
        "BEGIN\n", f"BEGIN\n    PERFORM pg_catalog.pg_sleep({read_seconds});\n", 1
    )
    assert slow != SQL.read_text()
    cluster.execute(slow, GRANT)
    # remote_poll 0: the feed reads back to back, as it does when it is behind.
    exp = Running(cluster, {"source": "remote", "format": "csvlog"}, remote_poll=0.0)
    stop = threading.Event()

    def write_the_log() -> None:  # new bytes for every read, as a busy server's log has
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            while not stop.wait(0.02):
                conn.execute("SELECT 1")

    writer = threading.Thread(target=write_the_log)
    writer.start()
    try:
        exp.until(_log_read, "the log read")
        took = []
        for _ in range(8):
            start = time.monotonic()
            samples = exp.running.scrape()
            took.append(time.monotonic() - start)
            assert samples.get("pg_up", target="main") == 1
            time.sleep(0.13)
        # Each scrape found a read under way (it waited for part of one) but never for a
        # second: the feed gives the connection up after each read and steps aside (Busy)
        # while a scrape waits. The scrape's own queries take a few ms.
        print("scrape seconds while reading:", [round(t, 3) for t in took])
        assert max(took) < read_seconds + 0.5, took
        assert max(took) > 0.2, f"no scrape met a read: {took}"
    finally:
        stop.set()
        writer.join(10)
        exp.stop()


@pytest.mark.parametrize(("major", "source"), [("15", "file"), ("18", "remote")])
def test_stderr_is_read_with_the_prefix_the_server_shows(
    servers: list[LocalCluster], major: str, source: str
) -> None:
    cluster = _cluster(major, "stderr", log_line_prefix=PREFIX)
    servers.append(cluster)
    cluster.execute(SQL.read_text(), GRANT)
    log: dict[str, Any] = {"source": source, "format": "stderr"}  # no log_line_prefix
    if source == "file":
        log["directory"] = str(cluster.data / "log")
    exp = Running(cluster, log)
    try:
        exp.until(_log_read, "the prefix shown and the log read")
        _storm(cluster, 7)
        # User, database and client host come from the %u@%d %h of the server's prefix,
        # which the default ('%m [%p] ') would not have given.
        exp.until(lambda s: s.get(FAILURES, **WHO) == 7, "7 refusals with user, database, host")
    finally:
        exp.stop()


def test_a_shown_prefix_the_reader_cannot_parse_is_log_up_0_with_a_reason(
    servers: list[LocalCluster], caplog: pytest.LogCaptureFixture
) -> None:
    cluster = _cluster("15", "stderr", log_line_prefix="%m %u%d ")  # no %p, adjacent escapes
    servers.append(cluster)
    exp = Running(cluster, {"directory": str(cluster.data / "log"), "format": "stderr"})
    try:
        refused = exp.until(
            lambda s: (s.get(ERRORS, target="main", reason="prefix") or 0) >= 1,
            "the prefix refused",
        )
        assert refused.get(UP, target="main") == 0
        assert refused.get("pg_up", target="main") == 1
        [line] = [r for r in caplog.records if getattr(r, "reason", None) == "prefix"]
        assert line.levelname == "ERROR" and "%m %u%d" in getattr(line, "error", "")
    finally:
        exp.stop()


def test_rotation_by_the_logging_collector_read_remotely_loses_and_duplicates_nothing(
    servers: list[LocalCluster],
) -> None:
    cluster = _cluster(
        "15",
        "csvlog",
        log_rotation_size="1kB",  # a new file every few refusals
        log_filename="postgresql-%H%M%S.log",
    )
    servers.append(cluster)
    cluster.execute(SQL.read_text(), GRANT)
    exp = Running(cluster, {"source": "remote", "format": "csvlog"})
    try:
        exp.until(_log_read, "the log read remotely")
        held = [psycopg.connect(cluster.dsn()) for _ in range(5)]
        sent = 0
        try:
            for _ in range(30):  # ~3 s at a steady rate, read by the exporter as it goes
                for _ in range(2):
                    with pytest.raises(psycopg.OperationalError, match="too many clients"):
                        psycopg.connect(cluster.dsn(host="127.0.0.1"), connect_timeout=5)
                sent += 2
                time.sleep(0.1)
        finally:
            for conn in held:
                conn.close()
        exp.until(lambda s: s.get(FAILURES, **WHO) == sent, f"{sent} refusals counted")
        time.sleep(1.0)
        after = exp.running.scrape()
        assert after.get(FAILURES, **WHO) == sent
        rotations = after.get("pg_connections_exporter_log_rotations_total", how="next_file")
        assert (rotations or 0) >= 3, rotations
        assert len(list((cluster.data / "log").glob("*.csv"))) >= 3
    finally:
        exp.stop()
