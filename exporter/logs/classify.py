"""Log entries to events: a failed connection attempt and its reason, or a connection's setup
time. The message table is PostgreSQL's and PgBouncer's English wording (`lc_messages` must be
English for the texts; where a line carries the SQLSTATE, an unrecognised refusal still counts
as `other`); tests/test_log_messages.py provokes each on a real server of every major."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from exporter.logs.entry import LogEntry, seconds_of


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str
    user: str
    database: str
    host: str


@dataclass(frozen=True, slots=True)
class SetupTime:
    phase: str
    seconds: float


Event = Failure | SetupTime

# PostgreSQL's FATAL messages for a connection attempt it refused, matched from the start of
# the message; the majors each wording was seen on are in the README's table.
PG_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.DOTALL), reason)
    for pattern, reason in (
        (r"sorry, too many clients already$", "too_many_clients"),
        # 12-15: "... for non-replication superuser connections"; 16+: "... for roles with the
        # SUPERUSER attribute" or "... with privileges of the "pg_use_reserved_connections" role"
        (r"remaining connection slots are reserved for ", "reserved_slots_only"),
        (r'too many connections for database "', "database_limit"),
        (r'too many connections for role "', "role_limit"),
        (r'password authentication failed for user "', "authentication_failed"),
        (r'\S+ authentication failed for user "', "authentication_failed"),  # ident, peer, ...
        (r"no pg_hba\.conf entry for ", "no_hba_entry"),
        (r"pg_hba\.conf rejects connection for ", "hba_rejected"),
        (r'role ".*" does not exist$', "role_does_not_exist"),
        (r'database ".*" does not exist$', "database_does_not_exist"),
        (r"the database system is starting up$", "starting_up"),
        (r"the database system is not yet accepting connections$", "starting_up"),
        (r"the database system is not accepting connections$", "in_recovery"),
        (r"the database system is in recovery mode$", "in_recovery"),
        (r"the database system is shutting down$", "shutting_down"),
        (r"canceling authentication due to timeout$", "authentication_timeout"),
    )
)
_FORK = "could not fork new process for connection"
# SQLSTATEs of a refused connection: a FATAL with one of these and an unknown text is `other`.
_REFUSAL_STATES = frozenset(("53300", "28P01", "28000", "3D000", "57P03"))
PG_REASONS = (*dict.fromkeys(reason for _, reason in PG_FAILURES), "could_not_fork", "other")

_SETUP = re.compile(
    r"connection ready: setup total=(\d+(?:\.\d+)?) ms, fork=(\d+(?:\.\d+)?) ms,"
    r" authentication=(\d+(?:\.\d+)?) ms"
)
SETUP_PHASES = ("total", "fork", "authentication", "received_to_authorized")
# Connections received and not yet authorized or refused, by pid: a bound, the oldest dropped.
MAX_PENDING = 4096
_MAX_SETUP_SECONDS = 3600.0


class PostgresClassifier:
    """Stateful only for the pairing of `connection received` and `connection authorized` by
    pid (log_connections before 18), bounded by MAX_PENDING."""

    def __init__(self, setup_from_timestamps: bool = True) -> None:
        self.setup_from_timestamps = setup_from_timestamps
        self._pending: OrderedDict[int, tuple[float | None, str]] = OrderedDict()

    def classify(self, entry: LogEntry) -> tuple[Event, ...]:
        """The entry's events: none for most lines, three for a `connection ready` line."""
        message = entry.message
        if entry.severity == "FATAL":
            failure = self._failure(entry)
            return (failure,) if failure is not None else ()
        if entry.severity != "LOG":
            return ()
        if message.startswith("connection received: "):
            self._received(entry)
        elif message.startswith(("connection authorized: ", "replication connection auth")):
            setup = self._authorized(entry)
            return (setup,) if setup is not None else ()
        elif message.startswith("connection ready: "):
            return self._setup(message)
        elif message.startswith(_FORK):
            return (Failure("could_not_fork", "", "", ""),)
        return ()

    def _failure(self, entry: LogEntry) -> Failure | None:
        message = entry.message
        reason = next((r for pattern, r in PG_FAILURES if pattern.match(message)), None)
        if reason is None:
            if entry.sqlstate not in _REFUSAL_STATES:
                return None
            reason = "other"
        host = entry.host
        pending = self._pending.pop(entry.pid, None) if entry.pid is not None else None
        if not host and pending is not None:
            host = pending[1]
        # "local" for a Unix socket, as pg_connections_by_client says it.
        return Failure(reason, entry.user, entry.database, "local" if host == "[local]" else host)

    def _received(self, entry: LogEntry) -> None:
        if entry.pid is None:
            return
        pending = self._pending
        pending.pop(entry.pid, None)
        seconds = seconds_of(entry.stamp) if self.setup_from_timestamps else None
        host = entry.host or _host_in(entry.message)
        pending[entry.pid] = (seconds, host)
        if len(pending) > MAX_PENDING:
            pending.popitem(last=False)

    def _authorized(self, entry: LogEntry) -> SetupTime | None:
        pending = self._pending.pop(entry.pid, None) if entry.pid is not None else None
        if pending is None or pending[0] is None:
            return None
        end = seconds_of(entry.stamp)
        if end is None or not 0.0 <= end - pending[0] < _MAX_SETUP_SECONDS:
            return None
        return SetupTime("received_to_authorized", end - pending[0])

    @staticmethod
    def _setup(message: str) -> tuple[Event, ...]:
        """PostgreSQL 18's `connection ready: setup total=.. ms, fork=.. ms, authentication=..
        ms` (log_connections = setup_durations)."""
        match = _SETUP.match(message)
        if match is None:
            return ()
        return tuple(
            SetupTime(phase, float(match.group(i)) / 1000.0)
            for i, phase in enumerate(("total", "fork", "authentication"), start=1)
        )


