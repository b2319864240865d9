"""Every dashboard panel's query against a real Prometheus scraping the exporter.

PostgreSQL 18 (embedded) with a known workload, a PgBouncer in front of the quiet server with
one pooled client, the exporter in-process, `prometheus` as a subprocess scraping it every second
with a stand-in PostgresConnectionsHigh rule. Every query of every panel must parse; the panels
the workload fills must show exactly the workload.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from harness.workload import SessionSpec, Workload
from tests.conftest import new_cluster, require_program
from tests.helpers import load_render_alerts, wait_until
from tests.prometheus_server import PrometheusServer
from tests.test_dashboards import FLEET_UID, OVERVIEW_UID, iter_panels, load_dashboards

JOB = "pg-connections"
RATE_INTERVAL = "4s"  # Grafana: max($__interval + scrape interval, 4 * scrape interval)
# Panels whose metrics do not exist yet (a later issue) or that may rightly be empty now.
MAY_BE_EMPTY = {
    (OVERVIEW_UID, "Time to exhaustion"),  # only while utilization rises
    (OVERVIEW_UID, "Refused logins and connect failures"),  # only while logins fail
    (OVERVIEW_UID, "Configuration"),  # its web config query: this exporter has none
    # No pooler points at busy: check_poolers reads these rows for quiet.
    (OVERVIEW_UID, "Poolers may open, of the slots left"),
    (OVERVIEW_UID, "Poolers' figure and the server's slots"),
    (OVERVIEW_UID, "Poolers of this server"),
    (OVERVIEW_UID, "Biggest pools"),
    # The between-scrapes sampler (exporter/sampling) is not wired into the exporter yet: its
    # query of the panel (refId B) and the panel of its counters, only.
    (OVERVIEW_UID, "Slots used: scraped and peak between scrapes", "B"),
    (OVERVIEW_UID, "Time at each saturation level"),
    # Refusals per second: the test's two are past the rate window by the time it queries.
    (OVERVIEW_UID, "Refused connections by reason"),
    (OVERVIEW_UID, "Log reader: read and skipped", "B"),  # nothing skipped: only while behind
}
# The stand-in for alerts/: same name and threshold as PostgresConnectionsHigh.
RULES = {
    "groups": [
        {
            "name": "dashboards-e2e",
            "rules": [
                {
                    "alert": "PostgresConnectionsHigh",
                    "expr": "pg_connections_utilization_ratio > 0.8",
                    "for": "1s",
                    "labels": {"severity": "warning"},
                }
            ],
        }
    ]
}
# The host the busy target runs on, as node_exporter would report it: the memory panels join its
# RAM through the target's node_instance label. A stand-in series, as no node_exporter runs here.
NODE_INSTANCE = "db-host:9100"
HOST_RAM = 8 * 1024**3
RULES["groups"].append(
    {
        "name": "node-exporter-stand-in",
        "rules": [
            {
                "record": "node_memory_MemTotal_bytes",
                "expr": f"vector({HOST_RAM})",
                "labels": {"job": "node", "instance": NODE_INSTANCE},
            }
        ],
    }
)


def pooler_records() -> dict[str, Any]:
    """The ordinary slots and the per-server rules as shipped, selecting this test's job."""
    renderer = load_render_alerts()
    thresholds = renderer.load_thresholds()
    thresholds["job"] = JOB
    (group,) = renderer.render_groups(thresholds)
    rules = [
        r
        for r in group["rules"]
        if r.get("record") == renderer.SLOTS or r.get("record", "").startswith("server:")
    ]
    return {"name": "poolers", "rules": rules}


def advisor_records() -> dict[str, Any]:
    """The pooling advisor's recording rules as shipped (scripts/render_alerts.py), selecting
    this test's job, with the busy window shortened to seconds (the panels read them)."""
    renderer = load_render_alerts()
    thresholds = renderer.load_thresholds()
    thresholds["job"] = JOB
    thresholds["advisor"].update(busy_window="5s", peak_window="1m")
    return {"name": "advisor", "rules": renderer.advisor_records(thresholds)}


