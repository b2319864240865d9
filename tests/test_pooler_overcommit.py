"""Poolers against the server, with real parts: two PgBouncers in front of one PostgreSQL
(several databases and users), the exporter scraping all three, a real Prometheus running the
shipped recording rules and alert.

The figures are worked out here from the settings, by hand:

  server: max_connections 30, superuser_reserved_connections 3 -> 27 ordinary slots.
  pooler-a: d1 pool_size 3, d2 pool_size 4 max_db_connections 5; reserve_pool_size 1
            (reserve_pool_timeout 1s); users seen alice and bob (pools on d1 only).
            d1: 2 pools x (3 + 1) = 8; d2: pools of 4 + 1 = 5 each, the database caps both
            at 5. pooler-a may open 8 + 5 = 13 (its d2 pools do not exist yet: counted).
  pooler-b: d1 and d2 at default_pool_size 5, no reserve, max_user_connections 6.
            4 pools of 5 (d1 and d2: 10 each), but each user at most 6 over both databases:
            pooler-b may open 6 + 6 = 12.
  Together 25. Direct clients: 4 sessions of carol plus the exporter's own = 5, so 27 - 5 =
  22 slots are left for the poolers: overcommit 25 / 22. Lowered (pooler-a: pool_size 2 on
  both, no reserve -> 4 + 4; pooler-b: default_pool_size 3 -> min(6, 3 + 3) per user -> 12):
  20 / 22, which fits.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from exporter.diagnose.command import main as diagnose_main
from harness.localpg import LocalCluster
from tests.conftest import new_cluster, require_program
from tests.helpers import http_get, load_render_alerts, wait_until
from tests.pgbouncer_server import PgBouncer
from tests.prometheus_server import PrometheusServer

ALERT = "PgBouncerPoolsOvercommitServer"
POOLERS = ("alice", "bob")
A_DATABASES = {"d1": "dbname=d1 pool_size=3", "d2": "dbname=d2 pool_size=4 max_db_connections=5"}
B_DATABASES = {"d1": "dbname=d1", "d2": "dbname=d2"}
COMMON = {"server_login_retry": 1, "reserve_pool_timeout": 1, "max_client_conn": 60}
A_SETTINGS = {**COMMON, "reserve_pool_size": 1}
B_SETTINGS = {**COMMON, "default_pool_size": 5, "max_user_connections": 6}
A_BOUND, B_BOUND = 13, 12
SLOTS, DIRECT = 27, 5
# Lowered to fit: pooler-a 4 + 4, pooler-b 6 + 6.
A_LOWERED = {"d1": "dbname=d1 pool_size=2", "d2": "dbname=d2 pool_size=2 max_db_connections=5"}
LOWERED_BOUND = 8 + 12


def rules_file(path: Path) -> str:
    """The shipped rules, the alert's `for` shortened to seconds."""
    renderer = load_render_alerts()
    thresholds = renderer.load_thresholds()
    thresholds["alerts"][ALERT]["for"] = "2s"
    path.write_text(renderer.dump({"groups": renderer.render_groups(thresholds)}))
    return str(thresholds["job"])


def by_id(page: str, element_id: str) -> str:
    """The text of the element with this id on a page."""
    found = re.search(rf"id='{element_id}'[^>]*>([^<]*)<", page)
    assert found, element_id
    return found.group(1)


def seed_pools(bouncer: PgBouncer) -> None:
    """alice and bob use d1 once through the pooler: their pools exist, they are users seen."""
    for user in POOLERS:
        with psycopg.connect(bouncer.dsn(user, "d1")) as conn:
            conn.execute("SELECT 1")


def pooled_backends(cluster: LocalCluster) -> int:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('alice', 'bob')"
        ).fetchone()
    assert row is not None
    return int(row[0])


class Clients:
    """Real clients through the poolers, each holding a transaction (so a server connection,
    in transaction pooling) until released; those beyond the pools' limits wait in PgBouncer."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: list[threading.Thread] = []

    def open(self, dsn: str) -> None:
        def run() -> None:
            try:
                with psycopg.connect(dsn) as conn:
                    conn.execute("SELECT 1")  # BEGIN: the server connection is this client's
                    self.release.wait(60)
                    conn.rollback()
            except psycopg.Error:
                pass  # PgBouncer gave up on it, or stopped

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(5)


def drive(a: PgBouncer, b: PgBouncer, clients: Clients) -> None:
    """More clients on every pool than it may serve: 5 on each of pooler-a's (its pools take 4,
    and d2 5 of 6), 4 on each of pooler-b's (8 per user against max_user_connections 6)."""
    for bouncer, per_pool in ((a, 5), (b, 4)):
        for database in ("d1", "d2"):
            for user in POOLERS:
                for _ in range(per_pool):
                    clients.open(bouncer.dsn(user, database))


