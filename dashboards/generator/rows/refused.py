"""Overview row: connection attempts the server refused, counted from its log (targets with a
`log:` section), who they were, connection setup time, and whether the log is read."""

from __future__ import annotations

from ..common import UP_MAPPINGS, F
from ..panels import Layout, q, stat, table, timeseries

FAILURES = f"pg_connection_failures_total{{{F}}}"


def refused_rows(L: Layout) -> None:
    """Every refused or failed connection attempt, from the server's log."""
    L.row("Refused connections")
    L.add(
        timeseries(
            "Refused connections by reason",
            "Connection attempts the server refused per second, by reason, counted from its "
            "log (pg_connection_failures_total; only targets whose log the exporter reads, "
            'README "Refused connections"). too_many_clients, reserved_slots_only, '
            "database_limit and role_limit are a full server or a limit; the others are logins "
            "that failed (wrong password, no pg_hba.conf entry, missing role or database).",
            [
                q(
                    f"sum by (reason) (rate({FAILURES}[$__rate_interval])) > 0",
                    "{{reason}}",
                )
            ],
            "cps",
        ),
        9,
        8,
    )
    L.add(
        table(
            "Who was refused",
            "Refused attempts over the dashboard's time range by reason, user, database and "
            'client host (past 50 label sets the names are "other"; empty where the log '
            "line does not carry them), the 20 biggest.",
            [
                q(
                    "topk(20, sum by (reason, usename, datname, client_addr) "
                    f"(increase({FAILURES}[$__range])) > 0)",
                    instant=True,
                    fmt="table",
                )
            ],
            "short",
            renames={
                "Value": "refused",
                "usename": "user",
                "datname": "database",
                "client_addr": "client",
            },
            sort_by="refused",
        ),
        9,
        8,
    )
    L.add(
        stat(
            "Log read",
            "pg_connections_exporter_log_up: whether the exporter could read the target's log "
            "at its last attempt (DOWN: refusals are not counted meanwhile; "
            "pg_connections_exporter_log_errors_total says why). No value: the target has no "
            "log section.",
            [q(f"min by (target) (pg_connections_exporter_log_up{{{F}}})", "{{target}}")],
            "none",
            mappings=UP_MAPPINGS,
        ),
        6,
        8,
    )
    L.add(
        timeseries(
            "Connection setup time (p90)",
            "90th percentile of connection setup time from the server's log, by phase: "
            "total, fork and authentication from PostgreSQL 18's log_connections = "
            "setup_durations; received_to_authorized (before 18) from the timestamps of the "
            "connection received and authorized lines (authentication included, the fork "
            "not).",
            [
                q(
                    "histogram_quantile(0.9, sum by (phase, le) "
                    f"(rate(pg_connection_setup_seconds_bucket{{{F}}}[$__rate_interval])))",
                    "{{phase}}",
                )
            ],
            "s",
        ),
        12,
        7,
    )
    L.add(
        timeseries(
            "Log reader: read and skipped",
            "Bytes of the log read per second, and bytes passed over by reason (start: "
            "written before the exporter started; behind: skipped to catch up; long_line).",
            [
                q(
                    "sum by (target) (rate(pg_connections_exporter_log_read_bytes_total"
                    f"{{{F}}}[$__rate_interval]))",
                    "read",
                ),
                q(
                    "sum by (reason) (rate(pg_connections_exporter_log_skipped_bytes_total"
                    f"{{{F}}}[$__rate_interval])) > 0",
                    "skipped: {{reason}}",
                ),
            ],
            "Bps",
        ),
        12,
        7,
    )
