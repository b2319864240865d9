"""PostgreSQL: statement_timeout on the server bounds each query, a watchdog the whole scrape;
a scrape's queries share one read-only transaction; statements may run prepared."""

from __future__ import annotations

import select
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import psycopg

from exporter.kinds.base import TargetKind

if TYPE_CHECKING:
    from exporter.connection import ScrapeTransaction, TargetConnection, Watchdog

# psycopg prepares a statement after this many runs: never, unless asked for.
NEVER_BY_COUNT = 1 << 62


class PostgresKind(TargetKind):
    name = "postgres"
    title = "PostgreSQL"
    query_files = ("connections.yaml", "sessions.yaml")
    offers_sessions = True
    tolerates_missing_columns = False
    session_statement_timeout = True
    prepares_statements = True

    def connect_options(self) -> dict[str, Any]:
        # Never prepared by count: only the statements run with prepare=True (prepared()).
        return {"prepare_threshold": NEVER_BY_COUNT}

    def configure(
        self, conn: psycopg.Connection[Any], statement_timeout: str, lock_timeout: str
    ) -> str | None:
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false),"
            " set_config('lock_timeout', %s, false)",
            (statement_timeout, lock_timeout),
        )
        return statement_timeout

    def check(self, conn: psycopg.Connection[Any], connection: TargetConnection) -> None:
        """Without a round trip while nothing has arrived: a server that ended the session
        (restart, pg_terminate_backend, idle_session_timeout) sends its goodbye and closes the
        socket, which makes it readable; an idle session's socket has nothing to read.
        Anything readable is read by an empty query, which reads it and fails on a closed
        session (a new one is opened then)."""
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the connection is closed")
        poller = select.poll()  # not select(): a descriptor may be above FD_SETSIZE
        poller.register(conn.fileno(), select.POLLIN)
        if poller.poll(0):
            conn.execute("")

    def scrape_guard(
        self, connection: TargetConnection, conn: psycopg.Connection[Any], seconds: float
    ) -> AbstractContextManager[Watchdog | None]:
        """Every statement_timeout ends before the deadline: a server still busy `seconds`
        on is not answering, and its connection is cut so that the next scrape gets a new one."""
        return connection.watchdog(conn, seconds)

    def query_bound(
        self,
        connection: TargetConnection,
        conn: psycopg.Connection[Any],
        seconds: float,
        guard: Watchdog | None,
    ) -> AbstractContextManager[Watchdog | None]:
        """The server bounds the statement itself (statement_timeout); the scrape's guard a
        silent server."""
        return nullcontext(guard)

    def scrape_transaction(
        self, connection: TargetConnection, conn: psycopg.Connection[Any]
    ) -> ScrapeTransaction | None:
        """One read-only transaction: the queries read one snapshot of the backends."""
        return connection.transaction(conn)

    def format_version(self, version: int) -> str:
        if version >= 100000:
            return f"{version // 10000}.{version % 10000}"
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"

    def version_gate(self, min_version: int) -> str:
        return f"PostgreSQL {min_version // 10000}+"


POSTGRES = PostgresKind()
