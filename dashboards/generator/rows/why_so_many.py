"""Overview row: why so many connections (pooling advisor, churn, age, memory)."""

from __future__ import annotations

from ..common import F
from ..panels import Layout, heatmap, q, stat, timeseries

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
