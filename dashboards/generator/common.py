"""What every dashboard shares: the variables' selectors, the thresholds (read from
alerts/thresholds.yaml, their one home), and the colours and mappings drawn from them."""

from __future__ import annotations

from pathlib import Path

import yaml

# The dashboards/ directory, where the JSON files go.
HERE = Path(__file__).resolve().parent.parent
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
