"""What a kind of target is: everything that differs between a PostgreSQL server and the other
things the exporter scrapes (a PgBouncer admin console), owned in one object per kind.

The rest of the exporter asks a target's kind (`exporter.kinds.kind_of`, resolved once per
target) instead of comparing the config's `kind` string: how to connect, how to check that
the held connection is alive, how to bound a query and a scrape, whether a scrape's queries
share a transaction, whether a metric whose columns are missing is left out or fails its
query, how to show the server's version, whether /sessions and `diagnose` apply, and which
built-in query files are its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import psycopg

    from exporter.config import QuerySpec
    from exporter.connection import ScrapeTransaction, TargetConnection, Watchdog


class TargetKind(ABC):
    """One kind of target. Stateless: one instance per kind serves every target of it."""

    # The config's `kind` (and a query's `target_kind`) for this kind.
    name: ClassVar[str]
    # How the operator calls the server (pages, logs, the metrics reference).
    title: ClassVar[str]
    # Its built-in collectors: files of exporter/queries, in the order they run.
    query_files: ClassVar[tuple[str, ...]]
    # Whether the server's backends can be diagnosed (the /sessions page, `diagnose`).
    offers_sessions: ClassVar[bool]
    # Whether a metric whose columns the result lacks is left out (the rest of its query
    # still reports) instead of failing the query as an invalid result.
    tolerates_missing_columns: ClassVar[bool]
    # Whether the session has a statement_timeout, set before a query when it changes.
    session_statement_timeout: ClassVar[bool]
    # Whether statements may run prepared (the target's prepared_statements setting decides).
    prepares_statements: ClassVar[bool]

    def runs(self, query: QuerySpec) -> bool:
        """Whether `query` is one of this kind's."""
        return query.target_kind == self.name

    @abstractmethod
    def connect_options(self) -> dict[str, Any]:
        """psycopg.Connection.connect keyword arguments of this kind (prepare policy, cursor)."""

    def resolve_conninfo(self, conninfo: str, where: str, problems: list[str]) -> str:
        """The DSN to connect to, completed for this kind; a problem named by `where` if the
        operator's DSN cannot be one of it."""
        return conninfo

    @abstractmethod
    def configure(
        self, conn: psycopg.Connection[Any], statement_timeout: str, lock_timeout: str
    ) -> str | None:
        """Set up a new session; the statement_timeout it now has (None: it has none)."""

    @abstractmethod
    def check(self, conn: psycopg.Connection[Any], connection: TargetConnection) -> None:
        """The liveness check before each use: raises psycopg.Error or OSError if the held
        connection cannot be used."""

    @abstractmethod
    def scrape_guard(
        self, connection: TargetConnection, conn: psycopg.Connection[Any], seconds: float
    ) -> AbstractContextManager[Watchdog | None]:
        """What bounds a whole scrape (`seconds`: past the deadline by a grace)."""

    @abstractmethod
    def query_bound(
        self,
        connection: TargetConnection,
        conn: psycopg.Connection[Any],
        seconds: float,
        guard: Watchdog | None,
    ) -> AbstractContextManager[Watchdog | None]:
        """What bounds one query to `seconds` beyond the session's statement_timeout, if
        anything (`guard`: the scrape's); the watchdog it yields says whether it fired."""

    @abstractmethod
    def scrape_transaction(
        self, connection: TargetConnection, conn: psycopg.Connection[Any]
    ) -> ScrapeTransaction | None:
        """The transaction a scrape's queries share, or None (each query on its own)."""

    @abstractmethod
    def format_version(self, version: int) -> str:
        """The server's version (psycopg's `server_version`) the way the server writes it."""

    @abstractmethod
    def version_gate(self, min_version: int) -> str:
        """How the metrics reference names a query's minimum version ("" for none)."""
