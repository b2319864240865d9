"""The exporter against real PostgreSQL 15 and 18: workload, custom queries, one connection."""

from __future__ import annotations

import logging

import psycopg
import pytest

from exporter.db.connection import APPLICATION_NAME
from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload
from tests.helpers import Samples, http_get


def exporter_backends(cluster: LocalCluster) -> int:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_known_workload_shows_in_metrics(pg: LocalCluster, exporter_for) -> None:
    app = "known-workload"
    with Workload(pg.dsn()) as w:
        w.open_many([SessionSpec("idle", application_name=app, host="127.0.0.1")] * 3)
        w.open_many([SessionSpec("idle in transaction", application_name=app)] * 2)
        w.open(SessionSpec("active", application_name=app))
        running = exporter_for({"targets": [{"name": "db", "dsn": pg.dsn()}]})
        s = running.scrape()
        assert s.value("pg_up", target="db") == 1
        by_state = s.by("pg_connections_by_application", "state", application_name=app)
        assert by_state == {"idle": 3, "idle in transaction": 2, "active": 1}
        # The exporter's own backend is not in the breakdown...
        assert not s.series("pg_connections_by_application", application_name=APPLICATION_NAME)
        # ...but its slot counts as used.
        assert s.value("pg_connections_used", target="db") >= 7
        openmetrics = http_get(
            f"{running.url}/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
        )[1]
        assert "# TYPE pg_connections_state_duration_seconds gaugehistogram" in openmetrics


def test_custom_query_and_a_broken_one(pg: LocalCluster, exporter_for) -> None:
    config = {
        "targets": [{"name": "db", "dsn": pg.dsn(), "labels": {"env": "test"}}],
        "collectors": {"disable": ["connection_settings"]},
        "queries": [
            {
                "name": "custom_numbers",
                "help": "numbers",
                "sql": "SELECT g::text AS n, g * 10 AS v FROM generate_series(1, 3) g",
                "metrics": [
                    {"name": "custom_value", "help": "ten times n", "labels": ["n"], "value": "v"},
                    {"name": "custom_sum_total", "help": "sum", "value": "v", "type": "counter"},
                ],
            },
            {
                "name": "custom_broken",
                "sql": "SELECT * FROM no_such_table",
                "metrics": [{"name": "custom_broken_value", "help": "never", "value": "x"}],
            },
            {
                "name": "custom_future",
                "min_version": "99",
                "sql": "SELECT 1 AS x",
                "metrics": [{"name": "custom_future_value", "help": "gated", "value": "x"}],
            },
        ],
    }
    running = exporter_for(config)
    s = running.scrape()
    assert s.by("custom_value", "n", target="db", env="test") == {"1": 10, "2": 20, "3": 30}
    assert s.value("custom_sum_total", target="db") == 60
    assert s.get("custom_broken_value") is None
    assert s.value("pg_connections_exporter_query_success", query="custom_broken") == 0
    assert (
        s.value("pg_connections_exporter_query_errors_total", query="custom_broken", reason="error")
        == 1
    )
    # Every (query, reason) pair starts at 0, so that increase() sees a first failure.
    assert (
        s.value("pg_connections_exporter_query_errors_total", query="connections", reason="timeout")
        == 0
    )
    # The broken query hurts only itself.
    assert s.value("pg_connections_exporter_query_success", query="connections") == 1
    assert s.value("pg_connections_max", target="db", env="test") == 120
    assert s.get("pg_connections_timeout_seconds", setting="statement_timeout") is None
    assert s.get("custom_future_value") is None
    assert s.value("pg_up", target="db") == 1
    again = running.scrape()
    assert (
        again.value(
            "pg_connections_exporter_query_errors_total", query="custom_broken", reason="error"
        )
        == 2
    )


