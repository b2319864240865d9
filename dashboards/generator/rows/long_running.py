"""Overview row: idle in transaction and long-running sessions."""

from __future__ import annotations

from ..common import F
from ..panels import Layout, heatmap, q, stat, timeseries


def long_running_rows(L: Layout) -> None:
    """Idle in transaction and long-running sessions."""
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
