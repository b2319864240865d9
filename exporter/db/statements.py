"""A scrape's statements, sent over the connection's libpq handle instead of a psycopg cursor.

`AsyncConnection.pgconn` is psycopg's documented way to libpq; this module sends one statement
(optionally prepared under its own name), waits for its results on the event loop (the socket
watched by the loop, no thread), loads the values with the connection's own loaders (so rows
hold exactly what a cursor would give), and raises the psycopg error a cursor would. Why not a
cursor: docs/architecture.md ("The hand-built parts"), figures in docs/benchmarks.md.

The connection must not be used by anything else meanwhile (the target's connection is held
by one user at a time). A statement that ends leaves it idle or in a transaction; one given up
at its limit (or cancelled) leaves it mid-result: the connection is closed then (its status is
ACTIVE; the pool replaces it).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import pq

Row = dict[str, Any]

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)

# psycopg's loader for a type it does not know (postgres.INVALID_OID).
_UNKNOWN_OID = 0
# Each connection's loader of each type it has returned, made once.
_LOADERS: weakref.WeakKeyDictionary[
    psycopg.AsyncConnection[Any], dict[int, Callable[[Any], Any]]
] = weakref.WeakKeyDictionary()


async def execute(
    conn: psycopg.AsyncConnection[Any],
    text: bytes,
    limit: float,
    name: bytes | None = None,
    prepare: bool = False,
    before: Sequence[bytes] = (),
    after: Sequence[bytes] = (),
) -> tuple[list[Row], tuple[str, ...]]:
    """Run `text` (no parameters: their values are written in) and return the rows and
    column names of its first result. With `name`, run the statement prepared under that name
    (`prepare`: parse it under that name first); then `before` and `after` (our own
    statements: BEGIN, a SET, COMMIT) travel in the same message, around an EXECUTE of it,
    instead of a round trip each. Gives up waiting at `limit` (a time.monotonic() value) with
    an OperationalError (and closes the connection, mid-result); a caller's timeout may end it
    earlier (cancelled: the connection is closed too)."""
    try:
        return await _execute(conn, text, limit, name, prepare, before, after)
    except BaseException:
        if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            # Mid-statement: its protocol state is unknown, so it serves no one again.
            await conn.close()
        raise


async def _execute(
    conn: psycopg.AsyncConnection[Any],
    text: bytes,
    limit: float,
    name: bytes | None,
    prepare: bool,
    before: Sequence[bytes],
    after: Sequence[bytes],
) -> tuple[list[Row], tuple[str, ...]]:
    pgconn = conn.pgconn
    skip = 0
    if name is not None:
        if prepare:
            pgconn.send_prepare(name, text)
            _raise_first_error(conn, await _results(pgconn, limit))
        if before or after:
            # One simple-protocol message: after an error the server runs none of the rest.
            pgconn.send_query(b"; ".join([*before, b"EXECUTE " + name, *after]))
            skip = len(before)
        else:
            pgconn.send_query_prepared(name, None)
    else:
        assert not (before or after), "only a prepared statement travels with others"
        pgconn.send_query(text)
    results = await _results(pgconn, limit)
    _raise_first_error(conn, results)
    if len(results) <= skip:
        return [], ()
    return _rows(conn, results[skip])


async def _results(pgconn: pq.abc.PGconn, limit: float) -> list[pq.abc.PGresult]:
    """Every result of the statement just sent, waiting for them on the socket."""
    try:
        while pgconn.flush():
            await _ready(pgconn.socket, True, limit)
        results: list[pq.abc.PGresult] = []
        while True:
            while pgconn.is_busy():
                await _ready(pgconn.socket, False, limit)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                return results
            results.append(result)
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:  # libpq's own failures: the connection is gone
        raise psycopg.OperationalError(str(exc)) from None


async def _ready(fileno: int, writing: bool, limit: float) -> None:
    """Until the socket can be written (or read), by `limit` (time.monotonic()) at the latest."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writing:
        loop.add_writer(fileno, wake)
    else:
        loop.add_reader(fileno, wake)
    try:
        # The loop's clock is time.monotonic() (asyncio's BaseEventLoop.time).
        async with asyncio.timeout_at(limit - time.monotonic() + loop.time()):
            await ready
    except TimeoutError:
        raise psycopg.OperationalError("the server did not answer in time") from None
    finally:
        if writing:
            loop.remove_writer(fileno)
        else:
            loop.remove_reader(fileno)


def _raise_first_error(conn: psycopg.AsyncConnection[Any], results: list[pq.abc.PGresult]) -> None:
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            state = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            try:
                cls = psycopg.errors.lookup(state)
            except KeyError:
                cls = psycopg.DatabaseError
            encoding = conn.info.encoding
            message = (result.error_message or b"").decode(encoding, "replace").strip()
            severity, sep, rest = message.partition(":  ")  # "ERROR:  ...", as psycopg strips
            if sep and severity.isupper():
                message = rest
            raise cls(message or "no error details available", info=result, encoding=encoding)
        if result.status not in _OK:
            raise psycopg.ProgrammingError(
                f"unexpected result: {pq.ExecStatus(result.status).name}"
            )


def _rows(
    conn: psycopg.AsyncConnection[Any], result: pq.abc.PGresult
) -> tuple[list[Row], tuple[str, ...]]:
    width = result.nfields
    if result.status != pq.ExecStatus.TUPLES_OK:
        return [], ()
    encoding = conn.info.encoding
    columns = tuple((result.fname(i) or b"").decode(encoding) for i in range(width))
    known = _LOADERS.setdefault(conn, {})
    loads = []
    for i in range(width):
        oid = result.ftype(i)
        load = known.get(oid)
        if load is None:
            # A type psycopg has no loader for comes as text, as from a cursor.
            cls = conn.adapters.get_loader(oid, pq.Format.TEXT) or conn.adapters.get_loader(
                _UNKNOWN_OID, pq.Format.TEXT
            )
            assert cls is not None, "psycopg always has a text loader for unknown types"
            load = known[oid] = cls(oid, conn).load
        loads.append(load)
    value = result.get_value
    fields = tuple(zip(range(width), columns, loads, strict=True))
    rows = []
    for r in range(result.ntuples):
        rows.append(
            {
                column: None if (raw := value(r, c)) is None else load(raw)
                for c, column, load in fields
            }
        )
    return rows, columns
