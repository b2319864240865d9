"""Every saturation metric against the truth, computed independently from pg_stat_activity,
on every supported PostgreSQL major (12-18)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from exporter.db.connection import APPLICATION_NAME
from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload
from tests.conftest import ALL_MAJORS, new_cluster
from tests.helpers import Samples, wait_until

STATES = [
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
]


@pytest.fixture
def pg(pg_any_major: LocalCluster) -> LocalCluster:
    """This suite runs on the shared server of every supported major, not only 15 and 18."""
    return pg_any_major


@pytest.fixture
def observer(pg: LocalCluster) -> Iterator[psycopg.Connection[Any]]:
    """One superuser session that reads the truth for the whole test.

    A session opened and closed for each reading would still be ending when the exporter
    scrapes; this one stays, and between readings it is idle, which is how the truth shows it.
    """
    conn = psycopg.connect(
        pg.dsn(application_name="truth-observer"), autocommit=True, row_factory=dict_row
    )
    try:
        yield conn
    finally:
        conn.close()


def truth(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The numbers, from pg_stat_activity as the superuser; this reading session as idle."""
    rows = conn.execute(
        "SELECT *, host(client_addr) AS addr,"
        " extract(epoch FROM now() - state_change)::float8 AS in_state,"
        " pid = pg_backend_pid() AS me FROM pg_stat_activity"
    ).fetchall()
    for r in rows:
        if r["me"]:
            r.update(state="idle", wait_event_type="Client", in_state=0.0)
    settings = conn.execute(
        "SELECT name, setting::int AS v FROM pg_settings WHERE name IN"
        " ('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
    ).fetchall()
    db_limits = conn.execute(
        "SELECT datname, datconnlimit FROM pg_database WHERE datconnlimit >= 0"
    ).fetchall()
    role_limits = conn.execute(
        "SELECT rolname, rolconnlimit FROM pg_roles WHERE rolconnlimit >= 0 AND rolcanlogin"
    ).fetchall()
    clients = [r for r in rows if r["backend_type"] == "client backend"]
    others = [r for r in clients if r["application_name"] != APPLICATION_NAME]
    s = {r["name"]: r["v"] for r in settings}
    return {
        "others": others,
        "clients": clients,
        "max": s["max_connections"],
        "su_reserved": s["superuser_reserved_connections"],
        "reserved": s.get("reserved_connections", 0),
        "db_limits": {r["datname"]: r["datconnlimit"] for r in db_limits},
        "role_limits": {r["rolname"]: r["rolconnlimit"] for r in role_limits},
    }


def by(rows: list[dict[str, Any]], *keys: str) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(r[k] for k in keys) for r in rows)


def metric_pairs(s: Samples, name: str, label: str) -> Counter[tuple[str, str]]:
    return Counter({(ls[label], ls["state"]): v for ls, v in s.series(name) if v})


@pytest.fixture
def workload_cluster(pg: LocalCluster):
    pg.execute(
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_limited') THEN"
        " CREATE ROLE app_limited LOGIN CONNECTION LIMIT 4; CREATE ROLE app_other LOGIN;"
        " END IF; END$$",
        "CREATE TABLE IF NOT EXISTS locked_table (x int)",
        "GRANT SELECT ON locked_table TO app_other",
    )
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'limited_db'").fetchone():
            conn.execute("CREATE DATABASE limited_db CONNECTION LIMIT 7")
    return pg


def open_mixed_workload(w: Workload) -> None:
    w.open_many(
        [SessionSpec("idle", "app_limited", "limited_db", "web", "127.0.0.1")] * 3
        + [SessionSpec("idle in transaction", "app_limited", "postgres", "web", "::1")]
        + [SessionSpec("idle", "app_other", "limited_db", "batch", "::1")] * 2
        + [SessionSpec("active", "app_other", "postgres", "batch", "127.0.0.1")] * 2
        + [SessionSpec("idle in transaction (aborted)", "app_other", "postgres", "report")]
        + [SessionSpec("disabled", "postgres", "postgres", "admin")]
        + [SessionSpec("idle", "postgres", "limited_db", "")] * 2
    )
    w.hold_lock("locked_table", SessionSpec("idle in transaction", application_name="migrate"))
    w.wait_for_lock("locked_table", SessionSpec("active", "app_other", application_name="batch"))


