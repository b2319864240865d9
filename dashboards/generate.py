"""Build the Grafana dashboards of pg-connections-exporter as JSON.

The JSON files next to this script are generated: edit this file, then run

    python dashboards/generate.py          # rewrite the JSON files
    python dashboards/generate.py --check  # exit 1 if the JSON files are out of date

tests/test_dashboards.py checks the conventions on the JSON and that it matches this script;
tests/test_dashboards_e2e.py runs every panel's query against a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
# The alerting thresholds have one home, alerts/thresholds.yaml; the dashboards draw the same
# lines from it, so a changed threshold moves the alert and the panels together.
ALERTS = yaml.safe_load((HERE.parent / "alerts" / "thresholds.yaml").read_text())["alerts"]
OVERVIEW_UID = "pgce-overview"
FLEET_UID = "pgce-fleet"
DS = {"type": "prometheus", "uid": "${datasource}"}

# The selector every panel query carries: the variables of the dashboard.
F = 'job=~"$job", instance=~"$instance", target=~"$target"'
# The exporter's own metrics that have no target label.
EXPORTER = 'job=~"$job", instance=~"$instance"'
# PgBouncer panels of the overview: the PgBouncers in front of the server, chosen with the
# `pgbouncer` variable (every PgBouncer target of the selected exporters by default).
FB = 'job=~"$job", instance=~"$instance", target=~"$pgbouncer"'
HIGH = ALERTS["PostgresConnectionsHigh"]["utilization"]
CRITICAL = ALERTS["PostgresConnectionsCritical"]["utilization"]
WAIT_WARNING = ALERTS["PgBouncerClientsWaitingTooLong"]["warning_seconds"]
WAIT_CRITICAL = ALERTS["PgBouncerClientsWaitingTooLong"]["critical_seconds"]
CLIENTS_WARNING = ALERTS["PgBouncerClientConnectionsNearLimit"]["warning_ratio"]
CLIENTS_CRITICAL = ALERTS["PgBouncerClientConnectionsNearLimit"]["critical_ratio"]
UTIL = f"max by (target) (pg_connections_utilization_ratio{{{F}}})"
FIRING_FOR = (
    "max by (alertname, severity, target) "
    '(time() - ALERTS_FOR_STATE{alertname=~"Postgres.*|PgBouncer.*", target=~"$target"}) '
    "and on (alertname, target) "
    'ALERTS{alertname=~"Postgres.*|PgBouncer.*", alertstate="firing", target=~"$target"}'
)


def clients_ratio(selector: str) -> str:
    """A PgBouncer's client connections / max_client_conn."""
    return (
        f"max by (target) (pgbouncer_client_connections{{{selector}}}) "
        f"/ max by (target) (pgbouncer_max_client_connections{{{selector}}} > 0)"
    )


UTIL_THRESHOLDS = {
    "mode": "absolute",
    "steps": [
        {"color": "green", "value": None},
        {"color": "orange", "value": HIGH},
        {"color": "red", "value": CRITICAL},
    ],
}


def yes_no(zero: str, one: str, zero_color: str = "red") -> list[dict]:
    """Value mappings of a 0/1 status: the word for each, 0 coloured as a problem."""
    return [
        {
            "type": "value",
            "options": {
                "0": {"text": zero, "color": zero_color, "index": 0},
                "1": {"text": one, "color": "green", "index": 1},
            },
        }
    ]


UP_MAPPINGS = yes_no("DOWN", "UP")


