"""The guide's diagnosis of a full server, gathered over one connection and worked out once.

`gather` reads what the guide's "Immediate Recovery" and "Diagnose the Root Cause" queries read
(every backend, the slot settings, per-database and per-role limits, the timeouts and memory
settings), in one read-only transaction so that every part agrees; `gather_async` does the same
over an asyncio connection (both drive the one sans-io `_gather_steps`). `analyze` turns those facts
into the report that the `diagnose` command prints (text or JSON) and the /sessions page shows:
who holds the slots, who may still get in, what is stuck, which sessions could be ended (with
the exact `pg_terminate_backend` statement) and what to change, each tied to the guide.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.abc import Params
from psycopg.rows import tuple_row

# The guide's sections, as its headings name them.
GUIDE_RECOVERY = "Immediate Recovery"
GUIDE_DIAGNOSE = "Diagnose the Root Cause"
GUIDE_MAX_CONNECTIONS = "Increase max_connections"
GUIDE_POOLING = "Use Connection Pooling (Recommended)"
GUIDE_APPLICATION = "Application-Side Fixes"
GUIDE_MONITORING = "Monitoring"
GUIDE_PRACTICES = "Best Practices"

# The guide's figure for what one connection costs in memory, and its work_mem divisor.
CONNECTION_MEMORY_BYTES = 10 * 1024 * 1024
WORK_MEM_PER_CONNECTION = 3

IDLE_STATES = ("idle", "idle in transaction", "idle in transaction (aborted)")
IN_TRANSACTION = ("idle in transaction", "idle in transaction (aborted)")
# Query texts are cut to this many characters: enough to recognise a statement.
QUERY_CHARS = 200
# The exporter's own sessions (its held connections, its login check, diagnose) are never
# termination candidates: ending them blinds the monitoring during the incident.
EXPORTER_APPLICATIONS = "pg-connections-exporter"

_SETTINGS = {
    # name: which value (reset_val: what a new session of this role gets, not our own SETs)
    "max_connections": "setting",
    "superuser_reserved_connections": "setting",
    "reserved_connections": "setting",
    "idle_in_transaction_session_timeout": "reset_val",
    "idle_session_timeout": "reset_val",
    "statement_timeout": "reset_val",
    "lock_timeout": "reset_val",
    "tcp_keepalives_idle": "reset_val",
    "client_connection_check_interval": "reset_val",
    "shared_buffers": "setting",
    "work_mem": "reset_val",
    "maintenance_work_mem": "reset_val",
}
_UNIT_BYTES = {"B": 1, "kB": 1024, "8kB": 8192, "16MB": 16 << 20, "MB": 1 << 20, "GB": 1 << 30}
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0}

_BACKENDS_SQL = """
SELECT a.pid, a.backend_type, a.datname::text AS database, a.usename::text AS usename,
       coalesce(a.application_name, '') AS application,
       coalesce(host(a.client_addr), 'local') AS client, a.state,
       greatest(date_part('epoch', now() - a.state_change), 0) AS state_seconds,
       greatest(date_part('epoch', now() - a.xact_start), 0) AS xact_seconds,
       greatest(date_part('epoch', now() - a.query_start), 0) AS query_seconds,
       greatest(date_part('epoch', now() - a.backend_start), 0) AS backend_seconds,
       a.wait_event_type, a.wait_event,
       -- pg_blocking_pids reads the lock manager: only for sessions waiting on a lock.
       CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END AS blocked_by,
       CASE WHEN %(query_text)s THEN left(a.query, %(query_chars)s) END AS query,
       a.pid = pg_backend_pid() AS own,
       (a.backend_type = 'client backend'
        OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL AND a.datid IS NOT NULL))
         AS client_backend
  FROM pg_stat_activity a
"""

_WHOAMI_SQL = """
SELECT current_user::text AS role, r.rolsuper AS superuser,
       coalesce((SELECT pg_has_role(oid, 'member') FROM pg_roles
                  WHERE rolname = 'pg_use_reserved_connections'), false) AS reserved_member,
       coalesce((SELECT pg_has_role(oid, 'member') FROM pg_roles
                  WHERE rolname = 'pg_read_all_stats'), false) AS sees_all,
       current_setting('server_version') AS server_version
  FROM pg_roles r WHERE r.rolname = current_user
