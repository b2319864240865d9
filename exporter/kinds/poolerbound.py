"""The most server connections a PgBouncer may open, worked out from its settings, and the
poolers of one PostgreSQL server set against its slots.

PgBouncer opens a server connection for a pool (a database and a user) only while
(launch_new_connection, PgBouncer 1.18 to 1.25):
- the pool has fewer than pool_size, or pool_size + reserve_pool when clients have waited
  reserve_pool_timeout (0 turns the reserve off);
- its database has fewer than max_db_connections (0: no limit);
- its user has fewer than max_user_connections, over every database (0: no limit).
The pool mode does not change these caps (every mode has them); it changes how many clients
reach them: in session mode one connected client holds one server connection, in transaction
mode one transaction does. Cancel requests may briefly open up to 2 x pool_size connections
past the caps, but they carry only the cancel request and PostgreSQL gives them no slot.

Pools that do not exist yet are counted: PgBouncer makes a pool when a user first connects to
a database, so every user seen in any pool of this pooler (on a database that does not force a
user) may open one on each such database; a database with `user=` set has one pool, that
user's. The per-pool figure is min(pool_size + reserve, max_db_connections,
max_user_connections); a database's is min(max_db_connections, the sum over its pools); a
pooler's, per server, is the most all its pools pointing there may hold at once with the user
limits shared between databases (a maximum flow: users, pools, databases). pool_size 0 is no
pool-size limit (PgBouncer 1.24+; earlier ones open one connection for it, so the figure stays
an upper bound). Per-user pool_size and reserve_pool_size ([users], PgBouncer 1.23+) are not
read: the database's apply.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# PgBouncer's own admin console: a virtual database, no server connections.
ADMIN_DATABASE = "pgbouncer"
INF = math.inf

# Which setting caps a figure, for the operator to change.
POOL_SIZE = "pool_size+reserve_pool"
MAX_DB = "max_db_connections"
MAX_USER = "max_user_connections"
UNLIMITED = "none"


@dataclass(frozen=True)
class PooledDatabase:
    """One [databases] entry as SHOW DATABASES reports it (sizes already the effective ones)."""

    name: str
    host: str
    port: str
    upstream_database: str
    force_user: str
    pool_size: int
    reserve_pool: int
    max_db_connections: int
    current_connections: int = 0


@dataclass(frozen=True)
class PoolerFacts:
    """What one PgBouncer says about its limits and pools."""

    databases: tuple[PooledDatabase, ...]
    # (database, user) of every pool SHOW POOLS lists.
    pools: frozenset[tuple[str, str]]
    max_user_connections: int = 0
    # Per user, where SHOW USERS reports it (PgBouncer 1.23+); else the global one applies.
    user_max_connections: Mapping[str, int] = field(default_factory=dict)
    reserve_pool_timeout: float = 5.0


@dataclass(frozen=True)
class PoolBound:
    database: str
    user: str
    server: str
    exists: bool
    bound: float
    limited_by: str


@dataclass(frozen=True)
class DatabaseBound:
    database: str
    server: str
    bound: float
    limited_by: str


@dataclass(frozen=True)
class PoolerBounds:
    pools: tuple[PoolBound, ...]
    databases: tuple[DatabaseBound, ...]
    # Per server: the most server connections this pooler may hold there at once.
    servers: Mapping[str, float]
    # Per server: the server connections this pooler holds there now.
    current: Mapping[str, float]


def _limit(value: int) -> float:
    return float(value) if value > 0 else INF


def _tightest(caps: Sequence[tuple[float, str]]) -> tuple[float, str]:
    value, name = min(caps, key=lambda c: c[0])
    return (value, name) if value != INF else (INF, UNLIMITED)


def pooled(facts: PoolerFacts) -> list[PooledDatabase]:
    """The databases that open server connections (not the admin console)."""
    return [d for d in facts.databases if d.name != ADMIN_DATABASE]


def users_seen(facts: PoolerFacts) -> list[str]:
    """Users of the pools on databases that take the client's user."""
    free = {d.name for d in pooled(facts) if not d.force_user}
    return sorted({user for database, user in facts.pools if database in free})


