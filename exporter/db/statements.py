"""A scrape's statements, sent over the connection's libpq handle instead of a psycopg cursor.

A cursor costs ~0.2 ms of client CPU per statement (its generators, a Column per field, a
row maker): at 1,000 targets with six statements each, a whole core-second per scrape round.
`Connection.pgconn` is psycopg's documented way to libpq; this module sends one statement
(optionally prepared under its own name), waits for its results without holding the GIL,
loads the values with the connection's own loaders (so rows hold exactly what a cursor would
give), and raises the psycopg error a cursor would. It is three times cheaper.

The connection must not be used by anything else meanwhile (the target's connection is held
by one scrape at a time). A statement that ends leaves it idle or in a transaction; one given
up at its limit leaves it mid-result, and the connection is then replaced (its status is
ACTIVE: TargetConnection's check after use discards it).
"""

from __future__ import annotations

import select
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import pq

from exporter.db.turns import SCRAPES

Row = dict[str, Any]

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)

# psycopg's loader for a type it does not know (postgres.INVALID_OID).
_UNKNOWN_OID = 0
# Each connection's loader of each type it has returned, made once.
_LOADERS: weakref.WeakKeyDictionary[psycopg.Connection[Any], dict[int, Callable[[Any], Any]]] = (
    weakref.WeakKeyDictionary()
)


def execute(
    conn: psycopg.Connection[Any],
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
    an OperationalError; a watchdog normally ends it earlier."""
    pgconn = conn.pgconn
    skip = 0
    if name is not None:
        if prepare:
            pgconn.send_prepare(name, text)
            _raise_first_error(conn, _results(pgconn, limit))
        if before or after:
            # One simple-protocol message: after an error the server runs none of the rest.
            pgconn.send_query(b"; ".join([*before, b"EXECUTE " + name, *after]))
            skip = len(before)
        else:
            pgconn.send_query_prepared(name, None)
    else:
        assert not (before or after), "only a prepared statement travels with others"
        pgconn.send_query(text)
    results = _results(pgconn, limit)
    _raise_first_error(conn, results)
    if len(results) <= skip:
        return [], ()
    return _rows(conn, results[skip])


def _results(pgconn: pq.abc.PGconn, limit: float) -> list[pq.abc.PGresult]:
    """Every result of the statement just sent, waiting for them on the socket."""
    try:
        while pgconn.flush():
            _wait(pgconn, select.POLLOUT, limit)
        results: list[pq.abc.PGresult] = []
        while True:
            while pgconn.is_busy():
                _wait(pgconn, select.POLLIN, limit)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                return results
            results.append(result)
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:  # libpq's own failures: the connection is gone
        raise psycopg.OperationalError(str(exc)) from None


def _wait(pgconn: pq.abc.PGconn, event: int, limit: float) -> None:
    poller = select.poll()  # not select(): a descriptor may be above FD_SETSIZE
    poller.register(pgconn.socket, event)
    with SCRAPES.given_up():
        while not poller.poll(max(0, int((limit - time.monotonic()) * 1000)) or 0):
            if time.monotonic() >= limit:
                raise psycopg.OperationalError("the server did not answer in time")


def _raise_first_error(conn: psycopg.Connection[Any], results: list[pq.abc.PGresult]) -> None:
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
    conn: psycopg.Connection[Any], result: pq.abc.PGresult
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