BROKEN_QUERY = {
    "name": "custom_broken",
    "sql": "SELECT 1/0 AS v",
    "metrics": [{"name": "custom_broken_value", "help": "Always fails.", "value": "v"}],
}

# The workload on the "busy" target (max_connections 30, 3 reserved: 27 slots for roles).
WEB = SessionSpec("idle", application_name="web", host="127.0.0.1")
WEB_TX = SessionSpec("idle in transaction", application_name="web", host="127.0.0.1")
BATCH = SessionSpec("idle", application_name="batch")
BATCH_ABORTED = SessionSpec("idle in transaction (aborted)", application_name="batch")
BATCH_ACTIVE = SessionSpec("active", application_name="batch")
REPORTING = SessionSpec("idle", user="reporter", dbname="shop", application_name="reporting")
WORKLOAD = [WEB] * 6 + [WEB_TX] * 3 + [BATCH] * 4 + [BATCH_ABORTED] + [BATCH_ACTIVE] * 2
WORKLOAD += [REPORTING] * 3
LOCKER = SessionSpec("idle in transaction", application_name="locker")
WAITER = SessionSpec("active", application_name="waiter")
# 13 idle, 4 idle in transaction (the locker too), 1 aborted, 3 active (the waiter too).
BY_STATE = {"idle": 13, "idle in transaction": 4, "idle in transaction (aborted)": 1, "active": 3}
USED = sum(BY_STATE.values()) + 1  # + the exporter's own session
UTILIZATION = USED / 27


def fill(expr: str, target: str, instance: str, interval: str = "1s") -> str:
    """The query Grafana sends: variables replaced by the values the test knows."""
    values = {
        "job": JOB,
        "instance": instance,  # dots match themselves too
        "target": target,
        "pgbouncer": "bouncer",
        "__rate_interval": RATE_INTERVAL,
        "__interval": interval,
        "__range": "1m",
    }

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    # $1 is label_replace's group reference, not a variable (Grafana leaves it as it is).
    out = re.sub(r"\$\{([a-zA-Z_]\w*)(?::\w+)?\}|\$([a-zA-Z_]\w*)", sub, expr)
    assert not re.search(r"\$(?!\d)", out), out
    return out


def panel_queries(uid: str) -> dict[tuple[str, str], str]:
    """{(panel title, refId): expr} of one dashboard."""
    (d,) = [d for d in load_dashboards().values() if d["uid"] == uid]
    out = {}
    for p in iter_panels(d["panels"]):
        for t in p["targets"]:
            out[(p["title"], t["refId"])] = t["expr"]
    return out


def by(samples: list[tuple[dict[str, str], float]], *labels: str) -> dict[Any, float]:
    """{label value (or tuple of them): value}."""
    out = {}
    for metric, value in samples:
        key = tuple(metric.get(label, "") for label in labels)
        assert key not in out, f"two series for {key}: {samples}"
        out[key[0] if len(key) == 1 else key] = value
    return out


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9)


