"""Overview row: how close to the limit, and since when."""

from __future__ import annotations

from ..common import FIRING_FOR, HIGH, UTIL, UTIL_THRESHOLDS, F
from ..panels import Layout, bargauge, q, stat, table, timeseries


def saturation_rows(L: Layout) -> None:
    """How close to the limit, and since when."""
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
        timeseries(
            "Slots used: scraped and peak between scrapes",
            "pg_connections_used as each scrape saw it, and the most slots in use in any "
            "sample of the last 5 minutes (pg_connections_used_peak: the exporter samples "
            "every second between scrapes, so a storm of a few seconds shows here and not in "
            "the scraped line), under the limit for ordinary roles (orange dashes).",
            [
                q(f"max by (target) (pg_connections_used{{{F}}})", "scraped"),
                q(
                    f"max by (target) (pg_connections_used_peak{{{F}}})",
                    "peak of the last 5m (sampled every second)",
                ),
                q(limit_expr, "limit for ordinary roles"),
            ],
            "short",
            overrides=[state_overrides[1]],
        ),
        12,
        9,
    )
    L.add(
        timeseries(
            "Time at each saturation level",
            "Share of the time, sampled between scrapes (every second by default), that "
            "utilization was at or above each level: the alerts' 80% and 90%, and 100% "
            "(exhaustion: ordinary roles refused). 100% for a few seconds is "
            "PostgresConnectionsBrieflyExhausted.",
            [
                q(
                    f"max by (level) (rate(pg_connections_saturation_seconds_total{{{F}}}"
                    f"[$__rate_interval]))",
                    "at or above {{level}}",
                )
            ],
            "percentunit",
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
