"""The log reader's message table against real servers of every major (12-18): each refusal
provoked with real client connection attempts, the server's own log files (csvlog, stderr
with a log_line_prefix, and jsonlog on 15+) read by exporter/logs as a stream, and every
format counting exactly what was provoked, by reason, user, database and client host."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from exporter.logs.classify import Failure, SetupTime
from exporter.logs.filetail import FileTail
from exporter.logs.stream import DEFAULT_PATTERNS, LogStream
from harness.localpg import LocalCluster
from tests.conftest import ALL_MAJORS, new_cluster
from tests.helpers import wait_until

PREFIX = "%m [%p] %q%u@%d %h "
MAX_CONNECTIONS = 8
RESERVED = 2


def _settings(major: int) -> dict[str, object]:
    formats = "csvlog,stderr" + (",jsonlog" if major >= 15 else "")
    # 16+: one more slot kept for pg_use_reserved_connections, a wording of its own.
    reserved_for_role = {"reserved_connections": 1} if major >= 16 else {}
    return {
        **reserved_for_role,
        "logging_collector": "on",
        "log_destination": formats,
        "log_directory": "log",
        "log_line_prefix": PREFIX,
        # 18: receipt, authentication, authorization and setup_durations; before: on.
        "log_connections": "all" if major >= 18 else "on",
        "max_connections": MAX_CONNECTIONS,
        "superuser_reserved_connections": RESERVED,
        "password_encryption": "scram-sha-256",
        "lc_messages": "C",
    }


HBA = """
local all all trust
host all pw 127.0.0.1/32 scram-sha-256
host all rejected 127.0.0.1/32 reject
host all postgres,plain,res 127.0.0.1/32 trust
"""


def _refused(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(dsn, connect_timeout=5).close()
    return str(caught.value)


def _connect(cluster, user: str, expected: Counter[tuple[str, str, str, str]]):
    """A connection (over the socket) that may have to wait a moment: the backend of an attempt
    refused just before holds its slot until it has exited, which on a loaded machine is after
    its client saw the refusal. Each refusal meanwhile is logged too, so it is expected too."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return psycopg.connect(cluster.dsn(user=user), connect_timeout=5)
        except psycopg.OperationalError as exc:
            message = str(exc)
            if "too many clients" in message:
                reason = "too_many_clients"
            elif "connection slots are reserved" in message:
                reason = "reserved_slots_only"
            else:
                raise
            if time.monotonic() > deadline:
                raise
            expected[reason, user, "postgres", "local"] += 1
            time.sleep(0.05)


# The reserved-slot wordings, by major (the rest of the table reads the same on 12-18).
def _reserved_wordings(major: int) -> tuple[str, ...]:
    if major < 16:
        return (
            "remaining connection slots are reserved for non-replication superuser connections",
        )
    return (
        "remaining connection slots are reserved for roles with privileges of the"
        ' "pg_use_reserved_connections" role',
        "remaining connection slots are reserved for roles with the SUPERUSER attribute",
    )