def test_every_panel_against_prometheus(exporter_for, pgbouncer_for) -> None:
    prometheus_bin = require_program("prometheus")
    # Its log read by the exporter (the "Refused connections" row), with setup times.
    busy = new_cluster(
        "18",
        max_connections=30,
        logging_collector="on",
        log_destination="csvlog",
        log_directory="log",
        log_connections="receipt,authentication,authorization,setup_durations",
    )
    quiet = None
    prometheus = None
    pooled = None
    try:
        quiet = new_cluster("18", max_connections=40)
        # One client through PgBouncer: pool app/postgres with one idle server connection. It
        # stays idle for the whole test: PgBouncer moves a server idle for server_check_delay
        # (30 s by default, less than this test can take on a loaded machine) to "used".
        bouncer = pgbouncer_for(quiet, server_check_delay=3600)
        pooled = psycopg.connect(bouncer.dsn("postgres", "app"), autocommit=True)
        pooled.execute("SELECT 1")
        busy.execute(
            "CREATE ROLE reporter LOGIN CONNECTION LIMIT 5",
            "CREATE DATABASE shop CONNECTION LIMIT 4",
            "CREATE TABLE locked_table (id int)",
        )
        running = exporter_for(
            {
                "targets": [
                    # One login check, at the first scrape: the panels show its result.
                    {
                        "name": "busy",
                        "dsn": busy.dsn(),
                        "login_check": {"interval": "1h"},
                        "labels": {"node_instance": NODE_INSTANCE},
                        "log": {"directory": str(busy.data / "log"), "format": "csvlog"},
                    },
                    {"name": "quiet", "dsn": quiet.dsn()},
                    {"name": "bouncer", "kind": "pgbouncer", "dsn": bouncer.dsn()},
                ],
                "queries": [BROKEN_QUERY],
                # Idle sessions count as reclaimable after 1 s (10 minutes by default).
                "collectors": {"params": {"connections": {"reclaimable_idle_age": 1}}},
            }
        )
        instance = f"127.0.0.1:{running.exporter.port}"
        rules = {"groups": [*RULES["groups"], advisor_records(), pooler_records()]}
        prometheus = PrometheusServer(prometheus_bin, [instance], job=JOB, rules=rules).start()
        with Workload(busy.dsn()) as workload:
            run_checks(prometheus, workload, instance)
    finally:
        if prometheus is not None:
            prometheus.stop()
        if pooled is not None:
            pooled.close()
        if quiet is not None:
            quiet.stop()
        busy.stop()


NO_SUCH_DB = 'pg_connection_failures_total{target="busy", datname="no_such_db"}'


def refuse_twice(prom: PrometheusServer, workload: Workload) -> None:
    """A login to a missing database, seen by Prometheus, then another: its series rises."""
    for n in (1, 2):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**{**workload.base, "dbname": "no_such_db"}, connect_timeout=5).close()
        wait_until(
            lambda n=n: [v for _m, v in prom.vector(NO_SUCH_DB)] == [n],
            30,
            0.2,
            f"{n} refusal(s) in prometheus",
        )


def check_refused(r: Result) -> None:
    uid = OVERVIEW_UID
    expect(
        r,
        uid,
        "Log read",
        "A",
        lambda s: assert_equal(by(s, "target"), {"busy": 1}),
    )

    def who(samples: Any) -> None:
        got = by(samples, "reason", "usename", "datname", "client_addr")
        assert list(got) == [("database_does_not_exist", "postgres", "no_such_db", "local")]
        assert got[("database_does_not_exist", "postgres", "no_such_db", "local")] >= 1

    expect(r, uid, "Who was refused", "A", who)
    # The workload's connections set up: 18's three phases, and received -> authorized (the
    # log has receipt and authorization too).
    expect(
        r,
        uid,
        "Connection setup time (p90)",
        "A",
        lambda s: assert_equal(
            set(by(s, "phase")), {"total", "fork", "authentication", "received_to_authorized"}
        ),
    )


def assert_equal(got: Any, want: Any) -> None:
    assert got == want, f"got {got}, want {want}"


