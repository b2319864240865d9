"""Poolers against the server: the figures worked out from a scrape's PgBouncer samples (the
most server connections each pool, database and pooler may open, kinds/poolerbound.py) and
the `server` label both sides are joined on (kinds/serveraddress.py), as metric families.

Computed from the samples the built-in PgBouncer queries produced, so the figures always agree
with the settings the same scrape exposes, and a cached SHOW CONFIG serves them as it serves
its own metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import Metric

from exporter.kinds import PGBOUNCER, POSTGRES
from exporter.kinds.poolerbound import (
    PooledDatabase,
    PoolerBounds,
    PoolerFacts,
    compute,
    pooled,
)
from exporter.metrics.families import RowFamily, new_family
from exporter.scrape.target import TargetResult


@dataclass(frozen=True)
class DerivedMetric:
    """A metric the exporter computes rather than reads: declared once, for the families and
    the metrics reference."""

    name: str
    labels: tuple[str, ...]
    help: str
    kind: str  # the target kind it is reported for
    type: str = "gauge"


SERVER_INFO = DerivedMetric(
    "pg_connections_server_info",
    ("server",),
    "1, labelled with this PostgreSQL target's server label (the target's `server`, else its "
    "DSN's host and port normalized), which the poolers' pgbouncer_*_bound metrics carry too.",
    POSTGRES.name,
)
UPSTREAM_INFO = DerivedMetric(
    "pgbouncer_database_upstream_info",
    ("database", "host", "port", "upstream_database", "server"),
    "1 per pooled database, labelled with its upstream as SHOW DATABASES reports it and the "
    "server label it is joined on (the target's `upstreams`, else host and port normalized, a "
    "local host read as the pooler's).",
    PGBOUNCER.name,
)
POOL_BOUND = DerivedMetric(
    "pgbouncer_pool_server_connections_bound",
    ("database", "user", "server", "exists", "limited_by"),
    "The most server connections this pool may open: min(pool_size + reserve_pool, "
    "max_db_connections, max_user_connections). Pools of users seen on this pooler that do not "
    "exist yet are counted (exists=false). +Inf when nothing limits it.",
    PGBOUNCER.name,
)
DATABASE_BOUND = DerivedMetric(
    "pgbouncer_database_server_connections_bound",
    ("database", "server", "limited_by"),
    "The most server connections this database's pools may open together: "
    "min(max_db_connections, the sum of its pools' figures).",
    PGBOUNCER.name,
)
SERVER_BOUND = DerivedMetric(
    "pgbouncer_upstream_server_connections_bound",
    ("server",),
    "The most server connections this pooler may hold on this server at once, every database "
    "pointing there together, max_user_connections shared between them.",
    PGBOUNCER.name,
)
SERVER_CURRENT = DerivedMetric(
    "pgbouncer_upstream_server_connections",
    ("server",),
    "Server connections this pooler holds on this server now (current_connections of its "
    "databases pointing there).",
    PGBOUNCER.name,
)
DERIVED_METRICS = (
    SERVER_INFO,
    UPSTREAM_INFO,
    POOL_BOUND,
    DATABASE_BOUND,
    SERVER_BOUND,
    SERVER_CURRENT,
)


def _samples(result: TargetResult) -> dict[str, list[dict[str, str | float]]]:
    """The target's samples by metric name, each as its labels plus `value`."""
    out: dict[str, list[dict[str, str | float]]] = {}
    for outcome in result.queries:
        for produced in outcome.metrics:
            names = produced.spec.labels
            out.setdefault(produced.spec.name, []).extend(
                {**dict(zip(names, values, strict=True)), "value": value}
                for values, value in produced.samples
            )
    return out


def _one(samples: Mapping[str, list[dict[str, str | float]]], name: str) -> float | None:
    rows = samples.get(name)
    return float(rows[0]["value"]) if rows else None