def _host_in(message: str) -> str:
    """`connection received: host=10.0.0.5 port=5432` (or `host=[local]`)."""
    rest = message[len("connection received: host=") :]
    return rest.split(" ", 1)[0] if message.startswith("connection received: host=") else ""


# PgBouncer's `closing because: <reason>` of a client it refused or dropped, by prefix.
PGBOUNCER_FAILURES: tuple[tuple[str, str], ...] = (
    ("no more connections allowed (max_client_conn)", "max_client_conn"),
    ("query_wait_timeout", "query_wait_timeout"),
    ("query_timeout", "query_timeout"),
    ("client_login_timeout", "client_login_timeout"),
    ("no such database", "no_such_database"),
    ("no such user", "login_failed"),
    ("password authentication failed", "login_failed"),
    ("SASL authentication failed", "login_failed"),
    ("login failed", "login_failed"),
    ("pgbouncer cannot connect to server", "server_unavailable"),
    ("server login has been failing", "server_login_failing"),
)
_AUTH_FAILED = re.compile(r'^"?\S+"? authentication failed$')  # "trust", "cert", ...
PGBOUNCER_REASONS = (*dict.fromkeys(r for _, r in PGBOUNCER_FAILURES), "server_login_failed")
_CLOSING = "closing because: "


class PgbouncerClassifier:
    def classify(self, entry: LogEntry) -> tuple[Event, ...]:
        failure = self._failure(entry)
        return (failure,) if failure is not None else ()

    @staticmethod
    def _failure(entry: LogEntry) -> Failure | None:
        side, message = entry.severity[:1], entry.message
        if not message.startswith(_CLOSING):
            return None
        why = message[len(_CLOSING) :]
        if side == "S":  # PgBouncer's own connection to PostgreSQL
            if why.startswith("login failed"):
                return Failure("server_login_failed", entry.user, entry.database, "")
            return None
        if why.endswith(")") and " (age=" in why:
            why = why[: why.rindex(" (age=")]
        for start, reason in PGBOUNCER_FAILURES:
            if why.startswith(start):
                return Failure(reason, entry.user, entry.database, entry.host)
        if _AUTH_FAILED.match(why):
            return Failure("login_failed", entry.user, entry.database, entry.host)
        return None
