"""PgBouncer targets against a real PgBouncer (transaction pooling, a pool of 2) in front of a
real PostgreSQL: queueing clients, the limits, the counters, version-dependent columns, and a
hung PgBouncer."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

from exporter.config.model import Target, builtin_queries
from exporter.db.connection import APPLICATION_NAME, TargetConnection
from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload
from tests.helpers import Samples, http_get
from tests.pgbouncer_server import ADMIN_USER, PgBouncer

POOL = {"database": "app", "user": "postgres"}


def targets(bouncer: PgBouncer, pg: LocalCluster) -> list[dict[str, Any]]:
    return [
        {"name": "bouncer", "kind": "pgbouncer", "dsn": bouncer.dsn()},
        {"name": "db", "dsn": pg.dsn()},
    ]


def app_pool(bouncer: PgBouncer) -> dict[str, Any]:
    (row,) = [r for r in bouncer.admin("SHOW POOLS") if r["database"] == "app"]
    return row


def test_queueing_clients_show_as_waiting_and_clear_when_released(
    pg: LocalCluster, pgbouncer_for, exporter_for
) -> None:
    bouncer = pgbouncer_for(pg)
    table = f"gate_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE TABLE {table} (id int)")
    running = exporter_for({"targets": targets(bouncer, pg)})

    s = running.scrape_until(
        lambda s: s.get("pgbouncer_max_client_connections", target="bouncer") is not None,
        what="the first PgBouncer scrape",
    )
    assert s.value("pg_up", target="bouncer") == 1
    assert s.value("pgbouncer_max_client_connections", target="bouncer") == 50
    assert s.value("pgbouncer_default_pool_size", target="bouncer") == 2
    assert s.value("pgbouncer_database_pool_size", target="bouncer", database="app") == 2
    assert s.value("pgbouncer_database_max_server_connections", database="app") == 0
    # Each kind of target runs only its own queries.
    ran = {
        t: set(s.by("pg_connections_exporter_query_success", "query", target=t))
        for t in ("bouncer", "db")
    }
    assert ran == {
        kind_target: {q.name for q in builtin_queries() if q.target_kind == kind}
        for kind_target, kind in (("bouncer", "pgbouncer"), ("db", "postgres"))
    }
    assert not [n for n, ls, _ in s.rows if n.startswith("pgbouncer_") and ls["target"] == "db"]
    assert s.value("pg_connections_used", target="db") >= 1
    assert s.get("pgbouncer_pool_client_waiting_connections", target="bouncer", **POOL) in (None, 0)

    with Workload(pg.dsn()) as direct, Workload(bouncer.dsn("postgres", "app")) as clients:
        holder = direct.hold_lock(table)
        for _ in range(5):
            clients.wait_for_lock(table, SessionSpec("active", dbname="app"))

        # 2 clients hold the pool's 2 server connections (blocked on the lock), 3 queue.
        def queued(s: Samples) -> bool:
            return (
                s.get("pgbouncer_pool_client_waiting_connections", target="bouncer", **POOL) == 3
                and s.get("pgbouncer_pool_server_active_connections", target="bouncer", **POOL) == 2
                and (s.get("pgbouncer_pool_max_wait_seconds", target="bouncer", **POOL) or 0) > 0
            )

        first = running.scrape_until(queued, what="3 waiting clients")
        truth = app_pool(bouncer)
        assert (truth["cl_waiting"], truth["sv_active"]) == (3, 2)
        waited = first.value("pgbouncer_pool_max_wait_seconds", target="bouncer", **POOL)
        # The same clock as PgBouncer's: the truth, read after the scrape, is not below it.
        assert waited <= truth["maxwait"] + truth["maxwait_us"] / 1e6

        later = running.scrape_until(
            lambda s: (
                queued(s)
                and s.value("pgbouncer_pool_max_wait_seconds", target="bouncer", **POOL)
                > waited + 0.3
            ),
            what="the longest wait to grow",
        )
        assert later.value("pgbouncer_pool_client_active_connections", **POOL) == 2
        # 5 app clients and the exporter's own connection count against max_client_conn.
        assert later.value("pgbouncer_client_connections", target="bouncer") == 6
        assert later.value("pgbouncer_server_connections", target="bouncer") == 2
        assert later.value("pgbouncer_database_server_connections", database="app") == 2

        holder.commit()
        released = running.scrape_until(
            lambda s: (
                s.get("pgbouncer_pool_client_waiting_connections", **POOL) == 0
                and s.get("pgbouncer_pool_max_wait_seconds", **POOL) == 0
                and s.get("pgbouncer_pool_server_active_connections", **POOL) == 0
            ),
            what="the queue to drain",
        )
        # The clients are still connected, idle between transactions.
        assert released.value("pgbouncer_pool_client_active_connections", **POOL) == 5
        assert released.value("pgbouncer_pool_server_idle_connections", **POOL) == 2
        # Every client waited: 3 of them at least `waited` seconds each.
        assert released.value("pgbouncer_stats_client_wait_seconds_total", database="app") >= (
            3 * waited
        )
        assert released.value("pgbouncer_stats_queries_total", database="app") >= 5

    gone = running.scrape_until(
        lambda s: s.get("pgbouncer_pool_client_active_connections", **POOL) == 0,
        what="the clients to leave",
    )
    assert gone.value("pgbouncer_client_connections", target="bouncer") == 1  # the exporter


def test_the_exporter_is_one_named_client_of_the_admin_console(
    pg: LocalCluster, pgbouncer_for, exporter_for
) -> None:
    bouncer = pgbouncer_for(pg)
    running = exporter_for({"targets": targets(bouncer, pg)})
    for _ in range(3):
        running.scrape()
    clients = [c for c in bouncer.admin("SHOW CLIENTS") if c["user"] != ADMIN_USER]
    assert [(c["database"], c["application_name"]) for c in clients] == [
        ("pgbouncer", APPLICATION_NAME)
    ]


def test_columns_this_version_lacks_leave_out_only_their_metrics(
    pg: LocalCluster, pgbouncer_for, exporter_for
) -> None:
    bouncer = pgbouncer_for(pg)
    custom = {
        "name": "pools_custom",
        "target_kind": "pgbouncer",
        "sql": "SHOW POOLS",
        "metrics": [
            {"name": "custom_waiting", "help": "h", "labels": ["database"], "value": "cl_waiting"},
            {"name": "custom_absent", "help": "h", "value": "cl_not_in_any_version"},
            {
                "name": "custom_renamed",
                "help": "h",
                "labels": ["database"],
                "value": ["cl_not_in_any_version", "sv_idle"],
            },
        ],
    }
    running = exporter_for({"targets": targets(bouncer, pg), "queries": [custom]})
    # Pools exist once a client connects: the admin console's own (the exporter) is there.
    s = running.scrape_until(
        lambda s: s.get("custom_waiting", database="pgbouncer") is not None, what="the custom query"
    )
    assert s.value("custom_waiting", target="bouncer", database="pgbouncer") == 0
    assert s.value("custom_renamed", target="bouncer", database="pgbouncer") == 0
    assert s.get("custom_absent") is None
    assert s.value("pg_connections_exporter_query_success", query="pools_custom") == 1
    assert sum(v for _, v in s.series("pg_connections_exporter_query_errors_total")) == 0
    # The built-ins follow what this PgBouncer has: present exactly when the column is.
    stats_columns = set(bouncer.admin("SHOW STATS")[0])
    assignments = s.get("pgbouncer_stats_server_assignments_total", database="pgbouncer")
    assert (assignments is not None) == ("total_server_assignment_count" in stats_columns)
    user_columns = set(bouncer.admin("SHOW USERS")[0])
    limit = s.get("pgbouncer_user_max_server_connections", user="postgres")
    assert (limit is not None) == ("max_user_connections" in user_columns)
    assert s.value("pg_connections_exporter_query_success", query="pgbouncer_users") == 1


def test_a_hung_pgbouncer_is_bounded_client_side(
    pg: LocalCluster, pgbouncer_for, exporter_for
) -> None:
    """Without the watchdog the liveness check would wait for the whole scrape deadline (8 s):
    with it, the check gives up after query_timeout and the reconnect after connect_timeout."""
    bouncer = pgbouncer_for(pg)
    config = {
        "targets": targets(bouncer, pg),
        "settings": {"query_timeout": "1s", "scrape_timeout": "8s"},
    }
    config["targets"][0]["connect_timeout"] = "1s"
    running = exporter_for(config)
    running.scrape_until(lambda s: s.get("pg_up", target="bouncer") == 1, what="pg_up 1")
    bouncer.pause_process()
    try:
        started = time.monotonic()
        s = running.scrape()
        took = time.monotonic() - started
        assert took < 3.5, f"a scrape of a hung PgBouncer took {took:.1f}s"
        assert s.value("pg_up", target="bouncer") == 0
        assert s.value("pg_up", target="db") == 1
        assert s.get("pgbouncer_default_pool_size") is None
    finally:
        bouncer.resume_process()
    s = running.scrape_until(lambda s: s.get("pg_up", target="bouncer") == 1, what="reconnect")
    assert s.value("pgbouncer_default_pool_size", target="bouncer") == 2


def test_the_watchdog_ends_a_query_pgbouncer_does_not_answer(pg: LocalCluster, pgbouncer_for):
    bouncer = pgbouncer_for(pg)
    target = Target("bouncer", bouncer.dsn(), {}, 1.0, "pgbouncer")
    connection = TargetConnection(target, statement_timeout=1.0, lock_timeout=1.0)

    async def check() -> None:
        conn = await psycopg.AsyncConnection.connect(
            bouncer.dsn(), autocommit=True, cursor_factory=psycopg.AsyncClientCursor
        )
        try:
            with connection.watchdog(conn, 5.0) as dog:
                assert await (await conn.execute("SHOW VERSION")).fetchone()
            assert not dog.fired and not conn.closed
            bouncer.pause_process()
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError), connection.watchdog(conn, 0.5) as dog:
                await conn.execute("SHOW POOLS")
            assert 0.5 <= time.monotonic() - started < 2
            assert dog.fired and conn.closed
        finally:
            bouncer.resume_process()
            await conn.close()

    asyncio.run(check())


def test_a_postgres_target_behind_pgbouncer_that_drops_prepared_statements(
    pg: LocalCluster, pgbouncer_for, exporter_for
) -> None:
    """The scrape queries run prepared; a PgBouncer that resets the server connection after
    every transaction (as a pool handing it to another client would) loses them: the query
    that finds its statement gone runs again unprepared, and no scrape fails."""
    bouncer = pgbouncer_for(pg, server_reset_query="DISCARD ALL", server_reset_query_always=1)
    running = exporter_for({"targets": [{"name": "db", "dsn": bouncer.dsn("postgres", "app")}]})
    queries = {q.name for q in builtin_queries() if q.target_kind == "postgres"}
    running.scrape_until(lambda s: s.get("pg_up", target="db") == 1, what="the target up")
    for _ in range(4):
        s = running.scrape()
        success = s.by("pg_connections_exporter_query_success", "query", target="db")
        assert success == dict.fromkeys(queries, 1.0)
    errors = s.series("pg_connections_exporter_query_errors_total", target="db")
    assert errors and {v for _, v in errors} == {0.0}
    assert s.value("pg_connections_used", target="db") >= 1


def test_landing_page_shows_pgbouncer_version_as_pgbouncer_writes_it(
    pg: LocalCluster, pgbouncer_for, exporter_for
) -> None:
    """The target kind formats the version: PgBouncer's own `SHOW VERSION` number (1.18.0),
    not PostgreSQL's major.minor reading of it (1.1800); and no /sessions link for it."""
    bouncer = pgbouncer_for(pg)
    running = exporter_for({"targets": targets(bouncer, pg), "sessions_page": True})
    running.scrape_until(
        lambda s: s.get("pg_up", target="bouncer") == 1 and s.get("pg_up", target="db") == 1,
        what="both targets up",
    )
    (row,) = bouncer.admin("SHOW VERSION")
    said = row["version"].split()[-1]  # "PgBouncer 1.18.0"
    assert said.count(".") == 2, row
    status, body, _ = http_get(f"{running.url}/")
    assert status == 200, body
    bouncer_row = next(r for r in body.split("<tr>") if "<td>bouncer</td>" in r)
    assert f"server {said}<" in bouncer_row, bouncer_row
    assert "/sessions" not in bouncer_row
    db_row = next(r for r in body.split("<tr>") if ">db</a></td>" in r)
    assert f"server {pg.version_num // 10000}." in db_row and "/sessions?target=db" in db_row
