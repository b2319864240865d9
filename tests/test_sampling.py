"""The sampling statements against real servers: on every major 12-18 the sample equals the
scraped pg_connections_used (as a pg_monitor role and as one that sees no other sessions), on a
real PgBouncer it equals the scraped clients and waiting clients, and a storm of 3 s between two
scrapes, sampled every second as the core will, is counted and its peak kept."""

from __future__ import annotations

import threading
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
from tests.conftest import new_cluster
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


def drive(sampler: TargetSampler, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
    """The core's loop, as a thread: a tick a second on one connection, no catch-up."""
    tick = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        try:
            sampler.record(now, run(conn, sampler.statements(now)))
        except psycopg.Error:
            sampler.missed(now, "error")
        tick += sampler.interval
        stop.wait(max(0.0, tick - time.monotonic()))


def test_a_storm_between_two_scrapes_is_counted_and_its_peak_kept(exporter_for) -> None:
    cluster = new_cluster("18", max_connections=12)  # 9 slots for ordinary roles
    try:
        cluster.execute("CREATE ROLE app LOGIN")
        running = exporter_for({"targets": [{"name": "t", "dsn": cluster.dsn()}]})
        before = running.scrape()
        sampler = TargetSampler("postgres", {"target": "t"}, SamplerSettings())
        stop = threading.Event()
        with (
            psycopg.connect(cluster.dsn(), autocommit=True) as conn,
            psycopg.connect(cluster.dsn(), autocommit=True) as observer,
        ):
            thread = threading.Thread(target=drive, args=(sampler, conn, stop), daemon=True)
            thread.start()
            time.sleep(2.5)  # quiet: nothing at any level
            quiet = {f.name: f for f in sampler.collect()}
            levels = quiet["pg_connections_saturation_seconds"].samples
            assert {s.labels["level"]: s.value for s in levels} == {"0.8": 0, "0.9": 0, "1": 0}
            with Workload(cluster.dsn(user="app")) as storm:
                refused = False
                for _ in range(20):
                    try:
                        storm.open(SessionSpec("idle", user="app"))
                    except psycopg.OperationalError:
                        refused = True
                        break
                assert refused, "the server took 20 sessions of an ordinary role"
                full_at = time.monotonic()
                # The refused attempt's backend is a client backend too until it has exited
                # (on a loaded machine, after its client saw the refusal): the truth is the
                # count once two reads 0.2 s apart agree.
                counts: list[int] = []

                def settled() -> bool:
                    (n,) = observer.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE backend_type = 'client backend'"
                    ).fetchone()  # type: ignore[misc]
                    counts.append(n)
                    return len(counts) > 1 and counts[-1] == counts[-2]

                wait_until(settled, 2.5, 0.2, "the client backends to settle")
                truth = counts[-1]
                time.sleep(max(0.0, full_at + 3.0 - time.monotonic()))
            # The sessions are closed; their backends exit within milliseconds.
            wait_until(
                lambda: (
                    observer.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                    ).fetchone()
                    == (0,)
                ),
                what="the storm's backends to exit",
            )
            after = running.scrape()
            time.sleep(2.5)
            stop.set()
            thread.join(5)
        # The scrapes before and after saw an ordinary server; the sampler saw the storm.
        assert before.value("pg_connections_used") < 9 and after.value("pg_connections_used") < 9
        families = {f.name: f for f in sampler.collect()}
        (peak_used,) = families["pg_connections_used_peak"].samples
        # The observer counted the same client backends the sampler did (itself included).
        assert peak_used.value == truth
        (peak_ratio,) = families["pg_connections_utilization_peak_ratio"].samples
        assert peak_ratio.value >= 1.0
        levels = families["pg_connections_saturation_seconds"].samples
        at = {s.labels["level"]: s.value for s in levels}
        assert 2.0 <= at["1"] <= 4.0, at  # a 3 s storm, sampled every second: 3 +/- 1
        assert at["0.8"] >= at["1"] and at["0.9"] >= at["1"]
        (taken,) = families["pg_connections_exporter_samples"].samples
        assert taken.value >= 8
    finally:
        cluster.stop()