def compute(facts: PoolerFacts, servers_of: Callable[[PooledDatabase], list[str]]) -> PoolerBounds:
    """Every pool's, database's and server's figure; `servers_of` gives a database's `server`
    labels (more than one for a host list: each may get all of them)."""
    seen = users_seen(facts)
    reserve_on = facts.reserve_pool_timeout > 0
    pools: list[PoolBound] = []
    databases: list[DatabaseBound] = []
    edges: dict[str, list[tuple[str, str, float]]] = {}
    db_caps: dict[str, float] = {}
    current: dict[str, float] = {}
    for d in pooled(facts):
        users = [d.force_user] if d.force_user else seen
        pool_cap = _limit(d.pool_size) + (d.reserve_pool if reserve_on and d.pool_size > 0 else 0)
        db_cap = _limit(d.max_db_connections)
        total = 0.0
        targets = servers_of(d)
        for user in users:
            user_cap = _limit(facts.user_max_connections.get(user, facts.max_user_connections))
            bound, by = _tightest([(pool_cap, POOL_SIZE), (db_cap, MAX_DB), (user_cap, MAX_USER)])
            exists = (d.name, user) in facts.pools
            pools += [PoolBound(d.name, user, s, exists, bound, by) for s in targets]
            total += min(pool_cap, user_cap)
            for server in targets:
                edges.setdefault(server, []).append((user, d.name, min(pool_cap, user_cap)))
        bound, by = _tightest([(db_cap, MAX_DB), (total, POOL_SIZE)])
        if not users:
            bound, by = 0.0, POOL_SIZE
        for server in targets:
            databases.append(DatabaseBound(d.name, server, bound, by))
            current[server] = current.get(server, 0.0) + d.current_connections
        db_caps[d.name] = db_cap
    servers = {
        server: _max_flow(
            server_edges,
            db_caps,
            lambda u: _limit(facts.user_max_connections.get(u, facts.max_user_connections)),
        )
        for server, server_edges in edges.items()
    }
    for server in current:
        servers.setdefault(server, 0.0)
    return PoolerBounds(tuple(pools), tuple(databases), servers, current)


def _max_flow(
    pool_edges: Iterable[tuple[str, str, float]],
    db_caps: Mapping[str, float],
    user_cap: Callable[[str], float],
) -> float:
    """The most connections at once: source -> user (max_user_connections) -> database
    (the pool's cap) -> sink (max_db_connections), Edmonds-Karp on a graph of a few hundred
    nodes at most. Infinite when some pool has no cap at all."""
    edges = [e for e in pool_edges if e[2] > 0]
    users = sorted({u for u, _, _ in edges})
    dbs = sorted({d for _, d, _ in edges})
    for u, d, cap in edges:
        if cap == INF and user_cap(u) == INF and db_caps[d] == INF:
            return INF
    finite = [c for c in (*(user_cap(u) for u in users), *(db_caps[d] for d in dbs)) if c < INF]
    finite += [cap for _, _, cap in edges if cap < INF]
    big = sum(finite) + 1
    source, sink = "s", "t"
    capacity: dict[str, dict[str, float]] = {}

    def add(a: str, b: str, cap: float) -> None:
        capacity.setdefault(a, {})[b] = capacity.get(a, {}).get(b, 0.0) + min(cap, big)
        capacity.setdefault(b, {}).setdefault(a, 0.0)

    for u in users:
        add(source, f"u:{u}", user_cap(u))
    for u, d, cap in edges:
        add(f"u:{u}", f"d:{d}", cap)
    for d in dbs:
        add(f"d:{d}", sink, db_caps[d])
    flow = 0.0
    while True:
        parent: dict[str, str] = {source: source}
        queue = deque([source])
        while queue and sink not in parent:
            node = queue.popleft()
            for nxt, cap in capacity.get(node, {}).items():
                if cap > 0 and nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        if sink not in parent:
            return flow
        push, node = INF, sink
        while node != source:
            push = min(push, capacity[parent[node]][node])
            node = parent[node]
        node = sink
        while node != source:
            capacity[parent[node]][node] -= push
            capacity[node][parent[node]] += push
            node = parent[node]
        flow += push


def _int(value: object) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return 0