def run_checks(prom: PrometheusServer, workload: Workload, instance: str) -> None:
    # A quiet baseline first, so "Above 80% for" sees when utilization crossed the line.
    wait_until(
        lambda: prom.vector('pg_connections_used{target="busy"}'),
        30,
        0.2,
        "prometheus to scrape the exporter",
    )
    refuse_twice(prom, workload)
    opened = time.time()
    workload.open_many(WORKLOAD)
    workload.hold_lock("locked_table", LOCKER)
    workload.wait_for_lock("locked_table", WAITER)

    def settled() -> bool:
        checks = {
            'pg_connections{target="busy", state="idle"}': BY_STATE["idle"],
            'pg_connections{target="busy", state="active"}': BY_STATE["active"],
            'pg_connections_waiting{target="busy", wait_event_type="Lock"}': 1,
            'pg_connections_used{target="busy"}': USED,
            'pg_connections_reclaimable{target="busy"}': BY_STATE["idle"],
            'pg_connections_used{target="quiet"}': 2,  # the exporter and PgBouncer's server
            'pgbouncer_pool_server_idle_connections{target="bouncer", database="app"}': 1,
            'count(ALERTS{alertstate="firing"})': 1,
            # Only the broken query of each of the two targets has failed with an error (a
            # loaded machine may add timeouts, which are not what this checks).
            'count(pg_connections_exporter_query_errors_total{reason="error"} > 0)': 2,
        }
        for expr, want in checks.items():
            got = prom.vector(expr)
            assert got and got[0][1] == want, f"{expr}: {got}, want {want}"
        # The counter has moved within the rate window.
        assert prom.vector(f"rate(pg_connections_exporter_query_errors_total[{RATE_INTERVAL}]) > 0")
        return True

    wait_until(settled, 30, 0.25, "prometheus to see the workload")
    elapsed = time.time() - opened + 2

    results: dict[str, dict[tuple[str, str], list[tuple[dict[str, str], float]]]] = {}
    problems: list[str] = []
    for uid, target in ((OVERVIEW_UID, "busy"), (FLEET_UID, "(busy|quiet|bouncer)")):
        results[uid] = {}
        for (title, ref), expr in panel_queries(uid).items():
            query = fill(expr, target, instance)
            answer = prom.query(query)
            if answer.get("status") != "success":
                problems.append(f"{uid}: panel {title!r} query {ref}: {answer}\n  {query}")
                continue
            data = answer["data"]["result"]
            results[uid][(title, ref)] = [(s["metric"], float(s["value"][1])) for s in data]
            now = time.time()
            ranged = prom.api(
                "query_range", query=query, start=f"{now - 30:.3f}", end=f"{now:.3f}", step="1"
            )
            if ranged.get("status") != "success":
                problems.append(f"{uid}: panel {title!r} query {ref} (range): {ranged}")
            if not data and not {(uid, title), (uid, title, ref)} & MAY_BE_EMPTY:
                problems.append(f"{uid}: panel {title!r} query {ref} is empty:\n  {query}")
    assert not problems, "\n".join(problems)

    check_overview(results[OVERVIEW_UID], elapsed)
    check_why_so_many(results[OVERVIEW_UID], elapsed, memory_settings(workload))
    check_overview_pgbouncer(results[OVERVIEW_UID])
    check_fleet(results[FLEET_UID], elapsed)
    check_reclaimable(results[OVERVIEW_UID], elapsed)
    check_poolers(prom, instance)
    check_refused(results[OVERVIEW_UID])


POOLER_PANELS = (
    "Poolers may open, of the slots left",
    "Poolers' figure and the server's slots",
    "Poolers of this server",
    "Biggest pools",
)


def check_poolers(prom: PrometheusServer, instance: str) -> None:
    """The row "Poolers against the server" for quiet, worked out from the settings: the one
    PgBouncer in front (default_pool_size 2, no reserve, no limits; one pool, app/postgres,
    user=postgres) may open 2; quiet has 40 - 3 = 37 ordinary slots, 2 used (the exporter
    and PgBouncer's one server connection), so 1 direct and 36 left: 2 / 36."""
    queries = {k: v for k, v in panel_queries(OVERVIEW_UID).items() if k[0] in POOLER_PANELS}
    assert len(queries) == 1 + 4 + 2 + 1, sorted(queries)
    got = {key: prom.vector(fill(expr, "quiet", instance)) for key, expr in queries.items()}
    assert [v for _m, v in got[(POOLER_PANELS[0], "A")]] == [approx(2 / 36)]
    figures = [got[(POOLER_PANELS[1], ref)][0][1] for ref in "ABCD"]
    assert figures == [2, 37, 1, 36]
    assert by(got[(POOLER_PANELS[2], "A")], "target") == {"bouncer": 2}
    assert by(got[(POOLER_PANELS[2], "B")], "target") == {"bouncer": 1}
    pools = by(got[(POOLER_PANELS[3], "A")], "target", "database", "user", "limited_by", "exists")
    assert pools == {("bouncer", "app", "postgres", "pool_size+reserve_pool", "true"): 2}


Result = dict[tuple[str, str], list[tuple[dict[str, str], float]]]


