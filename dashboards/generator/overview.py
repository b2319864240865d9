"""The overview dashboard: one PostgreSQL target, its rows in the order shown."""

from __future__ import annotations

from .common import FLEET_UID, OVERVIEW_UID
from .panels import Layout, dashboard, variables
from .rows.health import health_rows
from .rows.holders import holders_rows
from .rows.limits import limits_rows
from .rows.locks import locks_rows
from .rows.long_running import long_running_rows
from .rows.pgbouncer import pgbouncer_rows
from .rows.poolers import poolers_rows
from .rows.reclaimable import reclaimable_rows
from .rows.refused import refused_rows
from .rows.saturation import saturation_rows
from .rows.why_so_many import why_so_many_rows


def overview() -> dict:
    """One target in detail, row by row from the top."""
    L = Layout()
    saturation_rows(L)
    pgbouncer_rows(L)
    poolers_rows(L)
    holders_rows(L)
    reclaimable_rows(L)
    long_running_rows(L)
    locks_rows(L)
    limits_rows(L)
    why_so_many_rows(L)
    refused_rows(L)
    health_rows(L)
    return dashboard(
        OVERVIEW_UID,
        "PostgreSQL connections",
        "One PostgreSQL target: how close to max_connections, since when, who holds the "
        "slots, and what keeps them.",
        L.panels,
        templating={"list": variables(target_multi=False, pgbouncer=True)},
        links=[
            {
                "title": "Fleet",
                "type": "link",
                "url": f"/d/{FLEET_UID}/postgresql-connections-fleet?${{__url_time_range}}"
                "&${datasource:queryparam}&${job:queryparam}&${instance:queryparam}",
                "icon": "dashboard",
                "tooltip": "All targets by utilization",
            }
        ],
    )
