"""Connection failures are reported by reason, never fatal, and recovered from by themselves."""

from __future__ import annotations

import time

import psycopg
import pytest

from exporter.db.failures import classify
from harness.localpg import LocalCluster, free_port
from harness.workload import SessionSpec, Workload
from tests.conftest import ALL_MAJORS, VERSIONS, new_cluster, require
from tests.helpers import http_get, wait_until


def test_down_at_start_then_recovers_by_itself(exporter_for) -> None:
    bindir = VERSIONS["18"]()
    require(bindir is not None, "PostgreSQL 18 server binaries")
    cluster = LocalCluster(bindir)
    cluster.port = free_port()
    try:
        running = exporter_for(
            {
                "targets": [
                    {"name": "down", "dsn": cluster.dsn(host="127.0.0.1"), "connect_timeout": 1}
                ]
            }
        )
        start = time.monotonic()
        s = running.scrape()
        assert time.monotonic() - start < 3  # within the connect timeout, not hanging
        assert s.value("pg_up", target="down") == 0
        s = running.scrape_until(
            lambda s: (
                s.value("pg_connections_exporter_connect_failures_total", reason="unreachable") >= 1
            ),
            what="an unreachable connect failure",
        )
        assert s.get("pg_connections_max") is None  # no stale or made-up numbers
        # The landing page says why, without the host and port of the server's message.
        page = http_get(f"{running.url}/")[1]
        assert "cannot connect: unreachable" in page
        assert str(cluster.port) not in page
        cluster.start()
        s = running.scrape_until(
            lambda s: s.value("pg_up", target="down") == 1,
            timeout=30,
            what="the exporter to reconnect",
        )
        assert s.value("pg_connections_max", target="down") == 100
    finally:
        cluster.stop()


@pytest.mark.parametrize("major", ALL_MAJORS)
def test_full_server_refusal_reasons(major: str, exporter_for) -> None:
    """The refusals of a full server by reason, in each major's words (16+ says the remaining
    slots are for pg_use_reserved_connections, before 16 for superusers)."""
    if int(major) >= 16:
        reserved = {"superuser_reserved_connections": 1, "reserved_connections": 1}
    else:
        reserved = {"superuser_reserved_connections": 2}
    cluster = new_cluster(major, max_connections=6, **reserved)
    try:
        cluster.execute("CREATE ROLE app LOGIN", "CREATE ROLE lim LOGIN CONNECTION LIMIT 0")
        with Workload(cluster.dsn()) as w:
            for _ in range(4):
                # The CREATE ROLE session's backend holds a slot until it has exited (under
                # load, after its client has gone): the slot is free again once it has.
                wait_until(
                    lambda: _opened(w, SessionSpec("idle", user="app")),
                    what="an ordinary slot to take",
                )
            # Ordinary roles are refused now; so is an exporter that starts only now as one.
            running = exporter_for(
                {
                    "targets": [
                        {"name": "late", "dsn": cluster.dsn(user="app"), "connect_timeout": 1},
                        {"name": "limited", "dsn": cluster.dsn(user="lim"), "connect_timeout": 1},
                    ]
                }
            )
            failures = "pg_connections_exporter_connect_failures_total"
            s = running.scrape_until(
                lambda s: (
                    s.value(failures, target="late", reason="reserved_slots_only") >= 1
                    and s.value(failures, target="limited", reason="role_limit") >= 1
                ),
                what="refusals counted by reason",
            )
            assert s.value("pg_up", target="late") == 0
            assert s.value("pg_up", target="limited") == 0
    finally:
        cluster.stop()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("FATAL:  sorry, too many clients already", "too_many_clients"),
        (
            "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER"
            " attribute",
            "reserved_slots_only",
        ),
        ('FATAL:  too many connections for database "shop"', "database_limit"),
        ('FATAL:  too many connections for role "web"', "role_limit"),
        ('FATAL:  password authentication failed for user "x"', "authentication"),
        ("FATAL:  the database system is starting up", "starting_up"),
        ("FATAL:  the database system is shutting down", "shutting_down"),
        ("Connection refused\n\tIs the server running", "unreachable"),
        ("something new", "other"),
    ],
)
def test_classify_messages(message: str, reason: str) -> None:
    assert classify(psycopg.OperationalError(f"connection failed: {message}")) == reason


def _opened(w: Workload, spec: SessionSpec) -> bool:
    """Whether `spec`'s session got in (False if it was refused for want of a slot)."""
    try:
        w.open(spec)
    except psycopg.OperationalError as exc:
        if "reserved" in str(exc) or "too many" in str(exc):
            return False
        raise
    return True