def q(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series") -> dict:
    """One panel query (refId is set by the panel)."""
    target: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        target.update(instant=True, range=False)
    else:
        target.update(instant=False, range=True)
    target["format"] = fmt
    return target


class Layout:
    """Places panels left to right on Grafana's 24-column grid, with ids."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: dict, w: int, h: int) -> dict:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)
        return panel

    def _newline(self) -> None:
        self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    *,
    defaults: dict | None = None,
    options: dict | None = None,
    overrides: list | None = None,
    **extra: Any,
) -> dict:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, **(defaults or {})},
            "overrides": overrides or [],
        },
        "options": options or {},
        **extra,
    }


def timeseries(
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    *,
    stack: bool = False,
    thresholds: dict | None = None,
    overrides: list | None = None,
    minimum: float | None = 0,
    maximum: float | None = None,
) -> dict:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
    if stack:
        custom.update(stacking={"mode": "normal", "group": "A"}, fillOpacity=60)
    defaults: dict[str, Any] = {"custom": custom}
    if thresholds:
        custom["thresholdsStyle"] = {"mode": "line+area"}
        defaults["thresholds"] = thresholds
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return panel(
        "timeseries",
        title,
        description,
        targets,
        unit,
        defaults=defaults,
        overrides=overrides,
        options={
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def stat(
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    *,
    thresholds: dict | None = None,
    mappings: list | None = None,
    no_value: str | None = None,
    decimals: int | None = None,
) -> dict:
    defaults: dict[str, Any] = {
        "thresholds": thresholds
        or {"mode": "absolute", "steps": [{"color": "text", "value": None}]},
        "mappings": mappings or [],
    }
    if no_value is not None:
        defaults["noValue"] = no_value
    if decimals is not None:
        defaults["decimals"] = decimals
    return panel(
        "stat",
        title,
        description,
        targets,
        unit,
        defaults=defaults,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background" if thresholds or mappings else "value",
            "graphMode": "area",
            "textMode": "value_and_name",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    )


def bargauge(title: str, description: str, targets: list[dict], unit: str, **kw: Any) -> dict:
    return panel(
        "bargauge",
        title,
        description,
        targets,
        unit,
        defaults={"min": 0, **kw.pop("defaults", {})},
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
        },
        **kw,
    )


def table(
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    *,
    renames: dict[str, str],
    units: dict[str, str] | None = None,
    sort_by: str | None = None,
    links: dict[str, list] | None = None,
    cell_thresholds: dict[str, dict] | None = None,
) -> dict:
    overrides = []
    for field, field_unit in (units or {}).items():
        overrides.append(
            {
                "matcher": {"id": "byName", "options": field},
                "properties": [{"id": "unit", "value": field_unit}],
            }
        )
    for field, field_links in (links or {}).items():
        overrides.append(
            {
                "matcher": {"id": "byName", "options": field},
                "properties": [{"id": "links", "value": field_links}],
            }
        )
    for field, steps in (cell_thresholds or {}).items():
        overrides.append(
            {
                "matcher": {"id": "byName", "options": field},
                "properties": [
                    {"id": "thresholds", "value": steps},
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                ],
            }
        )
    return panel(
        "table",
        title,
        description,
        targets,
        unit,
        overrides=overrides,
        options={
            "showHeader": True,
            "sortBy": [{"displayName": sort_by, "desc": True}] if sort_by else [],
        },
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "renameByName": renames},
            },
        ],
    )


def heatmap(title: str, description: str, expr: str) -> dict:
    return panel(
        "heatmap",
        title,
        description,
        [q(expr, "{{le}}", fmt="heatmap")],
        "short",
        options={
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": "s"},
            "rowsFrame": {"layout": "le"},
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "cellValues": {"unit": "short"},
            "tooltip": {"show": True, "yHistogram": True},
        },
    )


def pgbouncer_rows(L: Layout) -> None:
    """Pools of the PgBouncers in front: where clients queue while PostgreSQL looks calm."""
    red_from_1 = {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
    }
    L.row("PgBouncer in front: pools and queueing clients")
    L.add(
        stat(
            "Clients waiting in PgBouncer",
            "Clients that sent a query and wait for a server connection, all pools of the "
            "selected PgBouncers (cl_waiting). PostgreSQL does not see them.",
            [q(f"sum by (target) (pgbouncer_pool_client_waiting_connections{{{FB}}})")],
            "short",
            thresholds=red_from_1,
        ),
        4,
        5,
    )
    L.add(
        stat(
            "Longest client wait",
            f"The oldest waiting client's wait for a server connection, over all pools "
            f"(maxwait). Orange from {WAIT_WARNING}s, red from {WAIT_CRITICAL}s "
            "(PgBouncerClientsWaitingTooLong).",
            [q(f"max by (target) (pgbouncer_pool_max_wait_seconds{{{FB}}})")],
            "s",
            thresholds={
                "mode": "absolute",
                "steps": [
                    {"color": "green", "value": None},
                    {"color": "orange", "value": WAIT_WARNING},
                    {"color": "red", "value": WAIT_CRITICAL},
                ],
            },
        ),
        4,
        5,
    )
    L.add(
        stat(
            "Client connections of max_client_conn",
            f"Client connections / max_client_conn: at 100% PgBouncer refuses new clients. "
            f"Orange from {CLIENTS_WARNING:.0%}, red from {CLIENTS_CRITICAL:.0%} "
            "(PgBouncerClientConnectionsNearLimit).",
            [q(clients_ratio(FB))],
            "percentunit",
            thresholds={
                "mode": "absolute",
                "steps": [
                    {"color": "green", "value": None},
                    {"color": "orange", "value": CLIENTS_WARNING},
                    {"color": "red", "value": CLIENTS_CRITICAL},
                ],
            },
        ),
        4,
        5,
    )
    L.add(
        stat(
            "Server connections: PgBouncer and PostgreSQL",
            "Server connections the selected PgBouncers hold (used_servers), next to the "
            "client backends of this PostgreSQL target (pg_connections_used).",
            [
                q(f"sum(pgbouncer_server_connections{{{FB}}})", "PgBouncer server connections"),
                q(f"max by (target) (pg_connections_used{{{F}}})", "PostgreSQL slots used"),
            ],
            "short",
        ),
        12,
        5,
    )
    L.add(
        timeseries(
            "Pool clients: active and waiting",
            "Client connections of each pool (database/user): active (linked to a server "
            "connection, or idle between transactions) and waiting for a server connection.",
            [
                q(
                    f"max by (target, database, user) "
                    f"(pgbouncer_pool_client_active_connections{{{FB}}})",
                    "{{database}}/{{user}} active",
                ),
                q(
                    f"max by (target, database, user) "
                    f"(pgbouncer_pool_client_waiting_connections{{{FB}}})",
                    "{{database}}/{{user}} waiting",
                ),
            ],
            "short",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Pool server connections by state",
            "Server connections of all selected pools, stacked by state (active: linked to a "
            "client; idle; used: waiting for server_check_query; testing; login), under the "
            "pool sizes of the databases.",
            [
                *(
                    q(f"sum(pgbouncer_pool_server_{state}_connections{{{FB}}})", state)
                    for state in ("active", "idle", "used", "testing", "login")
                ),
                q(
                    f'sum(pgbouncer_database_pool_size{{{FB}, database!="pgbouncer"}})',
                    "pool sizes",
                ),
            ],
            "short",
            stack=True,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "F"},
                    "properties": [
                        {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
                        {"id": "custom.fillOpacity", "value": 0},
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                    ],
                }
            ],
        ),
        12,
        8,
    )
    L.add(
        table(
            "Pools now",
            "Every pool of the selected PgBouncers: clients active and waiting, the longest "
            "wait, server connections active and idle.",
            [
                q(
                    f"max by (target, database, user) (pgbouncer_pool_{m}{{{FB}}})",
                    instant=True,
                    fmt="table",
                )
                for m in (
                    "client_active_connections",
                    "client_waiting_connections",
                    "max_wait_seconds",
                    "server_active_connections",
                    "server_idle_connections",
                )
            ],
            "short",
            renames={
                "Value #A": "clients active",
                "Value #B": "clients waiting",
                "Value #C": "longest wait",
                "Value #D": "servers active",
                "Value #E": "servers idle",
            },
            units={"longest wait": "s"},
            sort_by="clients waiting",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Pooled queries and client wait",
            "Queries and transactions per second through the selected PgBouncers, by "
            "database, and the seconds clients spent waiting for a server connection per "
            "second (the average number of waiting clients).",
            [
                q(
                    f"sum by (database) (rate(pgbouncer_stats_queries_total{{{FB}}}"
                    "[$__rate_interval]))",
                    "{{database}} queries/s",
                ),
                q(
                    f"sum by (database) (rate(pgbouncer_stats_transactions_total{{{FB}}}"
                    "[$__rate_interval]))",
                    "{{database}} transactions/s",
                ),
                q(
                    f"sum by (database) (rate(pgbouncer_stats_client_wait_seconds_total{{{FB}}}"
                    "[$__rate_interval]))",
                    "{{database}} clients waiting (avg)",
                ),
            ],
            "short",
        ),
        12,
        8,
    )


def variables(*, target_multi: bool, pgbouncer: bool = False) -> list[dict]:
    def query_var(name: str, label: str, query: str, multi: bool, include_all: bool) -> dict:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-variable"},
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": include_all,
            **({"allValue": ".*"} if include_all else {}),
            "current": {},
            "hide": 0,
            "regex": "",
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "multi": False,
            "includeAll": False,
        },
        query_var("job", "Job", "label_values(pg_up, job)", True, True),
        query_var("instance", "Instance", 'label_values(pg_up{job=~"$job"}, instance)', True, True),
        query_var(
            "target",
            "Target",
            'label_values(pg_up{job=~"$job", instance=~"$instance"}, target)',
            target_multi,
            target_multi,
        ),
    ] + (
        [
            query_var(
                "pgbouncer",
                "PgBouncer",
                'label_values(pgbouncer_max_client_connections{job=~"$job", '
                'instance=~"$instance"}, target)',
                True,
                True,
            )
        ]
        if pgbouncer
        else []
    )


def dashboard(uid: str, title: str, description: str, panels: list[dict], **kw: Any) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["postgresql", "connections", "pg-connections-exporter"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "panels": panels,
        **kw,
    }


def by_label(metric: str, label: str, name: str) -> dict:
    """Top 10 holders of `label` (database, user, ...) with each one's sessions by state."""
    expr = (
        f"max by ({label}, state) ({metric}{{{F}}}) "
        f"and on ({label}) topk(10, sum by ({label}) (max by ({label}, state) ({metric}{{{F}}})))"
    )
    return timeseries(
        f"Top {name} by state",
        f"Client backends of the 10 {name} holding the most slots, stacked by state ({metric}). "
        f'Past the exporter\'s max_series the tail is folded into {label}="other". '
        "The exporter's own session is not counted.",
        [q(expr, f"{{{{{label}}}}} · {{{{state}}}}")],
        "short",
        stack=True,
    )


def reclaimable_rows(L: Layout) -> None:
    """What terminating long-idle sessions would free now, by holder, and who blocks whom: the
    facts the alerts' descriptions name, for the recovery steps of connection-recovery.md."""
    L.row("Reclaimable now: what ending long-idle sessions would free, and the blockers")
    L.add(
        stat(
            "Reclaimable now",
            "Idle sessions (not in a transaction) idle for longer than the exporter's "
            "reclaimable age: what the guide's kill query, narrowed to that age, would free "
            "now (pg_connections_reclaimable), next to the slots in use.",
            [
                q(f"max by (target) (pg_connections_reclaimable{{{F}}})", "reclaimable"),
                q(f"max by (target) (pg_connections_used{{{F}}})", "in use"),
            ],
            "short",
        ),
        4,
        8,
    )
    L.add(
        stat(
            "Idle for longer than",
            "The reclaimable age: how long a session must have been idle to count "
            "(collectors.params.connections.reclaimable_idle_age; 10 minutes by default).",
            [q(f"max by (target) (pg_connections_reclaimable_idle_age_seconds{{{F}}})", "age")],
            "s",
        ),
        4,
        8,
    )
    for metric, label, name, width in (
        ("pg_connections_reclaimable_by_application", "application_name", "application", 6),
        ("pg_connections_reclaimable_by_user", "usename", "user", 5),
        ("pg_connections_reclaimable_by_client", "client_addr", "client address", 5),
    ):
        L.add(
            bargauge(
                f"Reclaimable by {name}",
                f"Long-idle sessions of the 10 {name}s with the most ({metric}): whose "
                f"sessions step 2 of connection-recovery.md would end. Empty when nothing is "
                f'idle that long; past the exporter\'s max_series the tail is {label}="other".',
                [
                    q(
                        f"topk(10, max by ({label}) ({metric}{{{F}}}) > 0)",
                        f"{{{{{label}}}}}",
                        instant=True,
                    )
                ],
                "short",
            ),
            width,
            8,
        )
    L.add(
        table(
            "Blockers",
            "Applications whose sessions hold a lock other sessions wait for "
            "(pg_blocking_pids): their blocking sessions and the sessions waiting on them. End "
            "the blockers, never their waiters (step 3 of connection-recovery.md). Empty when "
            "nobody waits on a lock.",
            [
                q(
                    f"max by (application_name) (pg_connections_blockers_by_application{{{F}}})",
                    instant=True,
                    fmt="table",
                ),
                q(
                    f"max by (application_name) (pg_connections_blocked_by_application{{{F}}})",
                    instant=True,
                    fmt="table",
                ),
            ],
            "short",
            renames={"Value #A": "blocking sessions", "Value #B": "sessions waiting on them"},
            sort_by="sessions waiting on them",
        ),
        12,
        7,
    )
    L.add(
        table(
            "Idle in transaction by application",
            "Sessions idle in a transaction (aborted or not) by application, and how long the "
            "oldest of each has been (pg_connections_idle_in_transaction_oldest_seconds): "
            "step 4 of connection-recovery.md.",
            [
                q(
                    f"sum by (application_name) (max by (application_name, state) "
                    f'(pg_connections_by_application{{{F}, state=~"idle in transaction.*"}})) '
                    "> 0",
                    instant=True,
                    fmt="table",
                ),
                q(
                    f"max by (application_name) "
                    f"(pg_connections_idle_in_transaction_oldest_seconds{{{F}}})",
                    instant=True,
                    fmt="table",
                ),
            ],
            "short",
            renames={"Value #A": "idle in transaction", "Value #B": "oldest"},
            units={"oldest": "s"},
            sort_by="oldest",
        ),
        12,
        7,
    )


# Session states that need a server connection of their own (what a transaction pooler
# serves): the advisor's busy sessions (scripts/render_alerts.py, BUSY_STATES).
BUSY_STATES = "active|idle in transaction.*|fastpath function call"
# The guide's per-connection memory ("Each connection uses ~5-10MB RAM", "each connection
# costs ~10MB RAM") and its work_mem rule: work_mem = (RAM - shared_buffers) /
# (max_connections * 3), i.e. each connection may use work_mem three times.
CONNECTION_BYTES = 10 * 1024 * 1024
WORK_MEM_PER_CONNECTION = 3
# node_exporter's memory of the host a target runs on: joined through a `node_instance` label
# the exporter's target carries (targets[].labels), equal to node_exporter's `instance`.
NODE_RAM = (
    'max by (node_instance) (label_replace(node_memory_MemTotal_bytes, "node_instance", "$1", '
    '"instance", "(.*)"))'
)


def setting_bytes(name: str) -> str:
    return f'max by (target) (pg_connections_memory_setting_bytes{{{F}, setting="{name}"}})'


def host_ram() -> str:
    """The RAM of each target's host, by target (empty without node_exporter and the label)."""
    return (
        f"max by (target) (max by (target, node_instance) (pg_connections_max{{{F}}}) * 0 "
        f"+ on (node_instance) group_left () {NODE_RAM})"
    )


def why_so_many_rows(L: Layout) -> None:
    """Why the slots are full: slots held against sessions busy (the pooling advisor's
    recording rules), churn and how sessions end, connection age, and the guide's memory
    arithmetic."""
    busy_now = f'sum by (target) (pg_connections{{{F}, state=~"{BUSY_STATES}"}})'
    L.row("Why so many connections")
    L.add(
        timeseries(
            "Slots held and sessions busy",
            "Connections held (pg_connections_used) against the sessions that need one "
            "(active or idle in a transaction): the advisor's figure "
            "(target:pg_connections_busy:avg over alerts/thresholds.yaml's busy_window: the "
            "time the server counted in those states plus the sessions in them for longer, "
            "PostgreSQL 14+; the sampled states before) "
            "and the sampled states now; and the pool a transaction-mode pooler would need "
            "(target:pg_connections_pooler_size:peak, the peak of the advisor's figure over "
            "peak_window). The advisor's series need the shipped recording rules.",
            [
                q(f"max by (target) (pg_connections_used{{{F}}})", "slots held"),
                q(f"max by (target) (target:pg_connections_busy:avg{{{F}}})", "busy (advisor)"),
                q(busy_now, "busy now (sampled)"),
                q(
                    f"max by (target) (target:pg_connections_pooler_size:peak{{{F}}})",
                    "pooler size needed",
                ),
            ],
            "short",
        ),
        12,
        8,
    )
    L.add(
        stat(
            "Pool a transaction pooler would need",
            "The advisor's pooler size (peak of the busy sessions, see the panel beside) next "
            "to the slots held today: the slots a transaction-mode PgBouncer would free.",
            [
                q(
                    f"max by (target) (target:pg_connections_pooler_size:peak{{{F}}})",
                    "pooler size",
                ),
                q(f"max by (target) (pg_connections_used{{{F}}})", "slots held"),
            ],
            "short",
        ),
        6,
        4,
    )
    L.add(
        stat(
            "Busy share of the connections held",
            "The advisor's busy sessions / connections held "
            "(target:pg_connections_busy:ratio). Low while the slots fill up: a pooler would "
            "fix it (PostgresConnectionsMostlyIdle).",
            [q(f"max by (target) (target:pg_connections_busy:ratio{{{F}}})")],
            "percentunit",
        ),
        6,
        4,
    )
    L.add(
        stat(
            "New connections per second",
            "Sessions established per second, all databases (pg_sessions_total, PostgreSQL "
            "14+): high and steady is an application that connects per request "
            "(PostgresConnectionChurnHigh).",
            [q(f"sum by (target) (rate(pg_sessions_total{{{F}}}[$__rate_interval]))")],
            "ops",
        ),
        6,
        4,
    )
    L.add(
        stat(
            "Sessions ended badly per minute",
            "Sessions ended abandoned (the client vanished), fatal (a FATAL error, e.g. "
            "idle_in_transaction_session_timeout) or killed (pg_terminate_backend), per "
            "minute (pg_sessions_ended_total, PostgreSQL 14+).",
            [
                q(
                    f"60 * sum by (outcome) (rate(pg_sessions_ended_total{{{F}}}"
                    "[$__rate_interval]))",
                    "{{outcome}}",
                )
            ],
            "short",
        ),
        6,
        4,
    )
    L.add(
        timeseries(
            "Connection churn by database",
            "New connections per second by database (pg_sessions_total), and sessions ended "
            "abandoned, fatal or killed per second by outcome (pg_sessions_ended_total), "
            "PostgreSQL 14+.",
            [
                q(
                    f"sum by (datname) (rate(pg_sessions_total{{{F}}}[$__rate_interval]))",
                    "{{datname}} new",
                ),
                q(
                    f"sum by (outcome) (rate(pg_sessions_ended_total{{{F}}}[$__rate_interval]))",
                    "ended {{outcome}}",
                ),
            ],
            "ops",
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Busy sessions by database (counted)",
            "The average number of sessions active and idle in a transaction, by database, "
            "from the time the server counted in those states (pg_sessions_active_seconds_total, "
            "pg_sessions_idle_in_transaction_seconds_total, PostgreSQL 14+; a statement counts "
            "when it ends).",
            [
                q(
                    f"sum by (datname) (rate(pg_sessions_active_seconds_total{{{F}}}"
                    "[$__rate_interval]))",
                    "{{datname}} active",
                ),
                q(
                    f"sum by (datname) (rate(pg_sessions_idle_in_transaction_seconds_total"
                    f"{{{F}}}[$__rate_interval]))",
                    "{{datname}} idle in transaction",
                ),
            ],
            "short",
            stack=True,
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Young connections by application",
            "Open connections younger than young_seconds (pg_connections_young_age_seconds, "
            "default 60 s), for the 10 applications with the most "
            "(pg_connections_young_by_application): an application whose connections are all "
            "young reconnects instead of pooling.",
            [
                q(
                    f"topk(10, max by (application_name) "
                    f"(pg_connections_young_by_application{{{F}}}))",
                    "{{application_name}}",
                )
            ],
            "short",
        ),
        12,
        8,
    )
    L.add(
        heatmap(
            "Connection age",
            "Open client connections by seconds since they were made (the "
            "pg_connections_age_seconds gauge histogram): pooled connections are hours old, "
            "reconnecting ones seconds.",
            f"max by (le) (sum by (le, job, instance) (pg_connections_age_seconds_bucket{{{F}}}))",
        ),
        12,
        8,
    )
    per_connection = (
        f"({WORK_MEM_PER_CONNECTION} * {setting_bytes('work_mem')} + {CONNECTION_BYTES})"
    )
    L.add(
        timeseries(
            "Memory: the guide's arithmetic",
            "shared_buffers plus, for every connection, the guide's ~10 MB and work_mem "
            f"{WORK_MEM_PER_CONNECTION} times (its rule work_mem = (RAM - shared_buffers) / "
            f"(max_connections * {WORK_MEM_PER_CONNECTION})): at max_connections, and for the "
            "slots held now. With node_exporter on the host (a node_instance label on the "
            "target equal to node_exporter's instance), its RAM beside them.",
            [
                q(
                    f"{setting_bytes('shared_buffers')} + max by (target) "
                    f"(pg_connections_max{{{F}}}) * {per_connection}",
                    "at max_connections",
                ),
                q(
                    f"{setting_bytes('shared_buffers')} + max by (target) "
                    f"(pg_connections_used{{{F}}}) * {per_connection}",
                    "for the slots held now",
                ),
                q(setting_bytes("shared_buffers"), "shared_buffers"),
                q(host_ram(), "host RAM (node_exporter)"),
            ],
            "bytes",
        ),
        12,
        8,
    )
    L.add(
        stat(
            "max_connections the host's RAM allows",
            "From the guide, with the RAM of node_exporter on the same host (give the target "
            "a label node_instance equal to node_exporter's instance): by its work_mem rule, "
            f"(RAM - shared_buffers) / ({WORK_MEM_PER_CONNECTION} * work_mem); by its ~10 MB "
            "per connection, RAM / 10 MB; next to max_connections now. Empty without "
            "node_exporter.",
            [
                q(
                    f"floor(({host_ram()} - {setting_bytes('shared_buffers')}) "
                    f"/ ({WORK_MEM_PER_CONNECTION} * {setting_bytes('work_mem')}))",
                    "by work_mem",
                ),
                q(f"floor({host_ram()} / {CONNECTION_BYTES})", "by 10 MB each"),
                q(f"max by (target) (pg_connections_max{{{F}}})", "max_connections now"),
            ],
            "short",
        ),
        12,
        8,
    )


def overview() -> dict:
    L = Layout()
    limit_expr = (
        f"max by (target) (pg_connections_max{{{F}}}) "
        f"- max by (target) (pg_connections_superuser_reserved{{{F}}}) "
        f"- max by (target) (pg_connections_reserved{{{F}}})"
    )
    above_high = f"({UTIL} > {HIGH})"
    above_for = (
        f"(time() - max_over_time(timestamp({UTIL} <= {HIGH})[24h:$__interval])) "
        f"and {above_high} or {above_high} * 0 + 86400 or {UTIL} * 0"
    )

    L.row("Saturation: how close to the limit, since when")
    L.add(
        stat(
            "Utilization",
            "Client backends / (max_connections - superuser_reserved_connections - "
            "reserved_connections). At 100% ordinary roles get 'sorry, too many clients "
            "already'. Orange from 80% (PostgresConnectionsHigh), red from 90% "
            "(PostgresConnectionsCritical).",
            [q(UTIL, "{{target}}")],
            "percentunit",
            thresholds=UTIL_THRESHOLDS,
        ),
        4,
        5,
    )
    L.add(
        stat(
            "Slots",
            "max_connections slots: used by client backends (the exporter's own included), still "
            "available to ordinary roles, and reserved (superuser_reserved_connections + "
            "reserved_connections), out of max_connections.",
            [
                q(f"max by (target) (pg_connections_used{{{F}}})", "used"),
                q(f"max by (target) (pg_connections_available{{{F}}})", "available"),
                q(
                    f"max by (target) (pg_connections_superuser_reserved{{{F}}}) "
                    f"+ max by (target) (pg_connections_reserved{{{F}}})",
                    "reserved",
                ),
                q(f"max by (target) (pg_connections_max{{{F}}})", "max_connections"),
            ],
            "short",
        ),
        8,
        5,
    )
    L.add(
        stat(
            "Above 80% for",
            "How long utilization has been above 80% without a break (looking back 24h, so 1 "
            "day means 'at least a day'); 'below 80%' when it is not above now.",
            [q(above_for, "{{target}}")],
            "s",
            mappings=[
                {
                    "type": "value",
                    "options": {"0": {"text": "below 80%", "color": "green", "index": 0}},
                }
            ],
            thresholds={
                "mode": "absolute",
                "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}],
            },
        ),
        4,
        5,
    )
    L.add(
        stat(
            "Projected utilization in 1h",
            "Where utilization will be in an hour if the last 30 minutes' linear trend "
            "continues (predict_linear).",
            [
                q(
                    f"max by (target) (predict_linear("
                    f"pg_connections_utilization_ratio{{{F}}}[30m], 3600))",
                    "{{target}}",
                )
            ],
            "percentunit",
            thresholds=UTIL_THRESHOLDS,
        ),
        4,
        5,
    )
    L.add(
        stat(
            "Time to exhaustion",
            "At the last 30 minutes' rate of growth (deriv), time until utilization reaches "
            "100%. 'not rising' when utilization is flat or falling.",
            [
                q(
                    f"(1 - {UTIL}) / (max by (target) "
                    f"(deriv(pg_connections_utilization_ratio{{{F}}}[30m])) > 0)",
                    "{{target}}",
                )
            ],
            "s",
            no_value="not rising",
        ),
        4,
        5,
    )
    state_overrides = [
        {
            "matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [
                {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
                {"id": "custom.fillOpacity", "value": 0},
                {"id": "custom.lineWidth", "value": 2},
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "color", "value": {"mode": "fixed", "fixedColor": color}},
            ],
        }
        for ref, color in (("B", "red"), ("C", "orange"))
    ]
    L.add(
        timeseries(
            "Connections by state, under the limits",
            "Client backends stacked by state (the exporter's own session left out), under "
            "max_connections (red dashes) and the limit for ordinary roles, max_connections "
            "minus the reserved slots (orange dashes).",
            [
                q(f"max by (state) (pg_connections{{{F}}})", "{{state}}"),
                q(f"max by (target) (pg_connections_max{{{F}}})", "max_connections"),
                q(limit_expr, "limit for ordinary roles"),
            ],
            "short",
            stack=True,
            overrides=state_overrides,
        ),
        12,
        9,
    )
    L.add(
        timeseries(
            "Utilization and 1h projection",
            "Utilization against the 80% and 90% lines of the alerts, and where the last 30 "
            "minutes' linear trend (predict_linear) puts it one hour later.",
            [
                q(UTIL, "utilization"),
                q(
                    f"max by (target) (predict_linear("
                    f"pg_connections_utilization_ratio{{{F}}}[30m], 3600))",
                    "projected in 1h",
                ),
            ],
            "percentunit",
            thresholds=UTIL_THRESHOLDS,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                        {"id": "custom.fillOpacity", "value": 0},
                    ],
                }
            ],
        ),
        12,
        9,
    )
    L.add(
        table(
            "Firing alerts",
            "PostgresConnections* alerts firing for this target (from the ALERTS series of "
            "Prometheus) and how long each has been active.",
            [q(FIRING_FOR, instant=True, fmt="table")],
            "s",
            renames={"Value": "active for"},
            sort_by="active for",
        ),
        12,
        6,
    )
    L.add(
        bargauge(
            "Top applications now",
            "The 5 application_names holding the most slots right now, all states together "
            "(details in the rows below).",
            [
                q(
                    f"topk(5, sum by (application_name) (max by (application_name, state) "
                    f"(pg_connections_by_application{{{F}}})))",
                    "{{application_name}}",
                    instant=True,
                )
            ],
            "short",
        ),
        12,
        6,
    )

    pgbouncer_rows(L)

    L.row("Who holds the slots")
    L.add(by_label("pg_connections_by_database", "datname", "databases"), 12, 8)
    L.add(by_label("pg_connections_by_user", "usename", "users"), 12, 8)
    L.add(by_label("pg_connections_by_application", "application_name", "applications"), 12, 8)
    L.add(by_label("pg_connections_by_client", "client_addr", "client addresses"), 12, 8)

    reclaimable_rows(L)

    L.row("Idle in transaction and long-running sessions")
    L.add(
        stat(
            "Idle in transaction",
            "Sessions inside an open transaction doing nothing: they hold a slot, their locks "
            "and back vacuum up. 'aborted' ones wait for a ROLLBACK.",
            [q(f'max by (state) (pg_connections{{{F}, state=~"idle in transaction.*"}})')],
            "short",
            thresholds={
                "mode": "absolute",
                "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}],
            },
        ),
        6,
        6,
    )
    L.add(
        stat(
            "Oldest sessions",
            "Longest time any session has been in its state (active: the longest-running "
            "statement; idle in transaction: the longest pause) and the age of the oldest "
            "open transaction.",
            [
                q(
                    f"max by (state) (pg_connections_max_state_duration_seconds"
                    f'{{{F}, state=~"active|idle in transaction.*"}})',
                    "{{state}}",
                ),
                q(
                    f"max by (target) (pg_connections_max_transaction_duration_seconds{{{F}}})",
                    "oldest transaction",
                ),
            ],
            "s",
        ),
        6,
        6,
    )
    L.add(
        stat(
            "Non-idle sessions in state over 5 min",
            "Active and idle-in-transaction sessions that have been in their state for more "
            "than 300 s, from the pg_connections_state_duration_seconds buckets.",
            [
                q(
                    f"max by (state) (pg_connections_state_duration_seconds_gcount"
                    f'{{{F}, state!="idle"}}) - max by (state) '
                    f"(pg_connections_state_duration_seconds_bucket"
                    f'{{{F}, state!="idle", le=~"300(.0)?"}})',
                    "{{state}}",
                )
            ],
            "short",
        ),
        6,
        6,
    )
    L.add(
        stat(
            "Session timeouts",
            "idle_in_transaction_session_timeout, idle_session_timeout and statement_timeout "
            "as new sessions get them; 0 means off (idle-in-transaction sessions never end).",
            [q(f"max by (setting) (pg_connections_timeout_seconds{{{F}}})", "{{setting}}")],
            "s",
        ),
        6,
        6,
    )
    L.add(
        timeseries(
            "Oldest session by state",
            "Longest time in the current state, by state, and the age of the oldest open "
            "transaction: a line climbing steadily is one session that never lets go.",
            [
                q(
                    f"max by (state) (pg_connections_max_state_duration_seconds"
                    f'{{{F}, state!="idle"}})',
                    "{{state}}",
                ),
                q(
                    f"max by (target) (pg_connections_max_transaction_duration_seconds{{{F}}})",
                    "oldest transaction",
                ),
            ],
            "s",
        ),
        8,
        8,
    )
    L.add(
        heatmap(
            "Time in state, non-idle sessions",
            "Active and idle-in-transaction sessions by seconds since their last state change "
            "(the pg_connections_state_duration_seconds gauge histogram).",
            f"max by (le) (sum by (le, job, instance) (pg_connections_state_duration_seconds_bucket"
            f'{{{F}, state!="idle"}}))',
        ),
        8,
        8,
    )
    L.add(
        heatmap(
            "Time in state, idle sessions",
            "Idle sessions by seconds since their last statement: a pool keeping idle sessions "
            "for hours shows up at the top.",
            f'max by (le) (pg_connections_state_duration_seconds_bucket{{{F}, state="idle"}})',
        ),
        8,
        8,
    )

    L.row("Sessions waiting on locks")
    L.add(
        stat(
            "Waiting on locks",
            "Sessions waiting for a heavyweight lock (wait_event_type Lock): a pile-up behind "
            "one holder, often an idle-in-transaction session.",
            [q(f'max by (target) (pg_connections_waiting{{{F}, wait_event_type="Lock"}})')],
            "short",
            thresholds={
                "mode": "absolute",
                "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
            },
        ),
        6,
        7,
    )
    L.add(
        timeseries(
            "Waiting sessions by wait event type",
            "Sessions waiting on something other than their client, by wait_event_type "
            "(Lock, LWLock, IO, IPC, Timeout — pg_sleep is Timeout —, ...).",
            [
                q(
                    f"max by (wait_event_type) (pg_connections_waiting{{{F}}})",
                    "{{wait_event_type}}",
                )
            ],
            "short",
            stack=True,
        ),
        18,
        7,
    )

    L.row("Per-database and per-role limits")
    for kind, label, what in (("database", "datname", "Database"), ("role", "rolname", "Role")):
        used = f"max by ({label}) (pg_{kind}_connection_limit_used{{{F}}})"
        limit = f"max by ({label}) (pg_{kind}_connection_limit{{{F}}})"
        L.add(
            bargauge(
                f"{what} connection limits used",
                f"Client backends / CONNECTION LIMIT for each {kind} that has one "
                f"(pg_{kind}_connection_limit_used / pg_{kind}_connection_limit); at 100% new "
                f"logins to it are refused. A limit of 0 is left out.",
                [q(f"{used} / ({limit} > 0)", f"{{{{{label}}}}}", instant=True)],
                "percentunit",
                defaults={"max": 1, "thresholds": UTIL_THRESHOLDS},
            ),
            6,
            7,
        )
        L.add(
            table(
                f"{what} limits: used and limit",
                f"Client backends and the CONNECTION LIMIT of each {kind} that has one.",
                [
                    q(used, instant=True, fmt="table"),
                    q(limit, instant=True, fmt="table"),
                ],
                "short",
                renames={"Value #A": "used", "Value #B": "limit"},
                sort_by="used",
            ),
            6,
            7,
        )

    why_so_many_rows(L)

    L.row("Refused logins and exporter health")
    L.add(
        timeseries(
            "Refused logins and connect failures",
            "Failed connection attempts per second by reason, only those happening: the "
            "exporter's own connection, and its login check where configured "
            "(too_many_clients is the server refusing logins).",
            [
                q(
                    f"max by (reason) (rate(pg_connections_exporter_connect_failures_total"
                    f"{{{F}}}[$__rate_interval])) > 0",
                    "exporter: {{reason}}",
                ),
                q(
                    f"max by (reason) (rate(pg_connections_login_check_failures_total"
                    f"{{{F}}}[$__rate_interval])) > 0",
                    "login check: {{reason}}",
                ),
            ],
            "cps",
        ),
        8,
        7,
    )
    L.add(
        stat(
            "Login check",
            "Whether the exporter's periodic test login succeeds (pg_connections_login_check_"
            "success): it fails when ordinary roles can no longer get a slot.",
            [q(f"min by (target) (pg_connections_login_check_success{{{F}}})", "{{target}}")],
            "none",
            mappings=yes_no("FAILING", "OK"),
        ),
        4,
        7,
    )
    L.add(
        timeseries(
            "Login check duration",
            "Time the exporter's test login took: slow logins come before refused ones.",
            [
                q(
                    f"max by (target) (pg_connections_login_check_duration_seconds{{{F}}})",
                    "{{target}}",
                )
            ],
            "s",
        ),
        6,
        7,
    )
    L.add(
        stat(
            "Target up",
            "pg_up: 1 if the target answered the last scrape. Prometheus's own up shows "
            "whether the exporter itself was reachable.",
            [
                q(f"min by (target) (pg_up{{{F}}})", "pg_up"),
                q(f"min(up{{{EXPORTER}}})", "exporter up"),
            ],
            "none",
            mappings=UP_MAPPINGS,
        ),
        6,
        7,
    )
    L.add(
        timeseries(
            "Scrape and query durations",
            "Time each scrape spent on the target, and each collector query's share.",
            [
                q(
                    f"max by (target) (pg_connections_exporter_scrape_duration_seconds{{{F}}})",
                    "scrape",
                ),
                q(
                    f"max by (query) (pg_connections_exporter_query_duration_seconds{{{F}}})",
                    "query {{query}}",
                ),
            ],
            "s",
        ),
        10,
        7,
    )
    L.add(
        timeseries(
            "Query errors",
            "Failed collector query runs per second by query and reason (error, timeout, "
            "deadline, connection, invalid_result), only those failing; their metrics are "
            "missing meanwhile.",
            [
                q(
                    f"max by (query, reason) (rate(pg_connections_exporter_query_errors_total"
                    f"{{{F}}}[$__rate_interval])) > 0",
                    "{{query}} {{reason}}",
                )
            ],
            "ops",
        ),
        10,
        7,
    )
    L.add(
        stat(
            "Configuration",
            "Whether the exporter's last config reload (SIGHUP, POST /-/reload) and its web "
            "config file's last change were taken. REFUSED: the previous one is still running, "
            "the change did nothing, and a restart would fail (see the exporter's log); the "
            "web config shows only with --web.config.file.",
            [
                q(
                    f"min(pg_connections_exporter_config_last_reload_successful{{{EXPORTER}}})",
                    "config",
                ),
                q(
                    f"min(pg_connections_exporter_web_config_last_reload_successful{{{EXPORTER}}})",
                    "web config",
                ),
            ],
            "none",
            mappings=yes_no("REFUSED", "OK", "orange"),
        ),
        4,
        7,
    )
    return dashboard(
        OVERVIEW_UID,
        "PostgreSQL connections",
        "One PostgreSQL target: how close to max_connections, since when, who holds the "
        "slots, and what keeps them.",
        L.panels,
        templating={"list": variables(target_multi=False, pgbouncer=True)},
        links=[
            {
                "title": "Fleet",
                "type": "link",
                "url": f"/d/{FLEET_UID}/postgresql-connections-fleet?${{__url_time_range}}"
                "&${datasource:queryparam}&${job:queryparam}&${instance:queryparam}",
                "icon": "dashboard",
                "tooltip": "All targets by utilization",
            }
        ],
    )