def server_connections(bouncer: PgBouncer) -> int:
    return sum(
        r["current_connections"]
        for r in bouncer.admin("SHOW DATABASES")
        if r["name"] != "pgbouncer"
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_poolers_overcommit_the_server_and_the_figure_is_what_they_open(
    tmp_path: Path, pgbouncer_for, exporter_for, capsys
) -> None:
    prometheus_bin = require_program("prometheus")
    cluster = new_cluster("15", max_connections=30)
    prom: PrometheusServer | None = None
    clients = Clients()
    direct: list[psycopg.Connection[Any]] = []
    try:
        cluster.execute(
            "CREATE ROLE alice LOGIN",
            "CREATE ROLE bob LOGIN",
            "CREATE ROLE carol LOGIN",
            "CREATE DATABASE d1",
            "CREATE DATABASE d2",
        )
        a = pgbouncer_for(cluster, databases=A_DATABASES, users=POOLERS, **A_SETTINGS)
        b = pgbouncer_for(cluster, databases=B_DATABASES, users=POOLERS, **B_SETTINGS)
        for bouncer in (a, b):
            seed_pools(bouncer)
        direct = [psycopg.connect(cluster.dsn("carol")) for _ in range(4)]
        config = {
            "targets": [
                {"name": "pooler-a", "kind": "pgbouncer", "dsn": a.dsn()},
                {"name": "pooler-b", "kind": "pgbouncer", "dsn": b.dsn()},
                {"name": "db", "dsn": cluster.dsn()},
            ],
            "sessions_page": {"enabled": True},
        }
        running = exporter_for(config)
        # The server's address as both sides see it: the socket directory (PgBouncer's
        # upstream, read as the pooler's host, 127.0.0.1: local) and the target's DSN.
        server = f"localhost:{cluster.port}"

        s = running.scrape_until(
            lambda s: (
                s.get("pgbouncer_upstream_server_connections_bound", target="pooler-b") is not None
                and s.get("pg_connections_server_info", target="db") is not None
            ),
            what="the poolers' figures",
        )
        assert s.value("pg_connections_server_info", target="db", server=server) == 1
        assert (
            s.value(
                "pgbouncer_database_upstream_info",
                target="pooler-a",
                database="d2",
                host=str(cluster.socket_dir),
                port=str(cluster.port),
                upstream_database="d2",
                server=server,
            )
            == 1
        )
        bound = "pgbouncer_pool_server_connections_bound"
        assert s.by(bound, "user", target="pooler-a", database="d1", server=server) == {
            "alice": 4,
            "bob": 4,
        }
        assert s.by(bound, "exists", target="pooler-a", database="d2", user="bob") == {"false": 5}
        assert s.by(bound, "limited_by", target="pooler-b", database="d2", user="alice") == {
            "pool_size+reserve_pool": 5
        }
        db_bound = "pgbouncer_database_server_connections_bound"
        assert s.by(db_bound, "database", target="pooler-a") == {"d1": 8, "d2": 5}
        assert s.by(db_bound, "limited_by", target="pooler-a", database="d2") == {
            "max_db_connections": 5
        }
        assert s.by(db_bound, "database", target="pooler-b") == {"d1": 10, "d2": 10}
        upstream = "pgbouncer_upstream_server_connections_bound"
        assert s.by(upstream, "target", server=server) == {"pooler-a": A_BOUND, "pooler-b": B_BOUND}

        # The same view on /sessions (through the exporter's held connection: 5 direct) ...
        status, page, _ = http_get(f"{running.url}/sessions?target=db")
        assert status == 200
        assert by_id(page, "pooler-bound") == "25"
        assert by_id(page, "slots-left") == "22 / 27"
        assert by_id(page, "overcommit") == "114%"
        poolers_table = page[page.index("id='poolers-table'") : page.index("id='pools-table'")]
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", poolers_table)
        assert cells == ["pooler-a", "13", "2", "pooler-b", "12", "2"]
        # ... and in diagnose, whose own session is one more direct client: 21 left.
        (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
        capsys.readouterr()
        code = diagnose_main(
            ["--config.file", str(tmp_path / "config.yml"), "--target", "db", "--format", "json"]
        )
        assert code == 0
        poolers = json.loads(capsys.readouterr().out)["poolers"]
        assert (poolers["server"], poolers["may_open"], poolers["slots_left"]) == (server, 25, 21)
        assert poolers["overcommit_ratio"] == pytest.approx(25 / 21)
        assert [(p["pooler"], p["may_open"]) for p in poolers["poolers"]] == [
            ("pooler-a", A_BOUND),
            ("pooler-b", B_BOUND),
        ]
        diagnose_main(["--config.file", str(tmp_path / "config.yml"), "--target", "db"])
        text = capsys.readouterr().out
        assert "the poolers may open 25 server connections together, against 21 slots" in text
        assert "OVERCOMMITTED" in text

        job = rules_file(tmp_path / "rules.yml")
        prom = PrometheusServer(
            prometheus_bin,
            [running.url.removeprefix("http://")],
            job=job,
            rule_files=[tmp_path / "rules.yml"],
        ).start()

        def rule(name: str) -> float | None:
            found = prom.vector(f'{name}{{server="{server}"}}') if prom else []
            return found[0][1] if found else None

        wait_until(
            lambda: (
                rule("server:pg_connections_direct:max") == DIRECT
                and rule("server:pgbouncer_server_connections_bound:sum") == A_BOUND + B_BOUND
            ),
            timeout=30,
            what="the recording rules",
        )
        assert rule("server:pg_connections_slots:ordinary") == SLOTS
        assert rule("server:pg_connections_slots:after_direct") == SLOTS - DIRECT
        assert rule("server:pgbouncer_overcommit:ratio") == pytest.approx(25 / 22)
        assert rule("server:pgbouncer_overcommit:ordinary_ratio") == pytest.approx(25 / 27)

        def firing() -> list[dict[str, Any]]:
            alerts = prom.api("alerts")["data"]["alerts"] if prom else []
            return [
                x for x in alerts if x["labels"]["alertname"] == ALERT and x["state"] == "firing"
            ]

        (alert,) = wait_until(firing, timeout=30, what=f"{ALERT} to fire")
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["server"] == server
        description = alert["annotations"]["description"]
        assert "The poolers may open 25 against 22 (27 ordinary slots, 5 held by direct" in (
            description
        )
        # The biggest pooler first; then the biggest pools: pooler-a's d2 and pooler-b's,
        # 5 each, with the setting that caps them.
        assert "\nPoolers: pooler-a 13, pooler-b 12" in description, description
        pools_line = next(x for x in description.splitlines() if x.startswith("Pools: "))
        assert pools_line.count(" 5 (") == 3 and "4 (" not in pools_line, pools_line
        assert "(max_db_connections)" in pools_line or "(pool_size+reserve_pool)" in pools_line

        # Driven to their limits while the direct clients hold 5 slots: the poolers get the 22
        # left, and the server refuses them the rest.
        drive(a, b, clients)
        seen: list[object] = []

        def refused_at_the_slots_left() -> bool:
            logs = a.log_tail(400) + b.log_tail(400)
            pooled = server_connections(a) + server_connections(b)
            # PostgreSQL's refusal of an ordinary role (15: "remaining connection slots are
            # reserved for non-replication superuser connections"), as PgBouncer logs it.
            seen[:] = [pooled, "login failed: FATAL: remaining connection slots" in logs]
            return seen == [SLOTS - DIRECT, True]

        try:
            wait_until(refused_at_the_slots_left, timeout=60, what="the server to refuse")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: pooled backends, refusal logged: {seen}") from None
        # The direct clients leave (the exporter's own stays): the poolers open exactly the
        # figure, 13 and 12, and no more though clients still wait.
        for conn in direct:
            conn.close()
        direct = []
        wait_until(
            lambda: (server_connections(a), server_connections(b)) == (A_BOUND, B_BOUND),
            timeout=60,
            what="the poolers to reach their figures",
        )
        time.sleep(3)  # reserve_pool_timeout and server_login_retry pass again
        assert (server_connections(a), server_connections(b)) == (A_BOUND, B_BOUND)
        assert pooled_backends(cluster) == A_BOUND + B_BOUND  # as the server counts them
        assert sum(r["cl_waiting"] for r in a.admin("SHOW POOLS") + b.admin("SHOW POOLS")) > 0
        clients.stop()

        # Lowered to fit: the figure drops to 20 of 22 and the alert is gone.
        a.reload(databases=A_LOWERED, reserve_pool_size=0)
        b.reload(default_pool_size=3)
        cluster.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE usename IN ('alice', 'bob')"
        )
        direct = [psycopg.connect(cluster.dsn("carol")) for _ in range(4)]
        wait_until(
            lambda: (
                rule("server:pgbouncer_server_connections_bound:sum") == LOWERED_BOUND
                and rule("server:pg_connections_direct:max") == DIRECT
            ),
            timeout=30,
            what="the lowered figure",
        )
        assert rule("server:pgbouncer_overcommit:ratio") == pytest.approx(20 / 22)
        wait_until(lambda: not firing(), timeout=30, what=f"{ALERT} to stop firing")
    finally:
        clients.stop()
        for conn in direct:
            conn.close()
        if prom is not None:
            prom.stop()
        cluster.stop()