"""


@dataclass(frozen=True)
class Session:
    """One backend as pg_stat_activity showed it."""

    pid: int
    backend_type: str | None
    database: str | None
    user: str | None
    application: str
    client: str
    state: str | None
    state_seconds: float | None
    xact_seconds: float | None
    query_seconds: float | None
    backend_seconds: float | None
    wait_event_type: str | None
    wait_event: str | None
    blocked_by: tuple[int, ...]
    query: str | None
    own: bool
    client_backend: bool

    @property
    def state_label(self) -> str:
        return self.state or "unknown"


@dataclass(frozen=True)
class Facts:
    """What one look at the server found."""

    server_version: str
    role: str
    superuser: bool
    reserved_member: bool
    sees_all: bool
    settings: dict[str, tuple[str, str | None]]  # name -> (value, unit)
    sessions: tuple[Session, ...]
    database_limits: dict[str, int]
    role_limits: dict[str, int]


@dataclass(frozen=True)
class Criteria:
    """Which sessions are termination candidates, and the thresholds of the report."""

    idle_seconds: float = 600.0
    long_query_seconds: float = 60.0
    states: tuple[str, ...] = IDLE_STATES
    applications: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    databases: tuple[str, ...] = ()

    def matches(self, s: Session) -> bool:
        return (
            s.client_backend
            and not s.own
            and not s.application.startswith(EXPORTER_APPLICATIONS)
            and s.state in self.states
            and s.state_seconds is not None
            and s.state_seconds >= self.idle_seconds
            and (not self.applications or s.application in self.applications)
            and (not self.users or s.user in self.users)
            and (not self.databases or s.database in self.databases)
        )


# Each step of `_gather_steps`: a statement and its parameters; what it is sent back is the
# statement's rows (none for a statement without a result).
Step = tuple[str, Params | None]
Rows = list[tuple[Any, ...]]


def gather(
    conn: psycopg.Connection[Any],
    query_text: bool = False,
    query_chars: int = QUERY_CHARS,
    budget: float | None = None,
) -> Facts:
    """Read everything the report needs in one read-only transaction (one snapshot of the
    backends). Each statement is bounded by the connection's statement and lock timeouts and,
    with `budget` (seconds), all of them together: each then gets what is left of it as a
    transaction-local statement_timeout, so the session's own setting is untouched."""
    steps = _gather_steps(query_text, query_chars)
    deadline = _Deadline(budget)
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        step = next(steps)
        while True:
            for query, params in deadline.bound(step):
                cur.execute(query, params)
            try:
                step = steps.send(cur.fetchall() if cur.description is not None else [])
            except StopIteration as done:
                facts: Facts = done.value
                break
    return facts


async def gather_async(
    conn: psycopg.AsyncConnection[Any],
    query_text: bool = False,
    query_chars: int = QUERY_CHARS,
    budget: float | None = None,
) -> Facts:
    """`gather` over an asyncio connection: the same statements, transaction and budget."""
    steps = _gather_steps(query_text, query_chars)
    deadline = _Deadline(budget)
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        step = next(steps)
        while True:
            for query, params in deadline.bound(step):
                await cur.execute(query, params)
            try:
                step = steps.send(await cur.fetchall() if cur.description is not None else [])
            except StopIteration as done:
                facts: Facts = done.value
                break
    return facts


