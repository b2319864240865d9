"""Overview row: per-database and per-role connection limits."""

from __future__ import annotations

from ..common import UTIL_THRESHOLDS, F
from ..panels import Layout, bargauge, q, table


def limits_rows(L: Layout) -> None:
    """Per-database and per-role connection limits."""
    L.row("Per-database and per-role limits")
    for kind, label, what in (("database", "datname", "Database"), ("role", "rolname", "Role")):
        used = f"max by ({label}) (pg_{kind}_connection_limit_used{{{F}}})"
        limit = f"max by ({label}) (pg_{kind}_connection_limit{{{F}}})"
        L.add(
            bargauge(
                f"{what} connection limits used",
                f"Client backends / CONNECTION LIMIT for each {kind} that has one "
                f"(pg_{kind}_connection_limit_used / pg_{kind}_connection_limit); at 100% new "
                f"logins to it are refused. A limit of 0 is left out.",
                [q(f"{used} / ({limit} > 0)", f"{{{{{label}}}}}", instant=True)],
                "percentunit",
                defaults={"max": 1, "thresholds": UTIL_THRESHOLDS},
            ),
            6,
            7,
        )
        L.add(
            table(
                f"{what} limits: used and limit",
                f"Client backends and the CONNECTION LIMIT of each {kind} that has one.",
                [
                    q(used, instant=True, fmt="table"),
                    q(limit, instant=True, fmt="table"),
                ],
                "short",
                renames={"Value #A": "used", "Value #B": "limit"},
                sort_by="used",
            ),
            6,
            7,
        )
