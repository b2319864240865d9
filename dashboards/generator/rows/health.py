"""Overview row: refused logins and the exporter's own health."""

from __future__ import annotations

from ..common import EXPORTER, UP_MAPPINGS, F, yes_no
from ..panels import Layout, q, stat, timeseries


def health_rows(L: Layout) -> None:
    """Refused logins and the exporter's own health."""
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