def facts_from_rows(
    databases: Sequence[Mapping[str, object]],
    pools: Sequence[Mapping[str, object]],
    users: Sequence[Mapping[str, object]],
    config: Sequence[Mapping[str, object]],
) -> PoolerFacts:
    """The facts from the rows of SHOW DATABASES, SHOW POOLS, SHOW USERS and SHOW CONFIG."""
    settings = {str(r.get("key")): str(r.get("value") or "") for r in config}
    try:
        reserve_timeout = float(settings.get("reserve_pool_timeout", "5") or 0)
    except ValueError:
        reserve_timeout = 5.0
    return PoolerFacts(
        databases=tuple(
            PooledDatabase(
                name=str(r["name"]),
                host=str(r.get("host") or ""),
                port=str(r.get("port") or ""),
                upstream_database=str(r.get("database") or ""),
                force_user=str(r.get("force_user") or ""),
                pool_size=_int(r.get("pool_size")),
                reserve_pool=_int(r.get("reserve_pool_size", r.get("reserve_pool"))),
                max_db_connections=_int(r.get("max_connections")),
                current_connections=_int(r.get("current_connections")),
            )
            for r in databases
        ),
        pools=frozenset((str(r["database"]), str(r["user"])) for r in pools),
        max_user_connections=_int(settings.get("max_user_connections", "0")),
        user_max_connections={
            str(r["name"]): _int(r["max_user_connections"])
            for r in users
            if "max_user_connections" in r
        },
        reserve_pool_timeout=reserve_timeout,
    )


@dataclass(frozen=True)
class PoolerContribution:
    """One pooler's share of a server."""

    pooler: str
    bound: float
    current: float
    pools: tuple[PoolBound, ...]


@dataclass(frozen=True)
class ServerView:
    """The poolers of one server against its slots: the figures the recording rules give."""

    server: str
    poolers: tuple[PoolerContribution, ...]
    ordinary_slots: int
    used: int

    @property
    def bound(self) -> float:
        return sum(p.bound for p in self.poolers)

    @property
    def pooled_now(self) -> float:
        return sum(p.current for p in self.poolers)

    @property
    def direct(self) -> float:
        """Client backends not opened by these poolers (the exporter's own included)."""
        return max(self.used - self.pooled_now, 0.0)

    @property
    def slots_after_direct(self) -> float:
        return max(self.ordinary_slots - self.direct, 0.0)

    @property
    def overcommit_ratio(self) -> float | None:
        """The poolers' figure over the slots left after direct clients; None without slots."""
        left = self.slots_after_direct
        return self.bound / left if left > 0 else (INF if self.bound > 0 else None)

    def biggest_pools(self, n: int = 5) -> list[tuple[str, PoolBound]]:
        every = [(p.pooler, pool) for p in self.poolers for pool in p.pools]
        return sorted(every, key=lambda x: (-x[1].bound, x[0], x[1].database, x[1].user))[:n]


def server_view(
    server: str,
    ordinary_slots: int,
    used: int,
    poolers: Mapping[str, PoolerBounds],
) -> ServerView:
    """The poolers in `poolers` (by name) that point at `server`, biggest first."""
    parts = [
        PoolerContribution(
            name,
            b.servers[server],
            b.current.get(server, 0.0),
            tuple(p for p in b.pools if p.server == server),
        )
        for name, b in poolers.items()
        if server in b.servers
    ]
    parts.sort(key=lambda p: (-p.bound, p.pooler))
    return ServerView(server, tuple(parts), ordinary_slots, used)


def ordinary_slots(slots: Mapping[str, object]) -> int:
    """max_connections - superuser_reserved_connections - reserved_connections of a diagnosis's
    slots."""

    def number(key: str) -> int:
        value = slots.get(key)
        return int(value) if isinstance(value, int | float) else 0

    return (
        number("max_connections")
        - number("superuser_reserved_connections")
        - number("reserved_connections")
    )


def view_dict(view: ServerView, unread: Mapping[str, str] | None = None) -> dict[str, object]:
    """The view as JSON (`diagnose --format json`): +Inf written as null."""

    def finite(value: float | None) -> float | None:
        return None if value is None or math.isinf(value) else value

    return {
        "server": view.server,
        "may_open": finite(view.bound),
        "ordinary_slots": view.ordinary_slots,
        "direct": view.direct,
        "slots_left": view.slots_after_direct,
        "overcommit_ratio": finite(view.overcommit_ratio),
        "poolers": [
            {"pooler": p.pooler, "may_open": finite(p.bound), "holds_now": p.current}
            for p in view.poolers
        ],
        "biggest_pools": [
            {
                "pooler": pooler,
                "database": pool.database,
                "user": pool.user,
                "may_open": finite(pool.bound),
                "limited_by": pool.limited_by,
                "exists": pool.exists,
            }
            for pooler, pool in view.biggest_pools()
        ],
        "unread_poolers": dict(unread or {}),
    }
