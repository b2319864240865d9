"""The fleet dashboard: every target by utilization, each linking to its overview."""

from __future__ import annotations

from .common import (
    CRITICAL,
    FIRING_FOR,
    FLEET_UID,
    HIGH,
    OVERVIEW_UID,
    UTIL,
    UTIL_THRESHOLDS,
    F,
    clients_ratio,
)
from .panels import Layout, dashboard, q, stat, table, timeseries, variables


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
