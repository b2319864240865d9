"""The exporter keeps telling the truth while the server is full, down, restarted or locked."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest

from exporter.db.connection import APPLICATION_NAME
from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload
from tests.conftest import ALL_MAJORS, new_cluster
from tests.helpers import Samples, http_get, wait_until
from tests.test_exporter import exporter_backends

FAILURES = "pg_connections_exporter_connect_failures_total"
LOGIN_FAILURES = "pg_connections_login_check_failures_total"


def _refused(cluster: LocalCluster, user: str) -> str | None:
    """The server's refusal for a new session of `user`, or None if it was let in."""
    try:
        with psycopg.connect(cluster.dsn(user=user), connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return str(exc)


def _fill_ordinary_slots(w: Workload, cluster: LocalCluster, user: str) -> int:
    """Open idle sessions of `user` until the server refuses the next one."""
    opened = 0
    while opened < 50:
        try:
            w.open(SessionSpec("idle", user=user))
        except psycopg.OperationalError as exc:
            assert "reserved" in str(exc) or "too many clients" in str(exc), exc
            return opened
        opened += 1
    raise AssertionError("the server never refused a session")


def _opened(w: Workload, user: str) -> bool:
    try:
        w.open(SessionSpec("idle", user=user))
    except psycopg.OperationalError:
        return False
    return True


def _exporter_backend_pids(cluster: LocalCluster) -> list[int]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,)
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("major", ALL_MAJORS)
def test_reserved_role_and_login_check_through_saturation(major: str, exporter_for) -> None:
    """On 16+, a monitoring role granted pg_use_reserved_connections gets back in while ordinary
    roles are refused; before 16 only superusers have reserved slots, so there the monitoring
    role must be one. The login check (as an ordinary role) sees the refusal."""
    if int(major) >= 16:
        reserved = {"superuser_reserved_connections": 1, "reserved_connections": 2}
        monitor = [
            "CREATE ROLE monitor LOGIN",
            "GRANT pg_monitor, pg_use_reserved_connections TO monitor",
        ]
    else:
        reserved = {"superuser_reserved_connections": 3}
        monitor = ["CREATE ROLE monitor LOGIN SUPERUSER"]
    cluster = new_cluster(major, max_connections=8, **reserved)
    try:
        cluster.execute("CREATE ROLE app LOGIN", *monitor)
        running = exporter_for(
            {
                "targets": [
                    {
                        "name": "main",
                        "dsn": cluster.dsn(user="monitor", host="127.0.0.1"),
                        "connect_timeout": 2,
                        "login_check": {
                            "interval": "200ms",
                            "dsn": cluster.dsn(user="app", host="127.0.0.1"),
                            "timeout": "200ms",
                        },
                    }
                ]
            }
        )
        s = running.scrape_until(
            lambda s: s.get("pg_connections_login_check_success", target="main") == 1,
            what="a successful login check",
        )
        assert s.value("pg_connections_login_check_duration_seconds", target="main") > 0
        with Workload(cluster.dsn()) as w:
            opened = _fill_ordinary_slots(w, cluster, "app")
            # 8 slots: 3 reserved (16+: 1 for superusers, 2 for pg_use_reserved_connections),
            # 1 held by the exporter.
            assert opened == 4
            s = running.scrape_until(
                lambda s: s.value("pg_connections_login_check_success", target="main") == 0,
                what="the login check to be refused",
            )
            assert s.value(LOGIN_FAILURES, target="main", reason="reserved_slots_only") >= 1
            # The held connection keeps reporting through it, with the right numbers.
            assert s.value("pg_up", target="main") == 1
            assert s.value("pg_connections_used", target="main") == 5
            assert s.value("pg_connections_available", target="main") == 0

            # Lose the held connection; the slot it freed goes to an ordinary client at once.
            cluster.execute(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE application_name = '{APPLICATION_NAME}'"
            )
            wait_until(lambda: _opened(w, "app"), what="an ordinary client to take the freed slot")
            assert "reserved" in (_refused(cluster, "app") or "")
            # The monitoring role gets back in through a reserved slot, with no restart.
            s = running.scrape_until(
                lambda s: (
                    s.value("pg_up", target="main") == 1
                    and s.value("pg_connections_used", target="main") == 6
                ),
                timeout=30,
                what="the exporter to reconnect through a reserved slot",
            )
            assert s.value(FAILURES, target="main", reason="reserved_slots_only") == 0
            assert s.value("pg_connections_login_check_success", target="main") == 0
            assert len(_exporter_backend_pids(cluster)) == 1
        # After the saturation: ordinary logins work again, and the numbers fall back.
        s = running.scrape_until(
            lambda s: (
                s.value("pg_connections_login_check_success", target="main") == 1
                and s.value("pg_connections_used", target="main") == 1
            ),
            what="the login check to succeed again",
        )
        assert s.value("pg_connections_available", target="main") == 4
    finally:
        cluster.stop()


