"""Reclaimable slots, idle-in-transaction holders and lock blockers against the truth, read
independently from pg_stat_activity and pg_blocking_pids, on PostgreSQL 15 and 18: exact, zero
when nothing qualifies, and folded past max_series."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from exporter.config.errors import ConfigError
from exporter.config.model import parse_config
from exporter.db.connection import APPLICATION_NAME
from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload
from tests.conftest import new_cluster
from tests.helpers import Samples, wait_until

AGE = 3.0  # seconds: the reclaimable age the tests set (the default is 10 minutes)


def config(dsn: str, age: float | str = AGE) -> dict[str, Any]:
    return {
        "targets": [{"name": "t", "dsn": dsn}],
        "collectors": {"params": {"connections": {"reclaimable_idle_age": age}}},
    }


@pytest.fixture
def observer(pg: LocalCluster) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(
        pg.dsn(application_name="truth-observer"), autocommit=True, row_factory=dict_row
    )
    try:
        yield conn
    finally:
        conn.close()


def sessions(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every client backend but the exporter's and this reader's, with its age in state and
    the pids blocking it."""
    return conn.execute(
        "SELECT pid, usename::text, application_name, coalesce(host(client_addr), 'local')"
        " AS addr, state, wait_event_type,"
        " extract(epoch FROM now() - state_change)::float8 AS in_state,"
        " CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocked_by"
        " FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND pid <> pg_backend_pid() AND application_name <> %s",
        [APPLICATION_NAME],
    ).fetchall()


def reclaimable_truth(rows: list[dict[str, Any]], key: str) -> Counter[str]:
    return Counter(r[key] for r in rows if r["state"] == "idle" and r["in_state"] >= AGE)


def nonzero(s: Samples, name: str, label: str) -> dict[str, float]:
    got = s.by(name, label)
    assert all(got.values()), f"{name}: a series of 0: {got}"
    return got


def test_reclaimable_blockers_and_oldest_match_pg_stat_activity(
    pg: LocalCluster, observer: psycopg.Connection[Any], exporter_for
) -> None:
    pg.execute(
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reclaim_app') THEN"
        " CREATE ROLE reclaim_app LOGIN; END IF; END$$",
        "CREATE TABLE IF NOT EXISTS reclaim_locked (x int)",
        "GRANT SELECT ON reclaim_locked TO reclaim_app",
    )
    with Workload(pg.dsn()) as w:
        w.open_many(
            [SessionSpec("idle", "reclaim_app", application_name="big", host="127.0.0.1")] * 5
            + [SessionSpec("idle", application_name="small", host="::1")] * 2
            + [SessionSpec("idle", application_name="small")]
            + [SessionSpec("idle in transaction", application_name="tx")] * 2
        )
        w.hold_lock("reclaim_locked", SessionSpec("idle in transaction", application_name="mig"))
        running = exporter_for(config(pg.dsn()))
        s0 = running.scrape()
        assert s0.value("pg_connections_reclaimable_idle_age_seconds") == AGE

        def old_enough() -> bool:
            rows = [r for r in sessions(observer) if r["application_name"] in ("big", "small")]
            return len(rows) == 8 and min(r["in_state"] for r in rows) > AGE + 1

        wait_until(old_enough, 30, 0.2, f"the old sessions to be idle for more than {AGE + 1}s")
        # Fresh ones, not reclaimable yet; and two sessions queued behind the lock.
        w.open_many([SessionSpec("idle", "reclaim_app", application_name="big")] * 2)
        for _ in range(2):
            w.wait_for_lock("reclaim_locked", SessionSpec("active", "reclaim_app", "postgres", "w"))
        wait_until(
            lambda: sum(r["wait_event_type"] == "Lock" for r in sessions(observer)) == 2,
            what="the two lock waiters",
        )

        def agreed() -> tuple[Samples, list[dict[str, Any]]]:
            # Sessions of other tests may still be ending: compare until both sides agree.
            s = running.scrape()
            rows = sessions(observer)
            by_app = reclaimable_truth(rows, "application_name")
            assert nonzero(s, "pg_connections_reclaimable_by_application", "application_name") == (
                by_app
            )
            assert nonzero(s, "pg_connections_reclaimable_by_user", "usename") == (
                reclaimable_truth(rows, "usename")
            )
            assert nonzero(s, "pg_connections_reclaimable_by_client", "client_addr") == (
                reclaimable_truth(rows, "addr")
            )
            assert s.value("pg_connections_reclaimable") == sum(by_app.values())
            return s, rows

        s, rows = wait_until(agreed, what="reclaimable sessions to match pg_stat_activity")
        assert s.value("pg_connections_reclaimable_by_application", application_name="big") == 5
        assert s.value("pg_connections_reclaimable_by_application", application_name="small") == 3
        assert s.value("pg_connections_reclaimable_by_client", client_addr="127.0.0.1") >= 5
        assert s.value("pg_connections_reclaimable_by_client", client_addr="::1") >= 2

        # Blockers: every pid pg_blocking_pids names for a waiting client, by its application.
        app_of = {r["pid"]: r["application_name"] for r in rows}
        pairs = {(w_["pid"], b) for w_ in rows if w_["blocked_by"] for b in w_["blocked_by"]}
        blockers = Counter(app_of[b] for b in {b for _, b in pairs})
        blocked = Counter(
            {app: len({w_ for w_, b in pairs if app_of[b] == app}) for app in blockers}
        )
        assert dict(blockers) == {"mig": 1}
        assert dict(blocked) == {"mig": 2}
        assert s.by("pg_connections_blockers_by_application", "application_name") == blockers
        assert s.by("pg_connections_blocked_by_application", "application_name") == blocked
        assert s.value("pg_connections_blockers") == 1
        assert s.value("pg_connections_waiting", wait_event_type="Lock") == 2

        # The oldest idle-in-transaction session of each application that has one.
        oldest: dict[str, float] = {}
        for r in rows:
            if r["state"].startswith("idle in transaction"):
                oldest[r["application_name"]] = max(
                    oldest.get(r["application_name"], 0), r["in_state"]
                )
        got = s.by("pg_connections_idle_in_transaction_oldest_seconds", "application_name")
        assert set(got) == set(oldest) >= {"tx", "mig"}
        for app, truth_max in oldest.items():
            # Read after the scrape: never above the truth, and not more than 5 s below it.
            assert truth_max - 5 <= got[app] <= truth_max + 0.01, (app, got[app], truth_max)