def test_every_metric_matches_pg_stat_activity(
    workload_cluster: LocalCluster, observer: psycopg.Connection[Any], exporter_for
) -> None:
    pg = workload_cluster
    with Workload(pg.dsn()) as w:
        open_mixed_workload(w)
        running = exporter_for({"targets": [{"name": "t", "dsn": pg.dsn()}]})
        running.scrape()  # the exporter's own backend now exists
        wait_until(
            lambda: by(truth(observer)["others"], "wait_event_type")[("Lock",)] == 1,
            what="the lock waiter",
        )
        t = truth(observer)
        s = running.scrape()
        others = t["others"]

        # States: all six zero-filled, PostgreSQL's own words.
        assert s.by("pg_connections", "state") == {
            st: by(others, "state").get((st,), 0) for st in STATES
        }
        # Every breakdown, label by label.
        assert metric_pairs(s, "pg_connections_by_database", "datname") == by(
            others, "datname", "state"
        )
        assert metric_pairs(s, "pg_connections_by_user", "usename") == by(
            others, "usename", "state"
        )
        assert metric_pairs(s, "pg_connections_by_application", "application_name") == by(
            others, "application_name", "state"
        )
        clients = by([{**r, "addr": r["addr"] or "local"} for r in others], "addr", "state")
        assert metric_pairs(s, "pg_connections_by_client", "client_addr") == clients
        assert {"127.0.0.1", "::1", "local"} <= {k[0] for k in clients}
        waiting = Counter(
            r["wait_event_type"] for r in others if r["wait_event_type"] not in (None, "Client")
        )
        assert {
            k: v for k, v in s.by("pg_connections_waiting", "wait_event_type").items() if v
        } == dict(waiting)
        assert waiting["Lock"] == 1

        # Limits and slots.
        used = len(t["clients"])
        assert used == len(others) + 1  # the exporter's slot counts
        usable = t["max"] - t["su_reserved"] - t["reserved"]
        assert s.value("pg_connections_max") == t["max"]
        assert s.value("pg_connections_superuser_reserved") == t["su_reserved"]
        assert s.value("pg_connections_reserved") == t["reserved"]
        assert s.value("pg_connections_used") == used
        assert s.value("pg_connections_available") == usable - used
        assert s.value("pg_connections_utilization_ratio") == pytest.approx(used / usable)
        assert s.value("pg_connections_by_backend_type", backend_type="client backend") == used
        assert s.value("pg_database_connection_limit", datname="limited_db") == 7
        assert s.value("pg_database_connection_limit_used", datname="limited_db") == sum(
            1 for r in t["clients"] if r["datname"] == "limited_db"
        )
        assert s.value("pg_role_connection_limit", rolname="app_limited") == 4
        assert s.value("pg_role_connection_limit_used", rolname="app_limited") == 4
        assert set(s.by("pg_role_connection_limit", "rolname")) == set(t["role_limits"])
        assert set(s.by("pg_database_connection_limit", "datname")) == set(t["db_limits"])

        # Durations: never less than the truth read just before, never more than time since.
        for state in ("idle", "active", "idle in transaction"):
            truth_max = max(r["in_state"] for r in others if r["state"] == state)
            got = s.value("pg_connections_max_state_duration_seconds", state=state)
            assert truth_max - 0.01 <= got <= truth_max + 5, (state, got, truth_max)
        assert (
            s.value("pg_connections_max_state_duration_seconds", state="fastpath function call")
            == 0
        )
        assert s.value("pg_connections_state_hidden") == 0


def test_duration_histogram_buckets(
    pg: LocalCluster, observer: psycopg.Connection[Any], exporter_for
) -> None:
    config = {
        "targets": [{"name": "t", "dsn": pg.dsn()}],
        "collectors": {"params": {"connections": {"duration_buckets": [2, 3600]}}},
    }
    with Workload(pg.dsn()) as w:
        w.open_many([SessionSpec("idle", application_name="old")] * 3)
        w.open(SessionSpec("idle in transaction", application_name="old"))
        running = exporter_for(config)

        def old_enough() -> bool:
            rows = truth(observer)["others"]
            return min(r["in_state"] for r in rows if r["application_name"] == "old") > 3

        wait_until(old_enough, 30, 0.2, "the old sessions to be idle for more than 3 s")
        base = Counter(r["state"] for r in truth(observer)["others"] if r["in_state"] > 2)
        w.open_many([SessionSpec("idle", application_name="new")] * 2)
        s = running.scrape()
        buckets = {
            (ls["state"], ls["le"]): v
            for ls, v in s.series("pg_connections_state_duration_seconds_bucket")
        }
        total = Counter(r["state"] for r in truth(observer)["others"])
        for state in STATES:
            assert buckets[(state, "+Inf")] == total.get(state, 0), state
            assert buckets[(state, "3600.0")] == total.get(state, 0), state
            # Sessions in state for more than 2 s are the ones above the 2 s bound.
            assert total.get(state, 0) - buckets[(state, "2.0")] == base.get(state, 0), state
        assert buckets[("idle", "+Inf")] - buckets[("idle", "2.0")] >= 3