def _provoke(cluster, major: int, expected: Counter[tuple[str, str, str, str]]) -> int:
    """Every refusal of the table that a client can cause; returns the connections that got in."""
    ok = 0
    for _ in range(2):
        assert "too many connections for role" in _refused(cluster.dsn(user="lim"))
        expected["role_limit", "lim", "postgres", "local"] += 1
    assert "too many connections for database" in _refused(cluster.dsn(user="plain", dbname="dl"))
    expected["database_limit", "plain", "dl", "local"] += 1
    for _ in range(3):
        _refused(cluster.dsn(user="pw", host="127.0.0.1", password="wrong"))
        expected["authentication_failed", "pw", "postgres", "127.0.0.1"] += 1
    assert "no pg_hba.conf entry" in _refused(cluster.dsn(user="nohba", host="127.0.0.1"))
    expected["no_hba_entry", "nohba", "postgres", "127.0.0.1"] += 1
    assert "rejects connection" in _refused(cluster.dsn(user="rejected", host="127.0.0.1"))
    expected["hba_rejected", "rejected", "postgres", "127.0.0.1"] += 1
    assert "does not exist" in _refused(cluster.dsn(user="ghost"))
    expected["role_does_not_exist", "ghost", "postgres", "local"] += 1
    assert "does not exist" in _refused(cluster.dsn(dbname="nodb"))
    expected["database_does_not_exist", "postgres", "nodb", "local"] += 1
    free = MAX_CONNECTIONS - RESERVED - (1 if major >= 16 else 0)
    held = [_connect(cluster, "plain", expected) for _ in range(free)]
    for wording in _reserved_wordings(major):
        for _ in range(2):
            assert wording in _refused(cluster.dsn(user="plain", host="127.0.0.1"))
            expected["reserved_slots_only", "plain", "postgres", "127.0.0.1"] += 1
        if "pg_use_reserved_connections" in wording:
            held.append(_connect(cluster, "res", expected))
    held += [_connect(cluster, "postgres", expected) for _ in range(RESERVED)]
    ok += len(held)
    for _ in range(3):
        assert "too many clients" in _refused(cluster.dsn(user="plain"))
        expected["too_many_clients", "plain", "postgres", "local"] += 1
    for conn in held[1:]:
        conn.close()
    # A smart shutdown waits for the last session; meanwhile new ones are refused.
    assert cluster.process is not None
    cluster.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "shutting down" in _refused(cluster.dsn(user="plain")), 10, what="shutdown")
    expected["shutting_down", "plain", "postgres", "local"] += 1
    held[0].close()
    cluster.process.wait(20)
    return ok


@pytest.mark.parametrize("major", ALL_MAJORS)
def test_every_refusal_counted_by_reason_in_every_format(major: str) -> None:
    cluster = new_cluster(major, **_settings(int(major)))
    try:
        (cluster.data / "pg_hba.conf").write_text(HBA)
        cluster.execute(
            "SELECT pg_reload_conf()",
            "CREATE ROLE lim LOGIN CONNECTION LIMIT 0",
            "CREATE ROLE plain LOGIN",
            "CREATE ROLE pw LOGIN PASSWORD 'right'",
            "CREATE DATABASE dl CONNECTION LIMIT 0",
        )
        if int(major) >= 16:
            cluster.execute("CREATE ROLE res LOGIN IN ROLE pg_use_reserved_connections")
        formats = ["csvlog", "stderr"] + (["jsonlog"] if int(major) >= 15 else [])
        logdir = cluster.data / "log"
        tails = {f: FileTail(logdir, DEFAULT_PATTERNS[f]) for f in formats}
        streams = {
            f: LogStream({"target": "t"}, f, tails[f].counts, log_line_prefix=PREFIX)
            for f in formats
        }
        for f in formats:  # positioned at the end of what the server logged so far
            streams[f].feed(tails[f].read_available(1 << 20))
        expected: Counter[tuple[str, str, str, str]] = Counter()
        got_in = _provoke(cluster, int(major), expected)
        for f in formats:
            failures: Counter[tuple[str, str, str, str]] = Counter()
            setups: Counter[str] = Counter()

            def caught_up(f: str = f, failures=failures, setups=setups) -> bool:
                for event in streams[f].feed(tails[f].read_available(1 << 20)):
                    if isinstance(event, Failure):
                        failures[event.reason, event.user, event.database, event.host] += 1
                    elif isinstance(event, SetupTime):
                        setups[event.phase] += 1
                return failures == expected

            wait_until(caught_up, 15, what=f"{f}: {expected} (so far {failures})")
            assert streams[f].failures.counts == dict(expected)
            assert streams[f].parser.counts.unparsed == 0
            if int(major) >= 18:
                assert setups["total"] == setups["fork"] == setups["authentication"] == got_in
            # Before 18 (and on 18 with receipt and authorization), from the timestamps: every
            # connection that got in, and the refusals after authorization.
            assert setups["received_to_authorized"] >= got_in
    finally:
        cluster.stop()


def test_the_log_directory_is_where_the_test_reads(tmp_path: Path) -> None:
    """The tail reads nothing from a directory with no log (a metric, not an exception)."""
    tail = FileTail(tmp_path / "absent", "*.csv")
    assert tail.read_available(1024) == []
    assert tail.counts.up is False and tail.counts.errors == {"missing": 1}