@pytest.mark.parametrize("major", ALL_MAJORS)
def test_login_check_defaults_to_the_target_dsn_once_a_minute(major: str, exporter_for) -> None:
    cluster = new_cluster(major, max_connections=20)
    try:
        running = exporter_for(
            {
                "targets": [
                    {
                        "name": "t",
                        "dsn": cluster.dsn(host="127.0.0.1"),
                        "connect_timeout": 1,
                        "login_check": True,
                    },
                    {"name": "unchecked", "dsn": cluster.dsn()},
                ]
            }
        )
        first = running.scrape()
        assert first.value("pg_connections_login_check_success", target="t") == 1
        assert first.get("pg_connections_login_check_success", target="unchecked") is None
        # Within the default 60 s interval the next scrape reports the same attempt.
        second = running.scrape()
        duration = "pg_connections_login_check_duration_seconds"
        assert second.value(duration, target="t") == first.value(duration, target="t")
        # A login refused for a reason of its own (here: the database is gone) says why.
        cluster.execute("CREATE DATABASE gone")
        running2 = exporter_for(
            {
                "targets": [
                    {
                        "name": "t",
                        "dsn": cluster.dsn(),
                        "login_check": {"dsn": cluster.dsn(dbname="gone"), "interval": "100ms"},
                    }
                ]
            }
        )
        assert running2.scrape().value("pg_connections_login_check_success", target="t") == 1
        cluster.execute("DROP DATABASE gone")
        s = running2.scrape_until(
            lambda s: s.value("pg_connections_login_check_success", target="t") == 0,
            what="the login check to fail",
        )
        assert s.value(LOGIN_FAILURES, target="t", reason="other") >= 1
        assert s.value("pg_up", target="t") == 1
    finally:
        cluster.stop()


def test_kill_restart_and_stop_without_restarting_the_exporter(exporter_for) -> None:
    cluster = new_cluster("18", max_connections=20)
    try:
        running = exporter_for(
            {
                "targets": [
                    {"name": "pg", "dsn": cluster.dsn(host="127.0.0.1"), "connect_timeout": 1}
                ]
            }
        )
        s = running.scrape()
        assert s.value("pg_up", target="pg") == 1
        unreachable_before = s.value(FAILURES, target="pg", reason="unreachable")

        # 1. Killed, as by the OOM killer: down within the connect timeout, never hanging.
        cluster.kill()
        start = time.monotonic()
        s = running.scrape()
        assert time.monotonic() - start < 3
        assert s.value("pg_up", target="pg") == 0
        assert s.get("pg_connections_used", target="pg") is None  # no stale numbers

        # 2. Restarted: back by itself.
        cluster.start()
        s = running.scrape_until(
            lambda s: s.value("pg_up", target="pg") == 1, timeout=30, what="reconnect after kill"
        )
        assert s.value("pg_connections_used", target="pg") == 1

        # 3. Stopped for longer than several scrapes: each scrape answers in time, says down,
        #    and the failures are counted without piling up connection attempts.
        cluster.shutdown()
        scrapes, deadline = 0, time.monotonic() + 4
        while time.monotonic() < deadline:
            start = time.monotonic()
            s = running.scrape({"X-Prometheus-Scrape-Timeout-Seconds": "2"})
            assert time.monotonic() - start < 2
            assert s.value("pg_up", target="pg") == 0
            scrapes += 1
        unreachable = s.value(FAILURES, target="pg", reason="unreachable") - unreachable_before
        assert 1 <= unreachable <= scrapes + 2, (unreachable, scrapes)
        page = http_get(f"{running.url}/")[1]
        assert "cannot connect: unreachable" in page

        # 4. Back again: reconnected, one connection, no restart of the exporter.
        cluster.start()
        running.scrape_until(
            lambda s: s.value("pg_up", target="pg") == 1, timeout=30, what="reconnect after stop"
        )
        assert len(_exporter_backend_pids(cluster)) == 1
    finally:
        cluster.stop()


