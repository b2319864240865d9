"""The sampling statements against real servers: on every major 12-18 the sample equals the
scraped pg_connections_used (as a pg_monitor role and as one that sees no other sessions), and
on a real PgBouncer it equals the scraped clients and waiting clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from exporter.config.model import SamplerSettings
from exporter.sampling.sampler import TargetSampler
from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload
from tests.helpers import Samples, wait_until
from tests.pgbouncer_server import PgBouncer


def run(conn: psycopg.Connection[Any], statements: Sequence[str]) -> list[list[dict[str, Any]]]:
    """What the core will do each tick: the statements in order on one autocommit connection."""
    out = []
    for sql in statements:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql.encode())
            out.append(cur.fetchall())
    return out


def sample(sampler: TargetSampler, conn: psycopg.Connection[Any]) -> None:
    now = time.monotonic()
    sampler.record(now, run(conn, sampler.statements(now)))


def peak(sampler: TargetSampler, name: str) -> float:
    (family,) = [f for f in sampler.collect() if f.name == name]
    (value,) = [s.value for s in family.samples]
    return value


def test_the_sample_is_the_scraped_pg_connections_used(pg_any_major: LocalCluster, exporter_for):
    pg = pg_any_major
    pg.execute(
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'plain_monitor') THEN"
        " CREATE ROLE plain_monitor LOGIN; END IF; END$$"
    )
    with Workload(pg.dsn()) as w:
        w.open_many(
            [SessionSpec("idle", application_name="web")] * 4
            + [SessionSpec("idle in transaction", application_name="batch")] * 2
            + [SessionSpec("active", application_name="report")]
        )
        for user in ("postgres", "plain_monitor"):
            running = exporter_for({"targets": [{"name": "t", "dsn": pg.dsn(user=user)}]})
            with psycopg.connect(pg.dsn(user=user), autocommit=True) as conn:

                def agreed(
                    conn: psycopg.Connection[Any] = conn, user: str = user, running: Any = running
                ) -> float:
                    # A fresh sampler each time: its peak is this one sample.
                    sampler = TargetSampler("postgres", {"target": "t"}, SamplerSettings())
                    sample(sampler, conn)
                    scraped = running.scrape().value("pg_connections_used")
                    sampled = peak(sampler, "pg_connections_used_peak")
                    assert sampled == scraped, (user, sampled, scraped)
                    return sampled

                # Sessions of earlier tests may still be ending: compare until both agree.
                used = wait_until(agreed, what=f"the sample to equal the scrape ({user})")
                # The workload, its control session, the exporter and this connection.
                assert used >= 7 + 2
                s: Samples = running.scrape()
                sampler = TargetSampler("postgres", {"target": "t"}, SamplerSettings())
                sample(sampler, conn)
                assert peak(sampler, "pg_connections_utilization_peak_ratio") == (
                    s.value("pg_connections_utilization_ratio")
                )
            running.stop()


def test_the_pgbouncer_sample_is_the_scraped_clients_and_waiting(
    pg: LocalCluster, pgbouncer_for, exporter_for
) -> None:
    bouncer: PgBouncer = pgbouncer_for(pg)
    table = f"gate_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE TABLE {table} (id int)")
    running = exporter_for({"targets": [{"name": "b", "kind": "pgbouncer", "dsn": bouncer.dsn()}]})
    with (
        Workload(pg.dsn()) as direct,
        Workload(bouncer.dsn("postgres", "app")) as clients,
        psycopg.connect(bouncer.dsn(), autocommit=True) as conn,
    ):
        holder = direct.hold_lock(table)
        for _ in range(5):
            clients.wait_for_lock(table, SessionSpec("active", dbname="app"))
        # 2 clients hold the pool's 2 server connections, 3 queue behind them.
        s = running.scrape_until(
            lambda s: s.get("pgbouncer_pool_client_waiting_connections", database="app") == 3,
            what="3 waiting clients",
        )
        sampler = TargetSampler("pgbouncer", {"target": "b"}, SamplerSettings())
        sample(sampler, conn)
        assert peak(sampler, "pgbouncer_clients_waiting_peak") == 3
        # The 5 clients, the exporter's connection and this one, against max_client_conn 50.
        assert s.value("pgbouncer_client_connections") == 7
        assert peak(sampler, "pgbouncer_client_connections_peak") == 7
        # A second tick a second later: one second with clients waiting, none at any level.
        time.sleep(1.0)
        sample(sampler, conn)
        families = {f.name: f for f in sampler.collect()}
        (waited,) = families["pgbouncer_clients_waiting_seconds"].samples
        assert 0.9 <= waited.value <= 2.0
        levels = families["pgbouncer_client_connections_saturation_seconds"].samples
        assert {s.labels["level"]: s.value for s in levels} == {"0.8": 0, "0.95": 0, "1": 0}
        holder.commit()