def _gather_steps(query_text: bool, query_chars: int) -> Generator[Step, Rows, Facts]:
    """`gather`'s statements and what it makes of their rows, without I/O: a driver runs
    each statement yielded, sends its rows back, and gets the Facts when the steps stop."""
    yield "SET TRANSACTION READ ONLY", None
    whoami = yield _WHOAMI_SQL, None
    role, superuser, reserved_member, sees_all, version = (
        whoami[0] if whoami else ("?", False, False, False, "?")
    )
    settings_rows = yield (
        "SELECT name, CASE name "
        + " ".join(f"WHEN '{name}' THEN {column}" for name, column in _SETTINGS.items())
        + " END, unit FROM pg_settings WHERE name = ANY(%s)",
        (list(_SETTINGS),),
    )
    backends = yield _BACKENDS_SQL, {"query_text": query_text, "query_chars": query_chars}
    database_limits = yield (
        "SELECT datname::text, datconnlimit FROM pg_database WHERE datconnlimit >= 0",
        None,
    )
    role_limits = yield (
        "SELECT rolname::text, rolconnlimit FROM pg_roles WHERE rolconnlimit >= 0 AND rolcanlogin",
        None,
    )
    return Facts(
        server_version=str(version).split()[0],
        role=role,
        superuser=bool(superuser),
        reserved_member=bool(reserved_member),
        sees_all=bool(sees_all or superuser),
        settings={name: (value, unit) for name, value, unit in settings_rows},
        sessions=tuple(_session(r) for r in backends),
        database_limits=dict(database_limits),
        role_limits=dict(role_limits),
    )


def _session(r: tuple[Any, ...]) -> Session:
    """A row of _BACKENDS_SQL."""
    return Session(
        pid=r[0],
        backend_type=r[1],
        database=r[2],
        user=r[3],
        application=r[4],
        client=r[5],
        state=r[6],
        state_seconds=r[7],
        xact_seconds=r[8],
        query_seconds=r[9],
        backend_seconds=r[10],
        wait_event_type=r[11],
        wait_event=r[12],
        blocked_by=tuple(r[13] or ()),
        query=redact_query(r[14]) if r[14] is not None else None,
        own=r[15],
        client_backend=bool(r[16]),
    )


class _Deadline:
    """One time budget shared by a transaction's statements (none: no bound of its own)."""

    def __init__(self, budget: float | None) -> None:
        self._at = None if budget is None else time.monotonic() + budget

    def bound(self, step: Step) -> list[Step]:
        """`step`, preceded by what is left of the budget as its transaction-local
        statement_timeout; none left: QueryCanceled, as if the server had cancelled it."""
        if self._at is None:
            return [step]
        left = self._at - time.monotonic()
        if left <= 0:
            raise psycopg.errors.QueryCanceled("the diagnosis ran out of its time budget")
        timeout: Step = (
            "SELECT set_config('statement_timeout', %s, true)",
            (f"{max(1, round(left * 1000))}ms",),
        )
        return [timeout, step]


# PASSWORD '...' of CREATE/ALTER ROLE (also cut short by the truncation), and password=...
# in a connection string a query passes on (dblink, postgres_fdw).
_PASSWORD_LITERAL = re.compile(r"(password\s+)('(?:[^']|'')*(?:'|$)|\S+)", re.IGNORECASE)
_PASSWORD_PARAMETER = re.compile(r"(password\s*=\s*)([^\s']+)", re.IGNORECASE)


def redact_query(text: str) -> str:
    """A query text with its password literals and password= parameters masked."""
    text = _PASSWORD_PARAMETER.sub(r"\1***", text)
    return _PASSWORD_LITERAL.sub(r"\1'***'", text)


def setting_int(facts: Facts, name: str, default: int = 0) -> int:
    value = facts.settings.get(name)
    try:
        return int(value[0]) if value else default
    except ValueError:
        return default


def setting_seconds(facts: Facts, name: str) -> float | None:
    """A time setting in seconds (0 is off), or None when the server has no such setting."""
    value = facts.settings.get(name)
    if value is None:
        return None
    return float(value[0]) * _UNIT_SECONDS.get(value[1] or "s", 1.0)


def setting_bytes(facts: Facts, name: str) -> int | None:
    value = facts.settings.get(name)
    if value is None:
        return None
    return int(value[0]) * _UNIT_BYTES.get(value[1] or "B", 1)