# What a server in standby with hot_standby off answers, by major, and the reason it counts as.
NOT_READY = {
    "the database system is starting up": "starting_up",
    "the database system is not yet accepting connections": "starting_up",
    "the database system is not accepting connections": "in_recovery",
}


def _start_in_standby(cluster: LocalCluster) -> None:
    """The postmaster of a standby that never reaches a consistent state to open (no primary,
    hot_standby off): it stays up and refuses every client with 57P03."""
    (cluster.data / "standby.signal").touch()
    args = [str(cluster.bindir / "postgres"), "-D", str(cluster.data), "-p", str(cluster.port)]
    args += ["-k", str(cluster.socket_dir), "-c", "hot_standby=off"]
    for key, value in cluster.settings.items():
        args += ["-c", f"{key}={value}"]
    cluster.process = subprocess.Popen(
        args,
        **cluster._as_user(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cluster.dir,
        start_new_session=True,
    )


@pytest.mark.parametrize("major", ALL_MAJORS)
def test_a_server_not_accepting_connections_yet(major: str) -> None:
    cluster = new_cluster(
        major, logging_collector="on", log_destination="csvlog", log_directory="log"
    )
    try:
        cluster.shutdown()
        tail = FileTail(cluster.data / "log", "*.csv")
        stream = LogStream({"target": "t"}, "csvlog", tail.counts)
        stream.feed(tail.read_available(1 << 20))
        _start_in_standby(cluster)

        def refused() -> str:
            message = _refused(cluster.dsn(user="plain"))
            return next((m for m in NOT_READY if m in message), "")

        first = wait_until(refused, 20, what="a refusal while in standby")
        # 14+ says "starting up" until recovery is consistent, then "not accepting
        # connections": on a loaded machine the three attempts may straddle that moment.
        seen = Counter([first])
        for _ in range(2):
            again = refused()
            assert again, "a refusal of the table's wordings"
            seen[again] += 1
        expected = {(NOT_READY[w], "plain", "postgres", "local"): n for w, n in seen.items()}

        def counted() -> bool:
            stream.feed(tail.read_available(1 << 20))
            return stream.failures.counts == expected

        wait_until(counted, 15, what=f"{expected}, got {stream.failures.counts}")
        print(f"PostgreSQL {major}: {dict(seen)!r}")
    finally:
        cluster.stop()


# Shorter than NAMEDATALEN (the server cuts names at 63 bytes): a CSV record's start after a
# newline, and a JSON key/value pair.
HOSTILE_USER = 'x"\n2026-12-07 02:48:52 UTC,"u","d",1,,,1,,,,0,FATAL,53300,"sorr'
HOSTILE_DB = 'd","error_severity":"FATAL","message":"sorry, too many'


@pytest.mark.parametrize("major", ["15", "18"])
def test_names_from_clients_forge_no_line_label_or_count(major: str) -> None:
    cluster = new_cluster(
        major,
        logging_collector="on",
        log_destination="csvlog,jsonlog",
        log_directory="log",
        lc_messages="C",
    )
    assert len(HOSTILE_USER) < 64 and len(HOSTILE_DB) < 64
    try:
        streams = {}
        tails = {}
        for f in ("csvlog", "jsonlog"):
            tails[f] = FileTail(cluster.data / "log", DEFAULT_PATTERNS[f])
            streams[f] = LogStream({"target": "t"}, f, tails[f].counts)  # type: ignore[arg-type]
            streams[f].feed(tails[f].read_available(1 << 20))
        _refused(cluster.dsn(user=HOSTILE_USER))
        _refused(cluster.dsn(dbname=HOSTILE_DB))
        expected = {
            ("role_does_not_exist", HOSTILE_USER, "postgres", "local"): 1,
            ("database_does_not_exist", "postgres", HOSTILE_DB, "local"): 1,
        }
        for f, stream in streams.items():

            def counted(stream: LogStream = stream, tail: FileTail = tails[f]) -> bool:
                stream.feed(tail.read_available(1 << 20))
                return stream.failures.counts == expected

            wait_until(counted, 15, what=f"{f}: {expected}, got {stream.failures.counts}")
    finally:
        cluster.stop()
