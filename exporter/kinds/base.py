"""What a kind of target is: everything that differs between a PostgreSQL server and the other
things the exporter scrapes (a PgBouncer admin console), as values in one object per kind.

A kind says what to do, never does it: the configuration reads its facts (name, built-in query
files, how its DSN is completed), the connection and scrape layers read its `RunPolicy` (how to
connect, set up and check a session, what bounds a query and a scrape, whether a scrape's
queries share a transaction) and act on it. So this package imports neither of them.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar


class Liveness(enum.Enum):
    """How the held connection is checked before each use."""

    # No round trip while nothing has arrived: a server that ended the session sends its
    # goodbye and closes the socket, which makes it readable; anything readable is read by an
    # empty query, which fails on a closed session.
    SOCKET = "socket"
    # A bounded round trip (`RunPolicy.liveness_statement`), where an empty query is refused.
    ROUND_TRIP = "round trip"


class WatchdogScope(enum.Enum):
    """What one client-side watchdog bounds (it shuts the socket down when time is up)."""

    # The whole scrape: the server bounds each statement itself (statement_timeout), the
    # watchdog catches a server that does not answer at all.
    SCRAPE = "scrape"
    # Each query: the server has no statement_timeout.
    QUERY = "query"


@dataclass(frozen=True)
class RunPolicy:
    """How the connection and scrape layers treat a target of this kind."""

    # Parameters bound on the client (psycopg's ClientCursor) and nothing prepared by psycopg:
    # the server speaks only the simple query protocol.
    client_side_binding: bool
    # Whether statements may run prepared (the target's prepared_statements setting decides).
    prepares_statements: bool
    # Whether the session has statement_timeout and lock_timeout, set when it opens and
    # statement_timeout again before a query when it changes.
    session_timeouts: bool
    liveness: Liveness
    # The statement of a ROUND_TRIP liveness check.
    liveness_statement: str
    watchdog: WatchdogScope
    # Whether a scrape's queries share one read-only transaction (one snapshot of the backends).
    one_transaction: bool
    # Whether a metric whose columns the result lacks is left out (the rest of its query still
    # reports) instead of failing the query as an invalid result.
    tolerates_missing_columns: bool
    # Whether the server's backends can be diagnosed (the /sessions page, `diagnose`).
    offers_sessions: bool


class TargetKind(ABC):
    """One kind of target. Stateless: one instance per kind serves every target of it."""

    # Config-time facts.
    # The config's `kind` (and a query's `target_kind`) for this kind.
    name: ClassVar[str]
    # How the operator calls the server (pages, logs, the metrics reference).
    title: ClassVar[str]
    # Its built-in collectors: files of exporter/queries, in the order they run.
    query_files: ClassVar[tuple[str, ...]]

    # Run-time policy.
    policy: ClassVar[RunPolicy]

    def resolve_conninfo(self, conninfo: str, where: str, problems: list[str]) -> str:
        """The DSN to connect to, completed for this kind; a problem named by `where` if the
        operator's DSN cannot be one of it."""
        return conninfo

    @abstractmethod
    def format_version(self, version: int) -> str:
        """The server's version (psycopg's `server_version`) the way the server writes it."""

    @abstractmethod
    def version_gate(self, min_version: int) -> str:
        """How the metrics reference names a query's minimum version ("" for none)."""
