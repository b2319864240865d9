"""Overview row: what ending long-idle sessions would free now, and the blockers."""

from __future__ import annotations

from ..common import F
from ..panels import Layout, bargauge, q, stat, table


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