def test_connection_ages_match_pg_stat_activity(
    workload_cluster: LocalCluster, observer: psycopg.Connection[Any], exporter_for
) -> None:
    """The young connections by application and the age histogram, against the ages read
    independently (backend_start), with no session near a bound: the old ones are past it
    before the new ones open."""
    young = 5
    config = {
        "targets": [{"name": "t", "dsn": workload_cluster.dsn()}],
        "collectors": {
            "params": {"connection_age": {"young_seconds": young, "age_buckets": [young, 3600]}}
        },
    }

    def ages() -> list[dict[str, Any]]:
        rows = truth(observer)["others"]
        now = observer.execute("SELECT now() AS now").fetchone()["now"]
        return [{**r, "age": (now - r["backend_start"]).total_seconds()} for r in rows]

    with Workload(workload_cluster.dsn()) as w:
        open_mixed_workload(w)
        running = exporter_for(config)
        running.scrape()  # the exporter's own backend now exists
        wait_until(
            lambda: min(r["age"] for r in ages()) > young + 1, 30, 0.2, "sessions past young"
        )
        w.open_many(
            [SessionSpec("idle", application_name="reconnector")] * 3
            + [SessionSpec("idle in transaction", application_name="web")]
        )
        s = running.scrape()
        rows = ages()
        new = [r for r in rows if r["age"] < young]
        assert len(new) == 4 and max(r["age"] for r in new) < young - 1, "too slow to tell"
        expected = Counter({r["application_name"]: 0 for r in rows})
        expected.update(r["application_name"] for r in new)
        assert s.by("pg_connections_young_by_application", "application_name") == expected
        assert expected["reconnector"] == 3 and expected["web"] == 1 and expected["batch"] == 0
        assert s.value("pg_connections_young_age_seconds") == young
        buckets = s.by("pg_connections_age_seconds_bucket", "le")
        assert buckets == {"5.0": 4, "3600.0": len(rows), "+Inf": len(rows)}
        total_age = sum(r["age"] for r in rows)  # read after the scrape: a little more
        got = s.value("pg_connections_age_seconds_gsum")
        assert total_age - 2 * len(rows) <= got <= total_age


def test_role_without_pg_monitor_is_told_not_zeros(
    pg: LocalCluster,
    observer: psycopg.Connection[Any],
    exporter_for,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pg.execute(
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'plain_monitor') THEN"
        " CREATE ROLE plain_monitor LOGIN; END IF; END$$"
    )
    with Workload(pg.dsn()) as w:
        w.open_many([SessionSpec("idle in transaction", application_name="hidden")] * 2)
        caplog.set_level(logging.WARNING)
        running = exporter_for({"targets": [{"name": "t", "dsn": pg.dsn(user="plain_monitor")}]})
        running.scrape()

        def agreed() -> tuple[Samples, int] | None:
            # Every other session belongs to another role; sessions of earlier tests may still
            # be ending, so compare until both sides agree.
            hidden = len(truth(observer)["others"])
            s = running.scrape()
            got = s.value("pg_connections_state_hidden")
            assert got == hidden, (
                got,
                [(r["usename"], r["application_name"]) for r in truth(observer)["others"]],
            )
            return s, hidden

        s, hidden = wait_until(agreed, what="hidden sessions to match pg_stat_activity")
        assert hidden >= 2
        # Slots are still counted: the hidden sessions, the observer and the exporter itself.
        assert s.value("pg_connections_used") == hidden + 1
        assert s.value("pg_connections", state="unknown") == hidden
        assert s.value("pg_connections", state="idle in transaction") == 0
        warnings = [r for r in caplog.records if "cannot see the state" in r.getMessage()]
        assert len(warnings) == 1  # said once, not every scrape