def expect(results: Result, uid: str, title: str, ref: str, check: Callable[[Any], None]) -> None:
    samples = results[(title, ref)]
    try:
        check(samples)
    except AssertionError as exc:
        raise AssertionError(f"{uid}: panel {title!r} query {ref}: {samples}\n{exc}") from exc


def check_overview(r: Result, elapsed: float) -> None:
    uid = OVERVIEW_UID

    def eq(title: str, ref: str, want: Any, *labels: str) -> None:
        def check(samples: Any) -> None:
            got = by(samples, *labels) if labels else [v for _m, v in samples]
            assert got == want, f"got {got}, want {want}"

        expect(r, uid, title, ref, check)

    def between(title: str, ref: str, low: float, high: float) -> None:
        def check(samples: Any) -> None:
            assert samples and all(low < v <= high for _m, v in samples)

        expect(r, uid, title, ref, check)

    eq("Utilization", "A", {"busy": approx(UTILIZATION)}, "target")
    eq("Slots", "A", [USED])
    eq("Slots", "B", [27 - USED])
    eq("Slots", "C", [3])
    eq("Slots", "D", [30])
    between("Above 80% for", "A", 0, elapsed)  # crossed 80% when the workload opened
    expect(r, uid, "Projected utilization in 1h", "A", lambda s: len(s) == 1 or _fail())
    all_states = {**dict.fromkeys(["fastpath function call", "disabled"], 0), **BY_STATE}
    eq("Connections by state, under the limits", "A", all_states, "state")
    eq("Connections by state, under the limits", "B", [30])
    eq("Connections by state, under the limits", "C", [27])
    eq("Utilization and 1h projection", "A", [approx(UTILIZATION)])
    eq("Login check", "A", {"busy": 1}, "target")
    eq("Configuration", "A", [1])
    eq("Configuration", "B", [])
    between("Login check duration", "A", 0, 5)
    between("Firing alerts", "A", -1, elapsed)
    expect(
        r,
        uid,
        "Firing alerts",
        "A",
        lambda s: (
            set(by(s, "alertname", "target")) == {("PostgresConnectionsHigh", "busy")} or _fail()
        ),
    )
    apps = {"web": 9, "batch": 7, "reporting": 3, "locker": 1, "waiter": 1}
    eq("Top applications now", "A", apps, "application_name")

    idle_tx, aborted = "idle in transaction", "idle in transaction (aborted)"
    eq(
        "Top databases by state",
        "A",
        {
            ("postgres", "idle"): 10,
            ("postgres", idle_tx): 4,
            ("postgres", aborted): 1,
            ("postgres", "active"): 3,
            ("shop", "idle"): 3,
        },
        "datname",
        "state",
    )
    eq(
        "Top users by state",
        "A",
        {
            ("postgres", "idle"): 10,
            ("postgres", idle_tx): 4,
            ("postgres", aborted): 1,
            ("postgres", "active"): 3,
            ("reporter", "idle"): 3,
        },
        "usename",
        "state",
    )
    eq(
        "Top applications by state",
        "A",
        {
            ("web", "idle"): 6,
            ("web", idle_tx): 3,
            ("batch", "idle"): 4,
            ("batch", aborted): 1,
            ("batch", "active"): 2,
            ("reporting", "idle"): 3,
            ("locker", idle_tx): 1,
            ("waiter", "active"): 1,
        },
        "application_name",
        "state",
    )
    eq(
        "Top client addresses by state",
        "A",
        {
            ("127.0.0.1", "idle"): 6,
            ("127.0.0.1", idle_tx): 3,
            ("local", "idle"): 7,
            ("local", aborted): 1,
            ("local", "active"): 3,
            ("local", idle_tx): 1,
        },
        "client_addr",
        "state",
    )
    eq("Idle in transaction", "A", {idle_tx: 4, aborted: 1}, "state")
    expect(
        r,
        uid,
        "Oldest sessions",
        "A",
        lambda s: (
            (
                set(by(s, "state")) == {"active", idle_tx, aborted}
                and all(0 < v <= elapsed for v in by(s, "state").values())
            )
            or _fail()
        ),
    )
    between("Oldest sessions", "B", 0, elapsed)
    eq(
        "Non-idle sessions in state over 5 min",
        "A",
        dict.fromkeys(["active", idle_tx, aborted, "fastpath function call", "disabled"], 0),
        "state",
    )
    timeouts = ["idle_in_transaction_session_timeout", "idle_session_timeout", "statement_timeout"]
    eq("Session timeouts", "A", dict.fromkeys(timeouts, 0), "setting")
    between("Oldest session by state", "B", 0, elapsed)
    non_idle = sum(BY_STATE.values()) - BY_STATE["idle"]
    for title, total in (
        ("Time in state, non-idle sessions", non_idle),
        ("Time in state, idle sessions", BY_STATE["idle"]),
    ):
        expect(r, uid, title, "A", lambda s, total=total: _check_buckets(by(s, "le"), total))
    eq("Waiting on locks", "A", [1])
    waits = dict.fromkeys(["LWLock", "BufferPin", "IO", "IPC", "Extension"], 0)
    eq(
        "Waiting sessions by wait event type",
        "A",
        {**waits, "Lock": 1, "Timeout": 2},
        "wait_event_type",
    )
    eq("Database connection limits used", "A", {"shop": approx(3 / 4)}, "datname")
    eq("Database limits: used and limit", "A", {"shop": 3}, "datname")
    eq("Database limits: used and limit", "B", {"shop": 4}, "datname")
    eq("Role connection limits used", "A", {"reporter": approx(3 / 5)}, "rolname")
    eq("Role limits: used and limit", "A", {"reporter": 3}, "rolname")
    eq("Role limits: used and limit", "B", {"reporter": 5}, "rolname")
    eq("Target up", "A", [1])
    eq("Target up", "B", [1])
    between("Scrape and query durations", "A", 0, 10)
    queries = {"connections", "connection_slots", "connection_limits", "connection_settings"}
    queries |= {"session_statistics", "connection_age", "memory_settings"}
    expect(
        r,
        uid,
        "Scrape and query durations",
        "B",
        lambda s: set(by(s, "query")) == queries | {"custom_broken"} or _fail(),
    )
    expect(
        r,
        uid,
        "Query errors",
        "A",
        lambda s: (
            (list(by(s, "query", "reason")) == [("custom_broken", "error")] and s[0][1] > 0)
            or _fail()
        ),
    )