@dataclass
class Report:
    """The diagnosis, ready to render (asdict() is its JSON)."""

    server: dict[str, Any]
    slots: dict[str, Any]
    limits: dict[str, list[dict[str, Any]]]
    breakdowns: dict[str, list[dict[str, Any]]]
    holders: list[dict[str, Any]]
    long_running: list[dict[str, Any]]
    idle_in_transaction: list[dict[str, Any]]
    lock_waits: list[dict[str, Any]]
    candidates: dict[str, Any]
    settings: list[dict[str, Any]]
    memory: dict[str, Any]
    recommendations: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyze(facts: Facts, criteria: Criteria, ram_bytes: int | None = None) -> Report:
    """Work the facts out into the report."""
    clients = [s for s in facts.sessions if s.client_backend]
    others = [s for s in clients if not s.own]
    blocks = _blocks(facts.sessions)
    slots = _slots(facts, clients)
    candidates = [s for s in clients if criteria.matches(s)]
    candidates.sort(key=lambda s: -(s.state_seconds or 0))
    report = Report(
        server={
            "version": facts.server_version,
            "role": facts.role,
            "role_class": role_class(facts),
            "sees_all_sessions": facts.sees_all,
        },
        slots=slots,
        limits=_limits(facts, clients),
        breakdowns={
            "state": _count(others, lambda s: s.state_label),
            "application": _count(others, lambda s: s.application),
            "user": _count(others, lambda s: s.user or "unknown"),
            "client": _count(others, lambda s: s.client),
            "database": _count(others, lambda s: s.database or "unknown"),
        },
        holders=_holders(others),
        long_running=[
            _session_row(s, blocks)
            for s in sorted(others, key=lambda s: -(s.query_seconds or 0))
            if s.state == "active"
            and s.query_seconds is not None
            and s.query_seconds >= criteria.long_query_seconds
        ],
        idle_in_transaction=[
            _session_row(s, blocks)
            for s in sorted(others, key=lambda s: -(s.xact_seconds or 0))
            if s.state in IN_TRANSACTION
        ],
        lock_waits=[
            _session_row(s, blocks)
            for s in sorted(others, key=lambda s: -(s.state_seconds or 0))
            if s.blocked_by
        ],
        candidates={
            "criteria": {
                "idle_seconds": criteria.idle_seconds,
                "states": list(criteria.states),
                "applications": list(criteria.applications),
                "users": list(criteria.users),
                "databases": list(criteria.databases),
            },
            "sessions": [_session_row(s, blocks) for s in candidates],
            "by_holder": _holders(candidates),
            "statement": terminate_statement(candidates, criteria),
        },
        settings=_settings(facts),
        memory=_memory(facts, ram_bytes),
    )
    report.recommendations = _recommend(facts, criteria, report)
    return report


def role_class(facts: Facts) -> str:
    """Which slots the diagnosing role may use: superuser, reserved or ordinary."""
    if facts.superuser:
        return "superuser"
    if facts.reserved_member and "reserved_connections" in facts.settings:
        return "reserved"
    return "ordinary"


def _slots(facts: Facts, clients: Sequence[Session]) -> dict[str, Any]:
    """How many slots are used of max_connections and who may still get in (docs/slots.md)."""
    max_connections = setting_int(facts, "max_connections")
    superuser_reserved = setting_int(facts, "superuser_reserved_connections")
    reserved = setting_int(facts, "reserved_connections")
    used = len(clients)
    free = max(max_connections - used, 0)
    ordinary_limit = max_connections - superuser_reserved - reserved
    may_get_in = [
        {"who": "ordinary roles", "slots": max(free - superuser_reserved - reserved, 0)},
    ]
    if "reserved_connections" in facts.settings:
        may_get_in.append(
            {
                "who": "members of pg_use_reserved_connections",
                "slots": max(free - superuser_reserved, 0),
            }
        )
    may_get_in.append({"who": "superusers", "slots": free})
    return {
        "max_connections": max_connections,
        "superuser_reserved_connections": superuser_reserved,
        "reserved_connections": reserved if "reserved_connections" in facts.settings else None,
        "used": used,
        "free": free,
        "utilization": round(used / ordinary_limit, 4) if ordinary_limit > 0 else None,
        "may_get_in": may_get_in,
        "other_backends": dict(
            Counter(s.backend_type or "unknown" for s in facts.sessions if not s.client_backend)
        ),
        # Sessions whose state the role may not read (without pg_read_all_stats).
        "hidden": 0 if facts.sees_all else sum(1 for s in clients if s.state is None and not s.own),
    }