@pytest.mark.parametrize("version", ["15", "18"])
def test_zero_when_nothing_qualifies(version: str, exporter_for) -> None:
    cluster = new_cluster(version, max_connections=20)
    try:
        with Workload(cluster.dsn()) as w:
            w.open_many([SessionSpec("idle", application_name="fresh")] * 3)
            running = exporter_for(config(cluster.dsn(), "1h"))
            s = running.scrape()
            assert s.value("pg_connections_reclaimable_idle_age_seconds") == 3600
            assert s.value("pg_connections_reclaimable") == 0
            # The total is 0; no holder has a series (none has anything reclaimable).
            for holders in ("application", "user", "client"):
                assert s.series(f"pg_connections_reclaimable_by_{holders}") == []
            assert s.value("pg_connections_blockers") == 0
            assert s.series("pg_connections_blockers_by_application") == []
            assert s.series("pg_connections_idle_in_transaction_oldest_seconds") == []
    finally:
        cluster.stop()


def test_folded_past_max_series(pg: LocalCluster, exporter_for) -> None:
    """55 applications with reclaimable sessions: the 50 largest are kept and the rest is
    application_name="other", so the total still adds up."""
    with Workload(pg.dsn()) as w:
        w.open_many([SessionSpec("idle", application_name="fold-big")] * 4)
        w.open_many([SessionSpec("idle", application_name=f"fold-{i:02d}") for i in range(55)])
        running = exporter_for(config(pg.dsn(), "1s"))
        time.sleep(1.5)

        def settled() -> Samples:
            s = running.scrape()
            got = s.by("pg_connections_reclaimable_by_application", "application_name")
            assert len(got) == 51, len(got)
            assert sum(got.values()) == s.value("pg_connections_reclaimable")
            return s

        s = wait_until(settled, what="the reclaimable breakdown to fold")
        got = s.by("pg_connections_reclaimable_by_application", "application_name")
        assert got["fold-big"] == 4  # the largest is never folded
        assert got["other"] >= 5
        assert len(s.by("pg_connections_reclaimable_by_user", "usename")) <= 51


def test_reclaimable_age_takes_a_duration_and_refuses_nonsense() -> None:
    parsed = parse_config(config("host=db", "10m"), "c.yml")
    (connections,) = [q for q in parsed.queries if q.name == "connections"]
    assert connections.params["reclaimable_idle_age"] == 600
    default = parse_config({"targets": [{"name": "t", "dsn": "host=db"}]}, "c.yml")
    (connections,) = [q for q in default.queries if q.name == "connections"]
    assert connections.params["reclaimable_idle_age"] == 600  # the guide's 10 minutes
    with pytest.raises(ConfigError) as err:
        parse_config(config("host=db", "soon"), "c.yml")
    assert "c.yml: collectors.params.connections.reclaimable_idle_age: expected a duration" in (
        str(err.value)
    )


def test_a_prepared_transaction_is_named_as_the_blocker(exporter_for) -> None:
    """pg_blocking_pids names a prepared transaction as pid 0: no session to terminate, so the
    blocker is application_name="prepared transaction" (COMMIT or ROLLBACK PREPARED it)."""
    cluster = new_cluster("15", max_connections=20, max_prepared_transactions=2)
    try:
        cluster.execute("CREATE TABLE held (x int)")
        with psycopg.connect(cluster.dsn()) as conn:
            conn.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
            conn.execute("PREPARE TRANSACTION 'forgotten'")
        try:
            with Workload(cluster.dsn()) as w:
                w.wait_for_lock("held", SessionSpec("active", application_name="victim"))
                running = exporter_for(config(cluster.dsn()))
                s = running.scrape_until(
                    lambda s: s.get("pg_connections_blockers") == 1, what="the blocker"
                )
                assert s.by("pg_connections_blockers_by_application", "application_name") == {
                    "prepared transaction": 1
                }
                assert s.by("pg_connections_blocked_by_application", "application_name") == {
                    "prepared transaction": 1
                }
        finally:
            cluster.execute("ROLLBACK PREPARED 'forgotten'")
    finally:
        cluster.stop()