def memory_settings(workload: Workload) -> dict[str, int]:
    """The busy server's shared_buffers and work_mem in bytes, read with SHOW's text."""
    conn = workload.connect(SessionSpec("idle", application_name="settings"))
    try:
        return {
            name: int(
                conn.execute(f"SELECT pg_size_bytes(current_setting('{name}'))").fetchone()[0]
            )
            for name in ("shared_buffers", "work_mem")
        }
    finally:
        conn.close()


def check_why_so_many(r: Result, elapsed: float, settings: dict[str, int]) -> None:
    """The row "Why so many connections": the advisor's recording rules, churn, session ends,
    connection age, and the guide's memory arithmetic with the stand-in host RAM."""
    uid = OVERVIEW_UID
    busy_states = BY_STATE["active"] + BY_STATE["idle in transaction"]
    busy_states += BY_STATE["idle in transaction (aborted)"]

    def values(title: str, ref: str) -> list[float]:
        return [v for _m, v in r[(title, ref)]]

    def check(title: str, ref: str, ok: Callable[[list[float]], bool]) -> None:
        expect(r, uid, title, ref, lambda s: ok([v for _m, v in s]) or _fail())

    held = "Slots held and sessions busy"
    check(held, "A", lambda v: v == [USED])
    check(held, "C", lambda v: v == [busy_states])
    # Sessions that stay active or idle in a transaction add no counted time until they leave
    # the state: the advisor counts those in it for longer than its window (5 s here), so
    # between none and all of them by now, plus the exporter's own statements' counted time.
    check(held, "B", lambda v: len(v) == 1 and 0 <= v[0] <= busy_states + 0.5)
    check(held, "D", lambda v: len(v) == 1 and 0 <= v[0] <= busy_states + 1)
    check("Pool a transaction pooler would need", "B", lambda v: v == [USED])
    check(
        "Pool a transaction pooler would need",
        "A",
        lambda v: v == values(held, "D"),
    )
    check(
        "Busy share of the connections held",
        "A",
        lambda v: len(v) == 1 and 0 <= v[0] <= (busy_states + 0.5) / USED,
    )
    check("New connections per second", "A", lambda v: len(v) == 1 and v[0] >= 0)
    outcomes = {"abandoned", "fatal", "killed"}
    expect(
        r,
        uid,
        "Sessions ended badly per minute",
        "A",
        lambda s: set(by(s, "outcome")) == outcomes or _fail(),
    )
    expect(
        r,
        uid,
        "Connection churn by database",
        "A",
        lambda s: {"postgres", "shop"} <= set(by(s, "datname")) or _fail(),
    )
    expect(
        r,
        uid,
        "Busy sessions by database (counted)",
        "B",
        lambda s: {"postgres", "shop"} <= set(by(s, "datname")) or _fail(),
    )
    apps = {"web": 9, "batch": 7, "reporting": 3, "locker": 1, "waiter": 1}
    if elapsed < 55:  # all opened within young_seconds (60 s)
        expect(
            r,
            uid,
            "Young connections by application",
            "A",
            lambda s: by(s, "application_name") == apps or _fail(),
        )
    expect(
        r,
        uid,
        "Connection age",
        "A",
        # Every client connection (not the exporter's), all opened within this test.
        lambda s: by(s, "le")["+Inf"] == by(s, "le")["300.0"] == USED - 1 or _fail(),
    )
    shared, work_mem = settings["shared_buffers"], settings["work_mem"]
    per_connection = 3 * work_mem + 10 * 1024 * 1024
    memory = "Memory: the guide's arithmetic"
    check(memory, "A", lambda v: v == [shared + 30 * per_connection])
    check(memory, "B", lambda v: v == [shared + USED * per_connection])
    check(memory, "C", lambda v: v == [shared])
    check(memory, "D", lambda v: v == [HOST_RAM])
    allowed = "max_connections the host's RAM allows"
    check(allowed, "A", lambda v: v == [(HOST_RAM - shared) // (3 * work_mem)])
    check(allowed, "B", lambda v: v == [HOST_RAM // (10 * 1024 * 1024)])
    check(allowed, "C", lambda v: v == [30])


def check_overview_pgbouncer(r: Result) -> None:
    """The PgBouncer in front of quiet: one pooled client (idle, its server connection idle in
    the pool) and the exporter on the admin console; nobody waits."""
    uid = OVERVIEW_UID

    def eq(title: str, ref: str, want: Any, *labels: str) -> None:
        def check(samples: Any) -> None:
            got = by(samples, *labels) if labels else [v for _m, v in samples]
            assert got == want, f"got {got}, want {want}"

        expect(r, uid, title, ref, check)

    pools = {("app", "postgres"): 1, ("pgbouncer", "pgbouncer"): 1}
    none_waiting = dict.fromkeys(pools, 0)
    eq("Clients waiting in PgBouncer", "A", {"bouncer": 0}, "target")
    eq("Longest client wait", "A", [0])
    eq("Client connections of max_client_conn", "A", {"bouncer": approx(2 / 50)}, "target")
    eq("Server connections: PgBouncer and PostgreSQL", "A", [1])
    eq("Server connections: PgBouncer and PostgreSQL", "B", [USED])
    eq("Pool clients: active and waiting", "A", pools, "database", "user")
    eq("Pool clients: active and waiting", "B", none_waiting, "database", "user")
    for ref, want in zip("ABCDEF", [0, 1, 0, 0, 0, 2], strict=True):
        eq("Pool server connections by state", ref, [want])
    eq("Pools now", "A", pools, "database", "user")
    eq("Pools now", "B", none_waiting, "database", "user")
    eq("Pools now", "C", none_waiting, "database", "user")
    eq("Pools now", "D", none_waiting, "database", "user")
    eq(
        "Pools now",
        "E",
        {("app", "postgres"): 1, ("pgbouncer", "pgbouncer"): 0},
        "database",
        "user",
    )
    for ref in "ABC":
        expect(
            r,
            uid,
            "Pooled queries and client wait",
            ref,
            lambda s: set(by(s, "database")) == {"app", "pgbouncer"} or _fail(),
        )


def check_fleet(r: Result, elapsed: float) -> None:
    uid = FLEET_UID

    def eq(title: str, ref: str, want: Any, label: str | None = "target") -> None:
        def check(samples: Any) -> None:
            got = by(samples, label) if label else [v for _m, v in samples]
            assert got == want, f"got {got}, want {want}"

        expect(r, uid, title, ref, check)

    eq("Targets", "A", [3], None)
    eq("Targets above 80%", "A", [1], None)
    eq("Targets above 90%", "A", [0], None)
    eq("Targets down", "A", [0], None)
    table = "Targets by utilization"
    # quiet: the exporter's session and PgBouncer's server connection.
    eq(table, "A", {"busy": approx(UTILIZATION), "quiet": approx(2 / 37)})
    eq(table, "B", {"busy": USED, "quiet": 2})
    eq(table, "C", {"busy": 30, "quiet": 40})
    eq(table, "D", {"busy": 27 - USED, "quiet": 35})
    eq(table, "E", {"busy": 5, "quiet": 0})
    eq(table, "F", {"busy": 1, "quiet": 0})
    eq(table, "G", {"busy": 1, "quiet": 1, "bouncer": 1})
    eq("Utilization, top 10 targets", "A", {"busy": approx(UTILIZATION), "quiet": approx(2 / 37)})
    eq("PgBouncers", "A", {"bouncer": approx(2 / 50)})
    eq("PgBouncers", "B", {"bouncer": 0})
    eq("PgBouncers", "C", {"bouncer": 0})
    eq("PgBouncers", "D", {"bouncer": 1})
    expect(
        r,
        uid,
        "Firing alerts",
        "A",
        lambda s: ([m["target"] for m, _v in s] == ["busy"] and -1 < s[0][1] <= elapsed) or _fail(),
    )


def _check_buckets(buckets: dict[str, float], total: float) -> None:
    assert buckets.get("+Inf") == total, f"+Inf bucket {buckets.get('+Inf')}, want {total}"
    ordered = [buckets[le] for le in sorted(buckets, key=float)]
    assert ordered == sorted(ordered), f"buckets not cumulative: {buckets}"
    # Everything opened within the test, well under 10 minutes ago.
    assert buckets[next(le for le in buckets if float(le) == 600)] == total


def _fail() -> None:
    raise AssertionError("unexpected result")


def check_reclaimable(r: Result, elapsed: float) -> None:
    """The "Reclaimable now" row: every idle session of the workload is idle past the 1 s age
    of this exporter; the locker blocks the waiter."""
    uid = OVERVIEW_UID

    def eq(title: str, ref: str, want: Any, *labels: str) -> None:
        def check(samples: Any) -> None:
            got = by(samples, *labels) if labels else [v for _m, v in samples]
            assert got == want, f"got {got}, want {want}"

        expect(r, uid, title, ref, check)

    eq("Reclaimable now", "A", [BY_STATE["idle"]])
    eq("Reclaimable now", "B", [USED])
    eq("Idle for longer than", "A", [1])
    eq(
        "Reclaimable by application",
        "A",
        {"web": 6, "batch": 4, "reporting": 3},
        "application_name",
    )
    eq("Reclaimable by user", "A", {"postgres": 10, "reporter": 3}, "usename")
    eq("Reclaimable by client address", "A", {"127.0.0.1": 6, "local": 7}, "client_addr")
    eq("Blockers", "A", {"locker": 1}, "application_name")
    eq("Blockers", "B", {"locker": 1}, "application_name")
    idle_tx = {"web": 3, "batch": 1, "locker": 1}
    eq("Idle in transaction by application", "A", idle_tx, "application_name")
    expect(
        r,
        uid,
        "Idle in transaction by application",
        "B",
        lambda s: (
            (
                set(by(s, "application_name")) == set(idle_tx)
                and all(0 < v <= elapsed for v in by(s, "application_name").values())
            )
            or _fail()
        ),
    )