def facts_of(result: TargetResult) -> PoolerFacts | None:
    """A PgBouncer target's facts from its scrape, or None when SHOW DATABASES gave none."""
    samples = _samples(result)
    upstreams = samples.get("pgbouncer_database_upstream_server_connections")
    if not upstreams:
        return None

    def per_database(name: str) -> dict[str, int]:
        return {str(r["database"]): int(float(r["value"])) for r in samples.get(name, ())}

    pool_size = per_database("pgbouncer_database_pool_size")
    reserve = per_database("pgbouncer_database_reserve_pool_size")
    max_db = per_database("pgbouncer_database_max_server_connections")
    databases = tuple(
        PooledDatabase(
            name=str(r["database"]),
            host=str(r["host"]),
            port=str(r["port"]),
            upstream_database=str(r["upstream_database"]),
            force_user=str(r["force_user"]),
            pool_size=pool_size.get(str(r["database"]), 0),
            reserve_pool=reserve.get(str(r["database"]), 0),
            max_db_connections=max_db.get(str(r["database"]), 0),
            current_connections=int(float(r["value"])),
        )
        for r in upstreams
    )
    pools = frozenset(
        (str(r["database"]), str(r["user"]))
        for r in samples.get("pgbouncer_pool_server_active_connections", ())
    )
    timeout = _one(samples, "pgbouncer_reserve_pool_timeout_seconds")
    return PoolerFacts(
        databases=databases,
        pools=pools,
        max_user_connections=int(_one(samples, "pgbouncer_max_user_connections") or 0),
        user_max_connections={
            str(r["user"]): int(float(r["value"]))
            for r in samples.get("pgbouncer_user_max_server_connections", ())
        },
        reserve_pool_timeout=5.0 if timeout is None else timeout,
    )


def bounds_of(result: TargetResult) -> PoolerBounds | None:
    """A PgBouncer target's figures from its scrape (None before SHOW DATABASES answered)."""
    facts = facts_of(result)
    if facts is None:
        return None
    target = result.target
    return compute(facts, lambda d: target.upstream_servers(d.name, d.host, d.port))


Rows = list[tuple[tuple[str, ...], float]]


def _pooler_rows(result: TargetResult) -> dict[DerivedMetric, Rows]:
    facts = facts_of(result)
    bounds = bounds_of(result)
    if facts is None or bounds is None:
        return {}
    target = result.target
    return {
        UPSTREAM_INFO: [
            ((d.name, d.host, d.port, d.upstream_database, server), 1.0)
            for d in pooled(facts)
            for server in target.upstream_servers(d.name, d.host, d.port)
        ],
        POOL_BOUND: [
            ((p.database, p.user, p.server, str(p.exists).lower(), p.limited_by), p.bound)
            for p in bounds.pools
        ],
        DATABASE_BOUND: [((d.database, d.server, d.limited_by), d.bound) for d in bounds.databases],
        SERVER_BOUND: [((s,), v) for s, v in sorted(bounds.servers.items())],
        SERVER_CURRENT: [((s,), v) for s, v in sorted(bounds.current.items())],
    }


def derived_families(results: Sequence[TargetResult]) -> Iterator[Metric]:
    """Every derived metric of these targets, one family per metric name, each series
    labelled `target` and the target's constant labels, like the query metrics."""
    families: dict[str, RowFamily] = {}
    for result in results:
        target = result.target
        base_names = ("target", *target.labels)
        base = (target.name, *target.labels.values())
        produced: dict[DerivedMetric, Rows]
        if target.kind == POSTGRES.name:
            produced = {SERVER_INFO: [((target.server_label(),), 1.0)]}
        elif target.kind == PGBOUNCER.name:
            produced = _pooler_rows(result)
        else:
            continue
        for metric, rows in produced.items():
            names = (*base_names, *metric.labels)
            family = families.get(metric.name)
            if family is None:
                family = families[metric.name] = new_family(
                    metric.type, metric.name, metric.help, list(names)
                )
            family.add_rows(names, rows, base)
    yield from families.values()