def test_a_session_ended_between_scrapes_is_replaced_before_the_next_one(exporter_for) -> None:
    """The liveness check sees a session the server ended while idle (terminated, restart,
    idle_session_timeout) and the pool opens a new one: the next scrape is whole, not failed."""
    cluster = new_cluster("18", max_connections=20)
    try:
        running = exporter_for({"targets": [{"name": "pg", "dsn": cluster.dsn(host="127.0.0.1")}]})
        running.scrape_until(lambda s: s.get("pg_up", target="pg") == 1, what="the target up")
        (old,) = _exporter_backend_pids(cluster)
        cluster.execute(f"SELECT pg_terminate_backend({old})")
        wait_until(lambda: old not in _exporter_backend_pids(cluster), what="the session ended")
        for _ in range(3):
            s = running.scrape()
            assert s.value("pg_up", target="pg") == 1
            success = s.by("pg_connections_exporter_query_success", "query", target="pg")
            assert success and set(success.values()) == {1.0}, success
        errors = s.series("pg_connections_exporter_query_errors_total", target="pg")
        assert {v for _, v in errors} == {0.0}
        (new,) = _exporter_backend_pids(cluster)
        assert new != old
        # The exporter's one session in use: exactly so once the test's own observer sessions
        # (which hold a slot until their backend has exited) are gone.
        running.scrape_until(
            lambda s: s.value("pg_connections_used", target="pg") == 1, what="one slot in use"
        )
    finally:
        cluster.stop()


def test_a_server_that_stops_answering_costs_a_scrape_then_gets_a_new_connection(
    exporter_for,
) -> None:
    """A backend that stops answering without closing its socket (stopped here; a TCP proxy
    whose server is gone looks the same: the kernel or the proxy still acknowledges, so neither
    keepalives nor tcp_user_timeout fire) never holds a scrape past its deadline, and once the
    grace after the deadline has passed its connection is cut: the next scrapes are whole again
    on a new session, without restarting the exporter."""
    cluster = new_cluster("15", max_connections=20)
    stopped: int | None = None
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "2"}

    def bounded_scrape() -> Samples:
        start = time.monotonic()
        s = running.scrape(headers)
        assert time.monotonic() - start < 2.5
        return s

    try:
        running = exporter_for({"targets": [{"name": "pg", "dsn": cluster.dsn(host="127.0.0.1")}]})
        running.scrape_until(lambda s: s.get("pg_up", target="pg") == 1, what="the target up")
        (stopped,) = _exporter_backend_pids(cluster)
        os.kill(stopped, signal.SIGSTOP)

        assert bounded_scrape().value("pg_up", target="pg") == 0
        s = wait_until(
            lambda: now if (now := bounded_scrape()).get("pg_up", target="pg") == 1 else None,
            30,
            0.5,
            "a new connection after the silent one was cut",
        )
        success = s.by("pg_connections_exporter_query_success", "query", target="pg")
        assert success and set(success.values()) == {1.0}, success
        assert s.value("pg_connections_exporter_query_errors_total", query="connections",
                       reason="timeout", target="pg") == 1  # fmt: skip
        pids = _exporter_backend_pids(cluster)
        assert stopped in pids and len(pids) == 2, pids  # the stopped one cannot see it yet
        (new,) = set(pids) - {stopped}

        os.kill(stopped, signal.SIGCONT)
        wait_until(lambda: _exporter_backend_pids(cluster) == [new], what="the old session gone")
        stopped = None
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        cluster.stop()


