"""Overview row: the PgBouncers in front of this server, their settings' figure against its
slots (README, "Poolers against the server"; the server:* recording rules of alerts/)."""

from __future__ import annotations

from ..common import ALERTS, F
from ..panels import Layout, q, stat, table

OVERCOMMIT = ALERTS["PgBouncerPoolsOvercommitServer"]["ratio"]
JOB = 'job=~"$job"'
# The selected target's server label: every series of the server's poolers is joined on it.
THIS_SERVER = (
    f"on(job, server) group_left() max by (job, server) (pg_connections_server_info{{{F}}})"
)


def _of_this_server(metric: str) -> str:
    return f"{metric}{{{JOB}}} * {THIS_SERVER}"


def poolers_rows(L: Layout) -> None:
    """What every pooler of this server may open together, against its slots."""
    L.row("Poolers against the server")
    L.add(
        stat(
            "Poolers may open, of the slots left",
            "The server connections every PgBouncer pointing at this server may open by its "
            "settings (pools not opened yet included), over the slots left after the direct "
            f"clients (server:pgbouncer_overcommit:ratio). Red above {OVERCOMMIT:.0%}: "
            "PgBouncerPoolsOvercommitServer.",
            [q(_of_this_server("server:pgbouncer_overcommit:ratio"))],
            "percentunit",
            thresholds={
                "mode": "absolute",
                "steps": [
                    {"color": "green", "value": None},
                    {"color": "red", "value": OVERCOMMIT},
                ],
            },
        ),
        6,
        5,
    )
    L.add(
        stat(
            "Poolers' figure and the server's slots",
            "What the poolers may open together (over every replica scraped), the server's "
            "ordinary slots, the client backends the poolers did not open (direct, the "
            "exporter's own included) and the slots left for the poolers.",
            [
                q(_of_this_server("server:pgbouncer_server_connections_bound:sum"), "may open"),
                q(_of_this_server("server:pg_connections_slots:ordinary"), "ordinary slots"),
                q(_of_this_server("server:pg_connections_direct:max"), "direct"),
                q(_of_this_server("server:pg_connections_slots:after_direct"), "left"),
            ],
            "short",
        ),
        18,
        5,
    )
    L.add(
        table(
            "Poolers of this server",
            "Each PgBouncer pointing at this server: the most server connections it may hold "
            "there at once, and how many it holds now.",
            [
                q(
                    _of_this_server("pgbouncer_upstream_server_connections_bound"),
                    instant=True,
                    fmt="table",
                ),
                q(
                    _of_this_server("pgbouncer_upstream_server_connections"),
                    instant=True,
                    fmt="table",
                ),
            ],
            "short",
            renames={"Value #A": "may open", "Value #B": "holds now"},
            sort_by="may open",
        ),
        10,
        8,
    )
    L.add(
        table(
            "Biggest pools",
            "The pools that may open the most on this server, with the setting that caps each "
            "(limited_by) and whether the pool exists yet (a user seen on the pooler may open "
            "one on every database).",
            [
                q(
                    f"topk(10, {_of_this_server('pgbouncer_pool_server_connections_bound')})",
                    instant=True,
                    fmt="table",
                )
            ],
            "short",
            renames={"Value": "may open"},
            sort_by="may open",
        ),
        14,
        8,
    )
