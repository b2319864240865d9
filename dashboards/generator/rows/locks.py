"""Overview row: sessions waiting on locks."""

from __future__ import annotations

from ..common import F
from ..panels import Layout, q, stat, timeseries


def locks_rows(L: Layout) -> None:
    """Sessions waiting on locks."""
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