def fleet() -> dict:
    L = Layout()
    overview_link = [
        {
            "title": "Open ${__data.fields.target} in the overview",
            "url": f"/d/{OVERVIEW_UID}/postgresql-connections?${{__url_time_range}}"
            "&${datasource:queryparam}&${job:queryparam}&${instance:queryparam}"
            "&var-target=${__data.fields.target}",
        }
    ]
    L.row("Fleet")
    red_from_1 = {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
    }
    for title, description, expr, thresholds in (
        (
            "Targets",
            "Targets the selected exporters report.",
            f"count(max by (target) (pg_up{{{F}}}))",
            None,
        ),
        (
            "Targets above 80%",
            "Targets whose utilization is above 80% (PostgresConnectionsHigh).",
            f"count({UTIL} > {HIGH}) or vector(0)",
            red_from_1,
        ),
        (
            "Targets above 90%",
            "Targets whose utilization is above 90% (PostgresConnectionsCritical).",
            f"count({UTIL} > {CRITICAL}) or vector(0)",
            red_from_1,
        ),
        (
            "Targets down",
            "Targets that did not answer the last scrape (pg_up 0).",
            f"count(max by (target) (pg_up{{{F}}}) == 0) or vector(0)",
            red_from_1,
        ),
    ):
        L.add(stat(title, description, [q(expr)], "short", thresholds=thresholds), 6, 4)

    L.add(
        table(
            "Targets by utilization",
            "Every selected target, fullest first. Click a target to open it in the overview.",
            [
                q(UTIL, instant=True, fmt="table"),
                q(f"max by (target) (pg_connections_used{{{F}}})", instant=True, fmt="table"),
                q(f"max by (target) (pg_connections_max{{{F}}})", instant=True, fmt="table"),
                q(
                    f"max by (target) (pg_connections_available{{{F}}})",
                    instant=True,
                    fmt="table",
                ),
                q(
                    f"sum by (target) (max by (target, state) "
                    f'(pg_connections{{{F}, state=~"idle in transaction.*"}}))',
                    instant=True,
                    fmt="table",
                ),
                q(
                    f'max by (target) (pg_connections_waiting{{{F}, wait_event_type="Lock"}})',
                    instant=True,
                    fmt="table",
                ),
                q(f"min by (target) (pg_up{{{F}}})", instant=True, fmt="table"),
            ],
            "short",
            renames={
                "Value #A": "utilization",
                "Value #B": "used",
                "Value #C": "max_connections",
                "Value #D": "available",
                "Value #E": "idle in transaction",
                "Value #F": "waiting on locks",
                "Value #G": "up",
            },
            units={"utilization": "percentunit"},
            sort_by="utilization",
            links={"target": overview_link},
            cell_thresholds={"utilization": UTIL_THRESHOLDS},
        ),
        24,
        10,
    )
    L.add(
        table(
            "PgBouncers",
            "Every selected PgBouncer target: client connections against max_client_conn, "
            "clients waiting for a server connection, the longest wait, and the server "
            "connections it holds. Empty without PgBouncer targets.",
            [
                q(clients_ratio(F), instant=True, fmt="table"),
                q(
                    f"sum by (target) (pgbouncer_pool_client_waiting_connections{{{F}}})",
                    instant=True,
                    fmt="table",
                ),
                q(
                    f"max by (target) (pgbouncer_pool_max_wait_seconds{{{F}}})",
                    instant=True,
                    fmt="table",
                ),
                q(
                    f"max by (target) (pgbouncer_server_connections{{{F}}})",
                    instant=True,
                    fmt="table",
                ),
            ],
            "short",
            renames={
                "Value #A": "client connections of max_client_conn",
                "Value #B": "clients waiting",
                "Value #C": "longest wait",
                "Value #D": "server connections",
            },
            units={"client connections of max_client_conn": "percentunit", "longest wait": "s"},
            sort_by="clients waiting",
        ),
        24,
        6,
    )
    L.add(
        timeseries(
            "Utilization, top 10 targets",
            "The 10 fullest targets over time against the 80% and 90% lines of the alerts.",
            [q(f"topk(10, {UTIL})", "{{target}}")],
            "percentunit",
            thresholds=UTIL_THRESHOLDS,
        ),
        16,
        9,
    )
    L.add(
        table(
            "Firing alerts",
            "PostgresConnections* alerts firing across the selected targets and how long each "
            "has been active.",
            [q(FIRING_FOR, instant=True, fmt="table")],
            "s",
            renames={"Value": "active for"},
            sort_by="active for",
        ),
        8,
        9,
    )
    return dashboard(
        FLEET_UID,
        "PostgreSQL connections fleet",
        "Every PostgreSQL target by connection utilization; each links to its overview.",
        L.panels,
        templating={"list": variables(target_multi=True)},
        links=[
            {
                "title": "Overview",
                "type": "link",
                "url": f"/d/{OVERVIEW_UID}/postgresql-connections?${{__url_time_range}}"
                "&${datasource:queryparam}",
                "icon": "dashboard",
                "tooltip": "One target in detail",
            }
        ],
    )


DASHBOARDS = {
    "pg-connections-overview.json": overview,
    "pg-connections-fleet.json": fleet,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date (run python dashboards/generate.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
