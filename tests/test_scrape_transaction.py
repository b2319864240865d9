"""A scrape's queries share one read-only transaction: one snapshot of the backends, and a
failing query still fails alone, with the session's statement_timeout kept track of."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg

from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload
from tests.helpers import Samples, wait_until

BUILT_INS = [
    "connections",
    "connection_slots",
    "connection_limits",
    "connection_settings",
    "session_statistics",
    "connection_age",
    "memory_settings",
]


def test_used_equals_the_breakdown_while_sessions_come_and_go(
    pg: LocalCluster, exporter_for
) -> None:
    """connections and connection_slots read the same backends: used is the breakdown's sum
    plus the exporter's own slot in every scrape, however fast sessions connect and leave."""
    running = exporter_for({"targets": [{"name": "db", "dsn": pg.dsn()}]})
    # Sessions connecting and leaving as fast as they can, from other processes (no GIL
    # shared with the exporter), until stdin closes.
    churn = (
        "import sys, threading, psycopg\n"
        "def run():\n"
        "    while True:\n"
        f"        psycopg.connect({pg.dsn()!r}, application_name='churn').close()\n"
        "for _ in range(4): threading.Thread(target=run, daemon=True).start()\n"
        "sys.stdin.read()\n"
    )
    churners = [
        subprocess.Popen([sys.executable, "-c", churn], stdin=subprocess.PIPE) for _ in range(2)
    ]
    try:
        with Workload(pg.dsn()) as w:
            w.open_many([SessionSpec("idle", application_name="steady")] * 5)
            churned = 0.0
            scrapes = 0
            # 60 scrapes at least, and on until the churners (other processes, slow to start
            # on a loaded machine) have been seen, for 60 s at most.
            give_up = time.monotonic() + 60
            while scrapes < 60 or (churned == 0 and time.monotonic() < give_up):
                scrapes += 1
                s = running.scrape()
                breakdown = sum(v for _, v in s.series("pg_connections", target="db"))
                assert s.value("pg_connections_used", target="db") == breakdown + 1
                by_db = sum(v for _, v in s.series("pg_connections_by_database", target="db"))
                assert by_db == breakdown
                churned += s.by("pg_connections_by_application", "application_name").get("churn", 0)
    finally:
        for p in churners:
            p.kill()
            p.wait(10)
    # The sessions did come and go while the scrapes read them.
    assert churned > 0


def test_a_failed_query_is_rolled_back_alone_and_the_timeout_bookkeeping_follows(
    pg: LocalCluster, exporter_for
) -> None:
    """A query that fails after its statement_timeout was SET inside the transaction: the
    rollback reverts the SET, so the next query with that timeout must SET it again."""
    seconds = "SELECT extract(epoch FROM current_setting('statement_timeout')::interval) AS s"
    running = exporter_for(
        {
            "targets": [{"name": "db", "dsn": pg.dsn()}],
            "settings": {"query_timeout": "5s"},
            "queries": [
                {
                    "name": "first_ok",
                    "sql": seconds,
                    "metrics": [{"name": "t_first", "help": "Timeout seen.", "value": "s"}],
                },
                {
                    "name": "failing",
                    "timeout": "3s",
                    "sql": "SELECT 1 / 0 AS x",
                    "metrics": [{"name": "t_failing", "help": "Never.", "value": "x"}],
                },
                {
                    "name": "after",
                    "timeout": "3s",
                    "sql": seconds,
                    "metrics": [{"name": "t_after", "help": "Timeout seen.", "value": "s"}],
                },
                {
                    "name": "in_transaction",
                    "sql": "SELECT (current_setting('transaction_read_only') = 'on')::int AS ro,"
                    " (now() <> statement_timestamp())::int AS shared",
                    "metrics": [
                        {"name": "t_read_only", "help": "Read-only.", "value": "ro"},
                        {"name": "t_shared", "help": "In a transaction.", "value": "shared"},
                    ],
                },
            ],
        }
    )
    for _ in range(3):
        s = running.scrape()
        assert s.value("pg_connections_exporter_query_success", query="failing") == 0
        assert s.value("t_first", target="db") == 5
        assert s.value("pg_connections_exporter_query_success", query="after") == 1
        # The built-ins before the failure and the queries after it all ran.
        assert s.value("pg_connections_exporter_query_success", query="connections") == 1
        assert s.value("pg_connections_exporter_query_success", query="connection_slots") == 1
        assert s.value("t_read_only", target="db") == 1
        assert s.value("t_shared", target="db") == 1
    errors = "pg_connections_exporter_query_errors_total"
    assert s.value(errors, query="failing", reason="error") == 3
    # The connection was handed back outside any transaction.
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE application_name = %s",
            ("pg-connections-exporter",),
        ).fetchone()
    assert row is not None and row[0] == "idle"


