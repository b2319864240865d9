"""The statements a log feed runs on the target's held connection (never a second one): the
remote source's listing and read through `pgce_read_log` (exporter/logs/sql), and `SHOW
log_line_prefix` for a `stderr` log whose prefix the configuration does not give.

The caller holds the connection through `TargetConnection.idle_connection()`, so none of this
ever waits for, or delays, more than the statements it runs. Each statement is bounded on the
server by the target's statement timeout and on the client by its watchdog (a server that
stops answering has the connection closed, as a scrape's would be). Their values are bound
by psycopg, not written into the text: the read's offset changes at every poll, and a text
per offset would be a new prepared statement per poll in the connection's cache.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors

from exporter.db.connection import TargetConnection
from exporter.logs.remote import LISTING_SQL, READ_SQL, RemoteTail
from exporter.logs.source import Piece

SHOW_PREFIX_SQL = "SHOW log_line_prefix"
# How long past the statement timeout the client waits before it gives the connection up.
_GRACE = 5.0


def failure_reason(exc: BaseException) -> str:
    """The `reason` of pg_connections_exporter_log_errors_total for a failed statement."""
    if isinstance(exc, psycopg.errors.UndefinedFunction):
        return "function_missing"  # pgce_read_log not installed (or not on the search_path)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return "permission"  # not granted EXECUTE, or the server cannot read the directory
    if isinstance(exc, psycopg.errors.UndefinedFile):
        return "missing"  # the log directory does not exist
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return "timeout"
    return "error"


async def _rows(
    owner: TargetConnection,
    conn: psycopg.AsyncConnection[Any],
    sql: str,
    params: tuple[object, ...] | None = None,
) -> list[tuple[Any, ...]]:
    await owner.set_statement_timeout(conn, owner.statement_timeout)
    with owner.watchdog(conn, owner.statement_timeout + _GRACE):
        cursor = conn.cursor()
        await cursor.execute(sql, params)
        return [tuple(row) for row in await cursor.fetchall()]


async def show_log_line_prefix(owner: TargetConnection, conn: psycopg.AsyncConnection[Any]) -> str:
    [(prefix,)] = await _rows(owner, conn, SHOW_PREFIX_SQL)
    return str(prefix)


async def read_remote(
    owner: TargetConnection,
    conn: psycopg.AsyncConnection[Any],
    tail: RemoteTail,
    budget: int,
) -> list[Piece]:
    """One poll: the listing, what `tail` plans from it, at most `budget` bytes read."""
    listing = await _rows(owner, conn, LISTING_SQL)
    was_up = tail.counts.up
    request = tail.plan(listing, budget)
    if request is None:
        return []
    # Up once the read has answered: /metrics rendered meanwhile must not see a 1 that a
    # failing read (pgce_read_log missing) turns back into 0 every poll.
    listed, tail.counts.up = tail.counts.up, was_up
    [(data,)] = await _rows(owner, conn, READ_SQL, (request.name, request.offset, request.length))
    tail.counts.up = listed
    return tail.take(request, bytes(data) if data is not None else None)