@pytest.mark.parametrize("major", ALL_MAJORS)
def test_saturated_server(major: str, exporter_for) -> None:
    """Full to the last ordinary slot: reserved_connections (16+) on top of the superuser
    ones where the version has it, and only the superuser ones before."""
    reserved = 2 if int(major) >= 16 else 0
    settings: dict[str, object] = {"max_connections": 12, "superuser_reserved_connections": 2}
    if reserved:
        settings["reserved_connections"] = reserved
    cluster = new_cluster(major, **settings)
    try:
        cluster.execute("CREATE ROLE app LOGIN")
        usable = 12 - 2 - reserved
        running = exporter_for({"targets": [{"name": "t", "dsn": cluster.dsn()}]})
        assert running.scrape().value("pg_connections_used") == 1
        with Workload(cluster.dsn()) as w:
            for _ in range(usable - 1):
                w.open(SessionSpec("idle", user="app", application_name="filler"))
            with pytest.raises(psycopg.OperationalError) as refused:
                w.open(SessionSpec("idle", user="app"))
            assert "reserved" in str(refused.value) or "too many" in str(refused.value)
            start = time.monotonic()
            assert running.scrape().value("pg_up") == 1
            assert time.monotonic() - start < 5
            # The refused attempt's backend holds a slot until it has exited, which under load
            # is after its client saw the refusal: the figures are exact once it is gone.
            s = running.scrape_until(
                lambda s: s.value("pg_connections_used") == usable,
                what="the refused attempt's backend to exit",
            )
            assert s.value("pg_connections_utilization_ratio") == 1.0
            assert s.value("pg_connections_available") == 0
            assert s.value("pg_connections_used") == usable
            assert s.value("pg_connections_reserved") == reserved
            assert (
                s.value("pg_connections_by_application", application_name="filler", state="idle")
                == usable - 1
            )
        after = running.scrape_until(
            lambda s: s.value("pg_connections_used") == 1, what="the slots to be released"
        )
        assert after.value("pg_connections_available") == usable - 1
    finally:
        cluster.stop()


def test_every_backend_type_matches_pg_stat_activity(
    pg: LocalCluster, observer: psycopg.Connection[Any], exporter_for
) -> None:
    """The background processes differ between majors (18 adds io workers): every one is
    counted under the name pg_stat_activity gives it, on every major."""
    running = exporter_for({"targets": [{"name": "t", "dsn": pg.dsn()}]})
    running.scrape()

    def agreed() -> Samples:
        before = by(
            observer.execute("SELECT backend_type FROM pg_stat_activity").fetchall(),
            "backend_type",
        )
        s = running.scrape()
        after = by(
            observer.execute("SELECT backend_type FROM pg_stat_activity").fetchall(),
            "backend_type",
        )
        # Autovacuum workers come and go: compare when nothing changed around the scrape.
        assert before == after
        got = {k: v for k, v in s.by("pg_connections_by_backend_type", "backend_type").items()}
        assert got == {k[0]: n for k, n in before.items()}, (got, before)
        return s

    s = wait_until(agreed, what="backend types to match pg_stat_activity")
    types = set(s.by("pg_connections_by_backend_type", "backend_type"))
    assert {"client backend", "autovacuum launcher", "checkpointer"} <= types
    assert ("io worker" in types) == (pg.version_num >= 180000)


def test_session_ending_timeouts_are_the_settings_the_version_has(
    pg: LocalCluster, observer: psycopg.Connection[Any], exporter_for
) -> None:
    """idle_session_timeout exists from 14 on: reported there, left out before, not made up."""
    running = exporter_for({"targets": [{"name": "t", "dsn": pg.dsn()}]})
    s = running.scrape()
    truth_rows = observer.execute(
        "SELECT name, setting::float8 * CASE unit WHEN 'ms' THEN 0.001 WHEN 'min' THEN 60"
        " ELSE 1 END AS seconds FROM pg_settings WHERE name IN"
        " ('idle_in_transaction_session_timeout', 'idle_session_timeout', 'statement_timeout')"
    ).fetchall()
    want = {r["name"]: r["seconds"] for r in truth_rows}
    assert s.by("pg_connections_timeout_seconds", "setting") == want
    assert ("idle_session_timeout" in want) == (pg.version_num >= 140000)
    assert {"idle_in_transaction_session_timeout", "statement_timeout"} <= set(want)
