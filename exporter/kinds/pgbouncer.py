"""PgBouncer's admin console: only SHOW commands over the simple query protocol, no
statement_timeout, no transactions, and columns that come and go between versions.

A query is bounded by a watchdog that shuts the socket down when its time is up (a cancel
request would not help: a stalled PgBouncer handles it on the same stalled event loop).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.conninfo

from exporter.kinds.base import TargetKind

if TYPE_CHECKING:
    from exporter.connection import ScrapeTransaction, TargetConnection, Watchdog

# The admin console's virtual database, where PgBouncer's statistics are.
ADMIN_DATABASE = "pgbouncer"


class PgBouncerKind(TargetKind):
    name = "pgbouncer"
    title = "PgBouncer"
    query_files = ("pgbouncer.yaml",)
    offers_sessions = False
    tolerates_missing_columns = True
    session_statement_timeout = False
    prepares_statements = False

    def connect_options(self) -> dict[str, Any]:
        # Client-side binding: the console speaks only the simple query protocol.
        return {"prepare_threshold": None, "cursor_factory": psycopg.ClientCursor}

    def resolve_conninfo(self, conninfo: str, where: str, problems: list[str]) -> str:
        """The admin console is the virtual database `pgbouncer`: named when the DSN names
        none, a problem when it names another."""
        dbname = psycopg.conninfo.conninfo_to_dict(conninfo).get("dbname")
        if dbname is None:
            return psycopg.conninfo.make_conninfo(conninfo, dbname=ADMIN_DATABASE)
        if dbname != ADMIN_DATABASE:
            problems.append(
                f"{where}: a pgbouncer target connects to the admin console: dbname must be "
                f"pgbouncer, not {dbname!r}"
            )
        return conninfo

    def configure(
        self, conn: psycopg.Connection[Any], statement_timeout: str, lock_timeout: str
    ) -> str | None:
        return None  # the console refuses SET, and has no statement_timeout

    def check(self, conn: psycopg.Connection[Any], connection: TargetConnection) -> None:
        """A bounded round trip: the console refuses PostgreSQL's empty query."""
        with connection.watchdog(conn, connection.statement_timeout):
            conn.execute("SHOW VERSION")

    def scrape_guard(
        self, connection: TargetConnection, conn: psycopg.Connection[Any], seconds: float
    ) -> AbstractContextManager[Watchdog | None]:
        return nullcontext()  # every query has its own watchdog

    def query_bound(
        self,
        connection: TargetConnection,
        conn: psycopg.Connection[Any],
        seconds: float,
        guard: Watchdog | None,
    ) -> AbstractContextManager[Watchdog | None]:
        return connection.watchdog(conn, seconds)

    def scrape_transaction(
        self, connection: TargetConnection, conn: psycopg.Connection[Any]
    ) -> ScrapeTransaction | None:
        return None  # the console has no transactions

    def format_version(self, version: int) -> str:
        """psycopg reads PgBouncer's "1.18.0" as 11800."""
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"

    def version_gate(self, min_version: int) -> str:
        return ""  # the reference names no PgBouncer version gate


PGBOUNCER = PgBouncerKind()