def test_slots_and_limits_are_the_same_with_or_without_the_connections_query(
    pg: LocalCluster, exporter_for
) -> None:
    """connection_slots and connection_limits read what connections left in the transaction,
    or the backends themselves when connections did not run: both ways count alike."""
    pg.execute(
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'limited_role') THEN"
        " CREATE ROLE limited_role LOGIN CONNECTION LIMIT 50; END IF; END$$"
    )
    both = exporter_for({"targets": [{"name": "db", "dsn": pg.dsn()}]})
    alone = exporter_for(
        {
            "targets": [{"name": "db", "dsn": pg.dsn()}],
            "collectors": {"disable": ["connections"]},
        }
    )
    names = (
        "pg_connections_by_backend_type",
        "pg_connections_used",
        "pg_role_connection_limit_used",
    )

    def counts(s: Samples) -> dict:
        return {n: sorted((tuple(sorted(k.items())), v) for k, v in s.series(n)) for n in names}

    with Workload(pg.dsn()) as w:
        w.open_many([SessionSpec("idle", user="limited_role")] * 3)

        def agreed() -> tuple[dict, dict] | None:
            # Both exporters hold a session: each sees the other's, and its own.
            a, b = counts(both.scrape()), counts(alone.scrape())
            return (a, b) if a == b else None

        a, _ = wait_until(agreed, what="both ways to count alike")
    # Other tests may have left roles with limits in the shared server: this one is known.
    limited = (("rolname", "limited_role"), ("target", "db"))
    assert dict(a["pg_role_connection_limit_used"])[limited] == 3
    assert both.scrape().get("pg_connections", state="idle") is not None
    assert alone.scrape().get("pg_connections", state="idle") is None


def test_begin_and_commit_travel_with_the_queries_on_every_major(
    pg_any_major: LocalCluster, exporter_for
) -> None:
    """BEGIN and its statement_timeout SET go in the first query's message, COMMIT in the
    last one's: the SET still bounds that query (PostgreSQL 12 bounded a message by the
    timeout it started with: there they go ahead of it), the queries still share one
    transaction, and the session is handed back idle."""
    running = exporter_for(
        {
            "targets": [{"name": "db", "dsn": pg_any_major.dsn()}],
            "settings": {"query_timeout": "5s"},
            "collectors": {"disable": BUILT_INS},
            "queries": [
                {
                    "name": "slow",
                    "timeout": "300ms",
                    "sql": "SELECT 1 AS x FROM pg_sleep(2)",
                    "metrics": [{"name": "t_slow", "help": "Never.", "value": "x"}],
                },
                {
                    "name": "first",
                    "timeout": "4s",
                    "sql": "SELECT txid_current_if_assigned() IS NULL AS fresh, "
                    "extract(epoch FROM now())::float8 AS began",
                    "metrics": [
                        {"name": "t_began", "help": "Transaction start.", "value": "began"}
                    ],
                },
                {
                    "name": "last",
                    "sql": "SELECT extract(epoch FROM now())::float8 AS began,"
                    " (current_setting('transaction_read_only') = 'on')::int AS ro,"
                    " extract(epoch FROM current_setting('statement_timeout')::interval) AS s",
                    "metrics": [
                        {"name": "t_began_last", "help": "Transaction start.", "value": "began"},
                        {"name": "t_read_only", "help": "Read-only.", "value": "ro"},
                        {"name": "t_timeout", "help": "Timeout seen.", "value": "s"},
                    ],
                },
            ],
        }
    )
    for _ in range(2):
        start = time.monotonic()
        s = running.scrape()
        assert time.monotonic() - start < 1.8  # the slow query was cut at its 300 ms
        assert (
            s.value("pg_connections_exporter_query_errors_total", query="slow", reason="timeout")
            >= 1
        )
        # After the failure: one transaction for both (the same now()), read-only, each query
        # under its own timeout.
        assert s.value("t_began", target="db") == s.value("t_began_last", target="db")
        assert s.value("t_read_only", target="db") == 1
        assert s.value("t_timeout", target="db") == 5
    with psycopg.connect(pg_any_major.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT state, backend_xmin FROM pg_stat_activity WHERE application_name = %s",
            ("pg-connections-exporter",),
        ).fetchone()
    assert row is not None and row == ("idle", None)  # committed: no snapshot held


def test_a_query_taken_for_one_statement_that_holds_two_runs_unprepared(
    pg: LocalCluster, exporter_for
) -> None:
    """The semicolon after a string holding `--` is hidden from the exporter's look at the
    text: the server refuses to prepare the query, and from then on it runs unprepared (the
    first statement's rows, as a cursor gives), failing no scrape, under its own timeout (the
    refused preparation aborted the transaction that set it: it is set again). The only query:
    it carries both the BEGIN and the COMMIT."""
    running = exporter_for(
        {
            "targets": [{"name": "db", "dsn": pg.dsn()}],
            "collectors": {"disable": BUILT_INS},
            "queries": [
                {
                    "name": "two",
                    "timeout": "2s",
                    "sql": "SELECT extract(epoch FROM"
                    " current_setting('statement_timeout')::interval) AS x"
                    " FROM (SELECT '--') AS s; SELECT 7 AS x",
                    "metrics": [{"name": "t_two", "help": "First statement's.", "value": "x"}],
                },
            ],
        }
    )
    for _ in range(3):
        s = running.scrape()
        assert s.value("t_two", target="db") == 2  # its own timeout, 2 s
        assert s.value("pg_connections_exporter_query_success", query="two") == 1
    errors = "pg_connections_exporter_query_errors_total"
    assert sum(v for _, v in s.series(errors, query="two")) == 0
