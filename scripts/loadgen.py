#!/usr/bin/env python3
"""A small endless load on one PostgreSQL server, so the dashboards and alerts have something
to show. The compose stack runs it (service `loadgen`); it also runs by hand:

  python scripts/loadgen.py --dsn 'host=localhost user=postgres password=... dbname=postgres'

Once, idempotently, it creates the roles and databases of `pg-connections-exporter demo`
(giving the roles the DSN's password, so they can log in over TCP with password auth). Then it
holds a steady set of sessions in every state and one waiting on a lock, opens and closes short
sessions, and in the last --wave-length seconds of every --wave-every seconds fills the server to
--wave-utilization of its slots: long enough, and PostgresConnectionsHigh fires. SIGTERM or
Ctrl-C closes every session and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg import sql

from harness.workload import SessionSpec, Workload, close_quietly

log = logging.getLogger("loadgen")

ROLES = {"web": "CONNECTION LIMIT 40", "batch": "", "reporting": "CONNECTION LIMIT 5"}
DATABASES = {"shop": "", "analytics": "CONNECTION LIMIT 20"}
# host=None: every session goes where the DSN points (a Unix socket, or the compose service).
STEADY = (
    [SessionSpec("idle", "web", "shop", "storefront")] * 12
    + [SessionSpec("idle in transaction", "web", "shop", "storefront")] * 2
    + [SessionSpec("active", "batch", "shop", "nightly-etl")] * 2
    + [SessionSpec("idle", "reporting", "analytics", "metabase")] * 3
    + [SessionSpec("idle in transaction (aborted)", "reporting", "analytics", "metabase")]
)
WAVE = SessionSpec("idle", "batch", "shop", "report-burst")
SLOTS_SQL = """
SELECT current_setting('max_connections')::int
       - current_setting('superuser_reserved_connections')::int
       - coalesce(current_setting('reserved_connections', true), '0')::int,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
"""


def setup(dsn: str) -> None:
    """Create the demo roles, databases and lock table unless they exist."""
    password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role, options in ROLES.items():
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                continue
            stmt = sql.SQL("CREATE ROLE {} LOGIN " + options).format(sql.Identifier(role))
            if password:
                stmt += sql.SQL(" PASSWORD {}").format(sql.Literal(password))
            conn.execute(stmt)
        conn.execute("GRANT pg_monitor TO batch")
        for db, options in DATABASES.items():
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db]).fetchone():
                continue
            conn.execute(sql.SQL("CREATE DATABASE {} " + options).format(sql.Identifier(db)))
    shop = psycopg.conninfo.make_conninfo(dsn, dbname="shop")
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id int)")
        conn.execute("GRANT ALL ON orders TO web")


def wait_for_server(dsn: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"loadgen: cannot connect within {timeout:.0f}s: {exc}") from exc
            time.sleep(1.0)


class LoadGenerator:
    """Steady sessions, churn, and periodic waves towards the limit."""

    def __init__(self, dsn: str, args: argparse.Namespace) -> None:
        self.dsn = dsn
        self.args = args
        self.workload = Workload(dsn)
        self.rng = random.Random(42)
        self.churn: list[psycopg.Connection[Any]] = []
        self.wave: list[psycopg.Connection[Any]] = []
        self.probe: psycopg.Connection[Any] | None = None

    def start(self) -> None:
        # One session of its own to count with, so counting never needs a free slot.
        self.probe = self.workload.connect(SessionSpec(application_name="loadgen"))
        self.workload.open_many(STEADY)
        # A migration holding a lock, and a storefront query queued behind it.
        self.workload.hold_lock(
            "orders", SessionSpec("idle in transaction", "web", "shop", "migration")
        )
        self.workload.wait_for_lock("orders", SessionSpec("active", "web", "shop", "storefront"))

    def run(self, stop: threading.Event) -> None:
        started = time.monotonic()
        while not stop.wait(self.args.tick):
            elapsed = (time.monotonic() - started) % self.args.wave_every
            try:
                self.step_churn()
                # Quiet first, then the wave at the end of each period.
                if elapsed >= self.args.wave_every - self.args.wave_length:
                    self.fill_to(self.args.wave_utilization)
                else:
                    self.drain_wave()
            except psycopg.Error as exc:
                log.warning("loadgen step failed: %s", exc)

    def step_churn(self) -> None:
        # No new sessions during a wave: it holds the server where it is.
        if not self.wave and len(self.churn) < 10 and self.rng.random() < 0.6:
            state = self.rng.choice(["idle", "idle", "active", "idle in transaction"])
            spec = SessionSpec(state, "web", "shop", "storefront")
            self.churn.append(self.workload.open(spec))
        elif self.churn:
            self.close(self.churn.pop(self.rng.randrange(len(self.churn))))

    def fill_to(self, utilization: float) -> None:
        assert self.probe is not None
        row = self.probe.execute(SLOTS_SQL).fetchone()
        assert row is not None
        slots, used = row
        missing = int(utilization * slots) - used
        if missing > 0:
            log.info("wave: %d more sessions (%d of %d slots used)", missing, used, slots)
        for _ in range(max(missing, 0)):
            self.wave.append(self.workload.open(WAVE))

    def drain_wave(self) -> None:
        if self.wave:
            log.info("wave over: closing %d sessions", len(self.wave))
        while self.wave:
            self.close(self.wave.pop())

    def close(self, conn: psycopg.Connection[Any]) -> None:
        # close_quietly cancels a statement still running, so no pg_sleep outlives its client.
        self.workload.sessions.remove(conn)
        close_quietly(conn)

    def stop(self) -> None:
        self.workload.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("LOADGEN_DSN"),
        help="a superuser DSN (default: $LOADGEN_DSN)",
    )
    parser.add_argument("--wave-every", type=float, default=1800.0, help="seconds (1800)")
    parser.add_argument("--wave-length", type=float, default=1200.0, help="seconds (1200)")
    parser.add_argument("--wave-utilization", type=float, default=0.85, help="of the slots (0.85)")
    parser.add_argument("--tick", type=float, default=2.0, help="seconds between steps (2)")
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the server (60)"
    )
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("give --dsn or set LOADGEN_DSN")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s loadgen %(message)s")
    args = parse_args(argv)
    stop = threading.Event()
    # As PID 1 in a container, SIGTERM is ignored unless handled.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    wait_for_server(args.dsn, args.wait)
    setup(args.dsn)
    generator = LoadGenerator(args.dsn, args)
    try:
        generator.start()
        log.info("running: %d sessions open", len(generator.workload.sessions))
        generator.run(stop)
    finally:
        generator.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