def test_result_lacking_a_metric_column_fails_that_query_each_time(
    pg: LocalCluster, exporter_for
) -> None:
    """A custom query whose result lacks the value column is invalid_result, scrape after
    scrape; once the column appears it succeeds (in that very scrape, although the table's
    change made its prepared plan stale), and when it goes again it fails again."""
    table = "result_shape_test"
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {table}")
        admin.execute(f"CREATE TABLE {table} (k text)")
        admin.execute(f"INSERT INTO {table} VALUES ('x')")
        try:
            running = exporter_for(
                {
                    "targets": [{"name": "db", "dsn": pg.dsn()}],
                    "queries": [
                        {
                            "name": "custom_shape",
                            "sql": f"SELECT * FROM {table}",
                            "metrics": [
                                {
                                    "name": "custom_shape_v",
                                    "help": "v",
                                    "labels": ["k"],
                                    "value": "v",
                                }
                            ],
                        }
                    ],
                }
            )

            def invalid(s: Samples) -> float:
                return s.value(
                    "pg_connections_exporter_query_errors_total",
                    query="custom_shape",
                    reason="invalid_result",
                )

            first, second = running.scrape(), running.scrape()
            assert (invalid(first), invalid(second)) == (1, 2)
            assert second.value("pg_connections_exporter_query_success", query="custom_shape") == 0
            assert second.value("pg_connections_exporter_query_success", query="connections") == 1
            admin.execute(f"ALTER TABLE {table} ADD COLUMN v int DEFAULT 7")
            # The prepared statement's plan is stale now: the query is prepared anew at once.
            ok = running.scrape()
            assert ok.by("custom_shape_v", "k") == {"x": 7}
            assert invalid(ok) == 2
            assert ok.value("pg_connections_exporter_query_success", query="custom_shape") == 1
            admin.execute(f"ALTER TABLE {table} DROP COLUMN v")
            gone = running.scrape()
            assert gone.get("custom_shape_v", k="x") is None
            assert invalid(gone) == 3
        finally:
            admin.execute(f"DROP TABLE IF EXISTS {table}")


def test_landing_page_and_health(pg: LocalCluster, exporter_for) -> None:
    secret = "landing-page-secret-pw"
    running = exporter_for({"targets": [{"name": "db", "dsn": pg.dsn(password=secret)}]})
    running.scrape()
    status, body, _ = http_get(f"{running.url}/")
    assert status == 200
    assert "db" in body and "up" in body and "/metrics" in body
    assert secret not in body and str(pg.socket_dir) not in body
    assert http_get(f"{running.url}/healthz")[0] == 200
    assert http_get(f"{running.url}/nope")[0] == 404


def test_a_query_outside_the_server_versions_is_skipped_and_said_once(
    pg: LocalCluster, exporter_for, caplog: pytest.LogCaptureFixture
) -> None:
    """A server older than a query supports (PostgreSQL 11 for the built-in ones) would get
    fewer metrics and no error: the log names the query and both versions, once."""
    caplog.set_level(logging.INFO)

    def gated(name: str, **gate: str) -> dict[str, object]:
        metric = {"name": f"{name}_x", "help": "x", "value": "x"}
        return {"name": name, "sql": "SELECT 1 AS x", "metrics": [metric], **gate}

    config = {
        "targets": [{"name": "db", "dsn": pg.dsn()}],
        "queries": [gated("too_new", min_version="99"), gated("too_old", max_version="11")],
    }
    running = exporter_for(config)
    running.scrape()
    s = running.scrape()
    assert s.get("too_new_x") is None
    assert s.get("too_old_x") is None
    assert s.value("pg_connections_used", target="db") >= 1
    said = [r.getMessage() for r in caplog.records if "skipped: it is for server" in r.getMessage()]
    assert sorted(said) == [
        f"query too_new skipped: it is for server versions 990000 to any, this server is"
        f" {pg.version_num}",
        f"query too_old skipped: it is for server versions any to 119999, this server is"
        f" {pg.version_num}",
    ]


def test_version_gates_on_every_major(pg_any_major: LocalCluster, exporter_for) -> None:
    """A query for this major alone runs on any of its releases; one ending at the major
    before, or starting at the next, does not."""
    major = pg_any_major.version_num // 10000

    def gated(name: str, **gate: str) -> dict[str, object]:
        metric = {"name": f"{name}_x", "help": "x", "value": "x"}
        return {"name": name, "sql": "SELECT 1 AS x", "metrics": [metric], **gate}

    config = {
        "targets": [{"name": "db", "dsn": pg_any_major.dsn()}],
        "collectors": {"disable": ["connections", "connection_limits", "connection_settings"]},
        "queries": [
            gated("this_major", min_version=str(major), max_version=str(major)),
            gated("until_before", max_version=str(major - 1)),
            gated("from_next", min_version=str(major + 1)),
        ],
    }
    s = exporter_for(config).scrape()
    assert s.value("this_major_x", target="db") == 1
    assert s.get("until_before_x") is None
    assert s.get("from_next_x") is None