@pytest.fixture
def locked_cluster():
    cluster = new_cluster("18", max_connections=30)
    cluster.execute("CREATE TABLE orders (id int)")
    try:
        yield cluster
    finally:
        cluster.stop()


def test_locks_on_a_catalog_or_a_table_do_not_stall_the_scrape(
    locked_cluster: LocalCluster, exporter_for
) -> None:
    cluster = locked_cluster
    running = exporter_for(
        {
            "targets": [{"name": "pg", "dsn": cluster.dsn()}],
            "settings": {"lock_timeout": "500ms"},
            "queries": [
                {
                    "name": "orders",
                    "sql": "SELECT count(*) AS n FROM orders",
                    "metrics": [{"name": "shop_orders", "help": "Orders.", "value": "n"}],
                },
                {
                    "name": "constant",
                    "sql": "SELECT 1 AS one",
                    "metrics": [{"name": "shop_one", "help": "One.", "value": "one"}],
                },
            ],
        }
    )
    s = running.scrape()
    assert s.value("shop_orders", target="pg") == 0
    header = {"X-Prometheus-Scrape-Timeout-Seconds": "4"}
    errors = "pg_connections_exporter_query_errors_total"

    with Workload(cluster.dsn()) as w:
        # A table a custom query reads: that query times out alone.
        w.hold_lock("orders")
        start = time.monotonic()
        s = running.scrape(header)
        assert time.monotonic() - start < 3.5
        assert s.value("pg_connections_exporter_query_success", query="orders") == 0
        assert s.value(errors, query="orders", reason="timeout") == 1
        assert s.get("shop_orders") is None
        assert s.value("shop_one", target="pg") == 1
        assert s.value("pg_connections_used", target="pg") >= 2
        w.close()

        # pg_authid, which names the roles: the built-ins that need names wait on it, within
        # the deadline; the slot counts read the backends without it and are still reported.
        w.hold_lock("pg_catalog.pg_authid")
        start = time.monotonic()
        s = running.scrape(header)
        assert time.monotonic() - start < 3.5
        assert s.value("pg_up", target="pg") == 1
        assert s.value("pg_connections_exporter_query_success", query="connections") == 0
        assert s.value(errors, query="connections", reason="timeout") == 1
        assert s.value("pg_connections_exporter_query_success", query="connection_slots") == 1
        assert s.value("pg_connections_used", target="pg") >= 2
        assert s.get("pg_connections_utilization_ratio", target="pg") is not None
        assert s.value("shop_one", target="pg") == 1
        assert s.value("shop_orders", target="pg") == 0
    # Released: everything is back in the next scrape.
    s = running.scrape(header)
    assert s.value("pg_connections_exporter_query_success", query="connections") == 1


def test_fifty_concurrent_scrapes_share_one_connection_per_target(
    pg: LocalCluster, exporter_for
) -> None:
    running = exporter_for(
        {
            "targets": [
                {"name": "a", "dsn": pg.dsn()},
                {"name": "b", "dsn": pg.dsn(host="127.0.0.1")},
            ]
        }
    )
    running.scrape()
    barrier = threading.Barrier(50)
    results: list[Samples | BaseException] = []

    def scrape_at_once() -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(3):
                results.append(running.scrape())
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=scrape_at_once) for _ in range(50)]
    for t in threads:
        t.start()
    counts = []
    while any(t.is_alive() for t in threads):
        counts.append(exporter_backends(pg))
    for t in threads:
        t.join()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[0]
    assert len(results) == 150
    assert all(r.value("pg_up", target=t) == 1 for r in results for t in "ab")  # type: ignore[union-attr]
    assert len(counts) > 5 and max(counts) == 2, counts