def _limits(facts: Facts, clients: Sequence[Session]) -> dict[str, list[dict[str, Any]]]:
    by_db = Counter(s.database for s in clients)
    by_role = Counter(s.user for s in clients)
    return {
        "databases": [
            {"name": name, "limit": limit, "used": by_db.get(name, 0)}
            for name, limit in sorted(facts.database_limits.items())
        ],
        "roles": [
            {"name": name, "limit": limit, "used": by_role.get(name, 0)}
            for name, limit in sorted(facts.role_limits.items())
        ],
    }


def _count(sessions: Iterable[Session], key: Any) -> list[dict[str, Any]]:
    counts = Counter(key(s) for s in sessions)
    return [
        {"key": k, "count": n} for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _holders(sessions: Iterable[Session]) -> list[dict[str, Any]]:
    """Sessions by (user, application, database), biggest first, with their states."""
    groups: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    oldest: dict[tuple[str, str, str], float] = defaultdict(float)
    for s in sessions:
        key = (s.user or "unknown", s.application, s.database or "unknown")
        groups[key][s.state_label] += 1
        oldest[key] = max(oldest[key], s.state_seconds or 0.0)
    rows: list[dict[str, Any]] = [
        {
            "user": k[0],
            "application": k[1],
            "database": k[2],
            "count": sum(states.values()),
            "states": dict(states.most_common()),
            "longest_in_state_seconds": round(oldest[k], 1),
        }
        for k, states in groups.items()
    ]
    rows.sort(key=lambda r: (-r["count"], r["user"], r["application"], r["database"]))
    return rows


def _blocks(sessions: Iterable[Session]) -> dict[int, list[int]]:
    """pid -> the pids waiting for its locks."""
    out: dict[int, list[int]] = defaultdict(list)
    for s in sessions:
        for blocker in s.blocked_by:
            out[blocker].append(s.pid)
    return out


def _session_row(s: Session, blocks: dict[int, list[int]]) -> dict[str, Any]:
    return {
        "pid": s.pid,
        "user": s.user,
        "application": s.application,
        "database": s.database,
        "client": s.client,
        "state": s.state_label,
        "state_seconds": _round(s.state_seconds),
        "xact_seconds": _round(s.xact_seconds),
        "query_seconds": _round(s.query_seconds),
        "wait": f"{s.wait_event_type}:{s.wait_event}" if s.wait_event_type else None,
        "blocked_by": list(s.blocked_by),
        "blocks": sorted(blocks.get(s.pid, [])),
        "query": s.query,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def quote_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings, the default since 9.1)."""
    if "\0" in value:
        raise ValueError("a NUL character cannot be in a SQL literal")
    return "'" + value.replace("'", "''") + "'"


def terminate_statement(candidates: Sequence[Session], criteria: Criteria) -> str | None:
    """The exact statement that ends `candidates`: only their pids, and only while each still
    matches the criteria when it runs (a session that went back to work is left alone), never
    our own session, the exporter's, or a backend that is not a client's."""
    if not candidates:
        return None
    pids = ", ".join(str(s.pid) for s in sorted(candidates, key=lambda s: s.pid))
    lines = [
        "SELECT pid, usename, application_name, state, pg_terminate_backend(pid) AS terminated",
        "  FROM pg_stat_activity",
        f" WHERE pid IN ({pids})",
        "   AND backend_type = 'client backend'",
        "   AND pid <> pg_backend_pid()",
        f"   AND application_name NOT LIKE '{EXPORTER_APPLICATIONS}%'",
        f"   AND state IN ({', '.join(quote_literal(s) for s in criteria.states)})",
        f"   AND state_change <= now() - interval '{criteria.idle_seconds:g} seconds'",
    ]
    for column, values in (
        ("application_name", criteria.applications),
        ("usename", criteria.users),
        ("datname", criteria.databases),
    ):
        if values:
            lines.append(f"   AND {column} IN ({', '.join(quote_literal(v) for v in values)})")
    return "\n".join(lines) + ";"


def _settings(facts: Facts) -> list[dict[str, Any]]:
    out = []
    for name in _SETTINGS:
        if name not in facts.settings:
            continue
        value, unit = facts.settings[name]
        if unit in _UNIT_SECONDS:
            seconds = setting_seconds(facts, name) or 0.0
            shown = "off (0)" if seconds == 0 else format_seconds(seconds)
        elif unit in _UNIT_BYTES:
            shown = format_bytes(setting_bytes(facts, name) or 0)
        else:
            shown = value
        out.append({"name": name, "value": value, "unit": unit, "shown": shown})
    return out


def _memory(facts: Facts, ram_bytes: int | None) -> dict[str, Any]:
    """The guide's max_connections arithmetic ("Increase max_connections")."""
    max_connections = setting_int(facts, "max_connections")
    shared_buffers = setting_bytes(facts, "shared_buffers") or 0
    work_mem = setting_bytes(facts, "work_mem") or 0
    out: dict[str, Any] = {
        "connection_overhead_bytes": max_connections * CONNECTION_MEMORY_BYTES,
        "shared_buffers_bytes": shared_buffers,
        "work_mem_bytes": work_mem,
        # The RAM the guide's work_mem formula needs for the current settings.
        "ram_implied_by_work_mem_bytes": shared_buffers
        + max_connections * WORK_MEM_PER_CONNECTION * work_mem,
        "ram_bytes": ram_bytes,
    }
    if ram_bytes:
        out["guide_shared_buffers_bytes"] = ram_bytes // 4
        out["guide_work_mem_bytes"] = (
            (ram_bytes - shared_buffers) // (max_connections * WORK_MEM_PER_CONNECTION)
            if max_connections
            else None
        )
        out["guide_max_connections_ceiling"] = ram_bytes // CONNECTION_MEMORY_BYTES
    return out


def _recommend(facts: Facts, criteria: Criteria, report: Report) -> list[dict[str, str]]:
    """What follows from what was seen, each with the guide's section."""
    recs: list[dict[str, str]] = []

    def add(section: str, text: str) -> None:
        recs.append({"section": section, "text": text})

    slots = report.slots
    used, max_connections = slots["used"], slots["max_connections"]
    ordinary = slots["may_get_in"][0]["slots"]
    candidates = report.candidates["sessions"]
    states = {row["key"]: row["count"] for row in report.breakdowns["state"]}
    idle = states.get("idle", 0)
    in_transaction = sum(states.get(s, 0) for s in IN_TRANSACTION)

    if ordinary == 0:
        add(
            GUIDE_RECOVERY,
            f"Ordinary roles are refused now ({used} of {max_connections} slots used). "
            "Free slots by ending the termination candidates below"
            + (" (the statement is printed with them)." if candidates else "."),
        )
    elif candidates:
        add(
            GUIDE_RECOVERY,
            f"{len(candidates)} session(s) have been idle past "
            f"{format_seconds(criteria.idle_seconds)}: ending them frees their slots.",
        )
    if report.holders and used:
        top = report.holders[0]
        if top["count"] * 2 >= used and top["count"] >= 5:
            add(
                GUIDE_APPLICATION,
                f"{top['count']} of {used} sessions are user {top['user']!r}, application "
                f"{top['application'] or '(none)'!r}: cap that application's pool (pool max, idle "
                f"timeout), or the role's slots with ALTER ROLE {top['user']} CONNECTION LIMIT n.",
            )
    if used and idle * 2 >= used and idle >= 5:
        add(
            GUIDE_POOLING,
            f"{idle} of {used} sessions are idle: they hold slots doing nothing. A pooler "
            "(PgBouncer, transaction pooling) serves the same clients with a few server "
            "connections.",
        )
        add(
            GUIDE_PRACTICES,
            "Do not just raise max_connections for idle sessions: each costs ~10 MB of RAM.",
        )
    if in_transaction:
        timeout = setting_seconds(facts, "idle_in_transaction_session_timeout")
        text = (
            f"{in_transaction} session(s) are idle in transaction: they hold their locks and "
            "slots until they commit."
        )
        if timeout == 0:
            text += (
                " Set idle_in_transaction_session_timeout (e.g. '5min') so they end by themselves."
            )
        add(GUIDE_PRACTICES, text)
    if report.lock_waits:
        blockers = sorted({b for row in report.lock_waits for b in row["blocked_by"]})
        add(
            GUIDE_DIAGNOSE,
            f"{len(report.lock_waits)} session(s) wait on locks held by pid(s) "
            f"{', '.join(map(str, blockers[:10]))}: ending the blockers releases them.",
        )
    if report.long_running:
        text = (
            f"{len(report.long_running)} query(ies) have run longer than "
            f"{format_seconds(criteria.long_query_seconds)}."
        )
        if setting_seconds(facts, "statement_timeout") == 0:
            text += " statement_timeout is off: set it for the application roles."
        add(GUIDE_DIAGNOSE, text)
    idle_session = setting_seconds(facts, "idle_session_timeout")
    if idle_session == 0 and idle >= 5 and used * 10 >= max_connections * 8:
        add(
            GUIDE_APPLICATION,
            "idle_session_timeout is off: applications' pools should close idle connections "
            "(idleTimeoutMillis, pool_recycle, CONN_MAX_AGE), or set it for their roles.",
        )
    utilization = slots["utilization"]
    if utilization is not None and utilization >= 0.8:
        add(
            GUIDE_MONITORING,
            f"Utilization is {utilization:.0%} of the slots ordinary roles may use: the guide "
            "alerts at 80 % (PostgresConnectionsHigh does).",
        )
    if slots["reserved_connections"] == 0 and not facts.superuser:
        add(
            GUIDE_RECOVERY,
            "reserved_connections is 0: set it (e.g. 3) and GRANT pg_use_reserved_connections "
            "to the monitoring role, so that it gets in when the server is full "
            "(docs/slots.md).",
        )
    memory = report.memory
    if memory["ram_bytes"] and memory["connection_overhead_bytes"] > memory["ram_bytes"]:
        add(
            GUIDE_MAX_CONNECTIONS,
            f"max_connections x 10 MB = {format_bytes(memory['connection_overhead_bytes'])} is "
            f"more than the {format_bytes(memory['ram_bytes'])} of RAM: lower it and pool.",
        )
    if slots["hidden"]:
        add(
            GUIDE_DIAGNOSE,
            f"{slots['hidden']} session(s) are hidden from role {facts.role}: GRANT pg_monitor "
            "(or pg_read_all_stats) to it to see their state and age.",
        )
    return recs


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def session_cells(row: dict[str, Any], age: str) -> list[Any]:
    """A session's cells as the report's session tables show them (terminal and page alike):
    pid, user, application, client, state, how long (`age`: a column of the row), whom it
    blocks and who blocks it."""
    return [
        row["pid"],
        row["user"] or "?",
        row["application"] or "-",
        row["client"],
        row["state"],
        format_seconds(row[age] or 0),
        " ".join(map(str, row["blocks"])) or "-",
        " ".join(map(str, row["blocked_by"])) or "-",
    ]


def holder_cells(holder: dict[str, Any]) -> list[Any]:
    """A holder's cells as the report's holders tables show them (terminal and page alike):
    sessions, user, application, database, sessions by state, longest in its state."""
    return [
        holder["count"],
        holder["user"],
        holder["application"] or "-",
        holder["database"],
        ", ".join(f"{k} {v}" for k, v in holder["states"].items()),
        format_seconds(holder["longest_in_state_seconds"]),
    ]
