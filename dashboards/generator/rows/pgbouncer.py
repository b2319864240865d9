"""Overview row: the PgBouncers in front, their pools and queueing clients."""

from __future__ import annotations

from ..common import (
    CLIENTS_CRITICAL,
    CLIENTS_WARNING,
    FB,
    WAIT_CRITICAL,
    WAIT_WARNING,
    F,
    clients_ratio,
)
from ..panels import Layout, q, stat, table, timeseries


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
