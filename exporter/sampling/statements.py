"""The sampling statements and how their rows read: the slots in use by exactly the rule of
`pg_connections_used` (exporter/queries/connections.yaml, query connection_slots), and
PgBouncer's clients from its console."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# A backend's class as connection_slots (and connections' stash) name it: a backend the
# monitoring role may not see has no backend_type; with a role and a database it is a client.
BACKEND_CLASS = (
    "coalesce(backend_type, CASE WHEN usesysid IS NOT NULL AND datid IS NOT NULL "
    "THEN 'unknown client' ELSE 'unknown' END)"
)
# The classes that take max_connections slots (connection_slots' `used`).
SLOT_CLASSES = ("client backend", "unknown client")
# The slots open to ordinary roles, as connection_slots computes its utilization.
ORDINARY_SLOTS = (
    "current_setting('max_connections')::int"
    " - current_setting('superuser_reserved_connections')::int"
    " - coalesce(current_setting('reserved_connections', true)::int, 0)"
)

# One statement, one row: no join, no sort, no per-backend function beyond the filter. Run in
# autocommit, each sample reads the backends afresh (inside a transaction PostgreSQL would keep
# the first read).
POSTGRES_SAMPLE = (
    "SELECT count(*) FILTER (WHERE "
    + BACKEND_CLASS
    + " IN ("
    + ", ".join(f"'{c}'" for c in SLOT_CLASSES)
    + ")) AS used, "
    + ORDINARY_SLOTS
    + " AS slots FROM pg_stat_get_activity(NULL)"
)

# PgBouncer's console: SHOW LISTS (a dozen rows: used_clients is the count max_client_conn
# limits) and SHOW POOLS (one row per pool: cl_waiting). max_client_conn comes from SHOW CONFIG,
# read at the first sample and then once a minute (it changes only on a reload).
PGBOUNCER_SAMPLE = ("SHOW LISTS", "SHOW POOLS")
PGBOUNCER_LIMIT = "SHOW CONFIG"
PGBOUNCER_LIMIT_EVERY = 60.0

Rows = Sequence[Mapping[str, Any]]


class SampleError(ValueError):
    """The rows do not have what a sample needs (a column missing, not a number)."""


@dataclass(frozen=True)
class PostgresSample:
    used: int
    slots: int


@dataclass(frozen=True)
class PgbouncerSample:
    clients: int
    waiting: int


def _int(row: Mapping[str, Any], column: str) -> int:
    try:
        return int(row[column])
    except (KeyError, TypeError, ValueError) as err:
        raise SampleError(f"column {column!r} missing or not a number") from err


def read_postgres(rows: Rows) -> PostgresSample:
    if len(rows) != 1:
        raise SampleError(f"expected one row, got {len(rows)}")
    return PostgresSample(used=_int(rows[0], "used"), slots=_int(rows[0], "slots"))


def read_pgbouncer(lists: Rows, pools: Rows) -> PgbouncerSample:
    used = [r for r in lists if r.get("list") == "used_clients"]
    if not used:
        raise SampleError("SHOW LISTS has no used_clients row")
    waiting = sum(_int(r, "cl_waiting") for r in pools)
    return PgbouncerSample(clients=_int(used[0], "items"), waiting=waiting)


def read_max_client_conn(config: Rows) -> int:
    for row in config:
        if row.get("key") == "max_client_conn":
            return _int(row, "value")
    raise SampleError("SHOW CONFIG has no max_client_conn")
