"""The one connection the exporter holds per target, in a psycopg_pool.AsyncConnectionPool of one.

Opened once, kept between scrapes (no recycling: `max_lifetime` and `max_idle` are years, so a
slot once held is never given up while the server is full), checked before each use and
re-opened in the background when lost; the pool's maintenance runs as tasks of the event
loop, not threads, so the exporter's threads do not grow with its targets. What the pool does
not do is added around it: why the last attempt failed (by reason, for the metrics and the
landing page), and attempts spaced 1, 2, 4, 8 then every 10 s while they fail (a full server
is not sent a new backend to refuse more often than that), however the pool retries.

What differs by target kind (connect options, session set-up, the liveness check, what bounds
a query) is read from the target's kind's policy (exporter.kinds) and done here. On
PostgreSQL, statement_timeout bounds each query on the server; the scrape's own asyncio
timeout catches a server that does not answer at all (a stopped backend, or a proxy in front
whose server is gone: the kernel, or the proxy, still acknowledges, so neither TCP keepalives
nor tcp_user_timeout ever fire). A PgBouncer admin console has no statement_timeout: a
timeout bounds each query. A statement given up mid-result closes its connection
(statements.py), and the pool opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import re
import select
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from exporter.config.model import Target
from exporter.db import lenienttext
from exporter.db.failures import classify
from exporter.db.redact import describe_conninfo
from exporter.db.statements import execute
from exporter.kinds import Liveness, kind_of

APPLICATION_NAME = "pg-connections-exporter"
# psycopg prepares a statement after this many runs: never, unless asked for (prepared()).
NEVER_BY_COUNT = 1 << 62
# How long past its statement_timeout one of our own statements (BEGIN, COMMIT, a SET) is
# waited for at most; the scrape's timeout normally cuts a silent server sooner.
_CONTROL_GRACE = 5.0
# Query texts kept per target (a config's queries; cleared when reloads pile up more).
_MAX_TEXTS = 256
# What a server without our prepared statements answers (a transaction-pooling PgBouncer in
# front of it hands each transaction another server connection).
_PREPARED_STATEMENT_ERRORS = (
    psycopg.errors.InvalidSqlStatementName,
    psycopg.errors.DuplicatePreparedStatement,
)
# "Never": the held connection is not recycled for its age or idleness.
_NEVER = 10 * 365 * 86400.0
# The pool's own retries of a failed attempt end after this; the next use starts them again.
_POOL_RETRIES_FOR = 15.0
# Longest wait between two attempts while they fail.
_MAX_BACKOFF = 10.0

_TCP_LIVENESS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,  # ms: unacknowledged data for this long ends the connection
}

log = logging.getLogger(__name__)
# The pool's own log says, per target and attempt, what TargetConnection logs once in our
# format (and its INFO lines run per use): only its errors are kept.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


@dataclass(frozen=True)
class ConnectFailure:
    """The last failed connection attempt, as psycopg reported it."""

    at: float
    reason: str
    message: str


class NotConnected(Exception):
    """No connection to the target within the time given (the reason is in last_failure)."""


class _Closing(Exception):
    """No attempt: the connection is being closed."""


class Busy(Exception):
    """The target's connection is in use (by a scrape): what a sampler's tick skips for."""


class _HeldPool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """The pool of one, telling its owner of each attempt (psycopg_pool has no hook for a
    failed one: its `_connect` is wrapped, pinned in pyproject.toml and held by
    tests/test_connection_pool.py)."""

    def __init__(self, owner: TargetConnection, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner = owner

    async def _connect(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        await self._owner._wanted_again()
        await self._owner._spaced()
        try:
            conn = await super()._connect(timeout)
        except Exception as exc:
            if not isinstance(exc, _Closing):
                self._owner._failed(exc)
            raise
        self._owner._succeeded()
        return conn


class TargetConnection:
    """Hands out the target's single connection to one user at a time."""

    def __init__(self, target: Target, statement_timeout: float, lock_timeout: float) -> None:
        self.target = target
        self.kind = kind_of(target.kind)
        self.policy = policy = self.kind.policy
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        # The statement_timeout the live session has, so that it is only SET when it changes;
        # the statements it has prepared (statements.execute's names); whether prepared
        # statements failed on it (it runs every statement unprepared then). Reset by each
        # new session (_configure).
        self._session_timeout: str | None = None
        self._prepared_names: set[bytes] = set()
        self._unprepared = False
        self._session: psycopg.AsyncConnection[Any] | None = None
        # (sql, params) -> the text sent
        self._texts: dict[tuple[str, str], bytes] = {}
        # Queries the server found to hold several statements: never prepared.
        self._several_statements: set[str] = set()
        self.last_failure: ConnectFailure | None = None
        self.connect_failures: Counter[str] = Counter()
        self._failures_in_a_row = 0
        self._next_attempt = 0.0
        self._users = 0
        # Users that need a session now (a scrape, a probe; not a sampler's borrow), and an
        # event set when one comes (or the connection closes): a lost session is replaced only
        # then (_wanted_again).
        self._demand = 0
        self._demanded = asyncio.Event()
        self._closing = asyncio.Event()
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(1, round(target.connect_timeout)),
            # A server that vanishes without a word (a network cut, a frozen host) would leave
            # the held connection blocked in a read until the kernel gives up (minutes): TCP
            # keepalives and a user timeout bound that. A DSN's own values win.
            **{
                key: value
                for key, value in _TCP_LIVENESS.items()
                if key not in psycopg.conninfo.conninfo_to_dict(target.conninfo)
            },
            **_connect_options(policy.client_side_binding),
            # Names that are not UTF-8 must not fail a scrape (lenienttext.py).
            "context": lenienttext.CONTEXT,
        }
        # Resolved once: the hot path reads these, not the policy.
        self._sets_timeout = policy.session_timeouts
        self._prepares = policy.prepares_statements and target.prepared_statements
        self._pool = _HeldPool(
            self,
            conninfo=target.conninfo,
            kwargs=kwargs,
            min_size=1,
            max_size=1,
            open=False,
            configure=self._configure,
            check=self._check,
            name=target.name,
            max_lifetime=_NEVER,
            max_idle=_NEVER,
            reconnect_timeout=_POOL_RETRIES_FOR,
            num_workers=1,
        )

    async def open(self) -> None:
        """Start connecting in the background; a down server does not hold up start-up."""
        await self._pool.open(wait=False)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the connection, once its user (if any) is done with it or `timeout` passed."""
        self._closing.set()
        self._demanded.set()
        await self._pool.close(timeout)

    @property
    def connected(self) -> bool:
        conn = self._session
        return conn is not None and not conn.closed and not conn.broken

    @property
    def wanted(self) -> bool:
        """Inside `idle_connection`: whether someone else (a scrape) now waits for the
        connection, so that a sampler gives it back before its next statement."""
        return self._users > 1

    async def _wanted_again(self) -> None:
        """Before an attempt: the first session is opened at once (start-up); a lost one is
        replaced only once someone needs it (a scrape), not when the pool notices the loss
        (a sampler's statement on a session the server ended). Between scrapes the exporter
        does not race the server's clients for the slot the lost session freed."""
        if self._session is None:
            return
        while self._demand == 0 and not self._closing.is_set():
            self._demanded.clear()
            await self._demanded.wait()
        if self._closing.is_set():
            raise _Closing

    async def _spaced(self) -> None:
        """Before an attempt: at most one a second, backing off to one every 10 s while they
        fail, however often the pool asks; none once closing (the wait ends at once, so a
        close never waits out a backoff)."""
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), wait)
        if self._closing.is_set():
            raise _Closing

    def _succeeded(self) -> None:
        self._failures_in_a_row = 0
        self._next_attempt = 0.0

    def _failed(self, exc: Exception) -> None:
        self._failures_in_a_row += 1
        backoff = min(_MAX_BACKOFF, 2.0 ** (self._failures_in_a_row - 1))
        self._next_attempt = time.monotonic() + backoff
        if not isinstance(exc, psycopg.Error):
            log.error("connecting failed", exc_info=exc, extra={"target": self.target.name})
            return
        message = " ".join(str(exc).split()) or type(exc).__name__
        reason = classify(exc)
        self.last_failure = ConnectFailure(time.time(), reason, message)
        self.connect_failures[reason] += 1
        log.warning(
            "cannot connect to target",
            extra={
                "target": self.target.name,
                "server": describe_conninfo(self.target.conninfo),
                "reason": reason,
                "error": message,
            },
        )

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Set up a new session: its statement and lock timeouts where the kind has them."""
        self._session = conn
        self._session_timeout = None
        self._prepared_names = set()
        self._unprepared = False
        if self._sets_timeout:
            timeout = _ms(self.statement_timeout)
            await conn.execute(
                "SELECT set_config('statement_timeout', %s, false),"
                " set_config('lock_timeout', %s, false)",
                (timeout, _ms(self.lock_timeout)),
            )
            self._session_timeout = timeout
        log.info(
            "connected to target",
            extra={"target": self.target.name, "server": describe_conninfo(self.target.conninfo)},
        )

    @asynccontextmanager
    async def connection(
        self, timeout: float, demand: bool = True
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The held connection, waiting at most `timeout` seconds for it to be (re)opened (or
        for its user to be done); NotConnected if it is not there by then. A connection left
        broken, mid-statement or in a transaction goes back to the pool, which rolls it back
        or replaces it in the background (a lost one while someone with `demand` waits)."""
        self._users += 1
        if demand:
            self._demand += 1
            self._demanded.set()
        try:
            try:
                conn = await self._pool.getconn(max(timeout, 0.001))
            except PoolTimeout:
                raise NotConnected from None
            try:
                yield conn
            finally:
                await self._pool.putconn(conn)
        finally:
            self._users -= 1
            if demand:
                self._demand -= 1

    @asynccontextmanager
    async def idle_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The held connection at once, for a sampler's tick that must never delay a scrape:
        Busy if anyone holds or waits for it, NotConnected if there is none now (the pool's
        check finds a session the server ended). No attempt is started for it, nor for a
        session lost during it: the next scrape replaces a lost session (_wanted_again), so
        that between scrapes the exporter does not race the server's clients for the slot a
        lost session freed."""
        if self._users:
            raise Busy
        conn = self._session
        if conn is None or conn.closed or conn.broken:
            raise NotConnected
        async with self.connection(0.001, demand=False) as conn:
            yield conn

    async def _check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The liveness check before each use, as the kind says: raises psycopg.Error or
        OSError if the held connection cannot be used (the pool then replaces it).

        Liveness.SOCKET: no round trip while nothing has arrived: a server that ended the
        session (restart, pg_terminate_backend, idle_session_timeout) sends its goodbye and
        closes the socket, which makes it readable; an idle session's socket has nothing to
        read. Anything readable is read by an empty query, which reads it and fails on a closed
        session. Liveness.ROUND_TRIP: the kind's statement, bounded by the statement timeout."""
        if self.policy.liveness is Liveness.ROUND_TRIP:
            with self.watchdog(conn, self.statement_timeout):
                await conn.execute(self.policy.liveness_statement)
            return
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the connection is closed")
        if _readable(conn):
            await conn.execute("")

    async def set_statement_timeout(
        self, conn: psycopg.AsyncConnection[Any], seconds: float
    ) -> None:
        """Give the next statement `seconds` to run; a round trip only when the value changes."""
        timeout = self._timeout_to_set(seconds)
        if timeout is None:
            return
        # Our own "<digits>ms", written in: sent as the scrape's statements are (statements.py),
        # not through a cursor.
        assert timeout[:-2].isdigit(), timeout
        await self.control(conn, f"SET statement_timeout = '{timeout}'")
        self._session_timeout = timeout

    def _timeout_to_set(self, seconds: float) -> str | None:
        """The statement_timeout to SET for `seconds`, or None if the session has it already.
        Past a second it is rounded down to a tenth: never later than asked, and the same
        value for the queries of one scrape whose time left (not their own timeout) bounds
        them, instead of a round trip before each."""
        if not self._sets_timeout:
            return None
        timeout = _ms_at_most(seconds)
        return None if self._session_timeout == timeout else timeout

    def prepared(self, sql: str) -> bool:
        """Whether to run `sql` as a prepared statement, parsed and planned once per session
        instead of on every scrape (server CPU: docs/benchmarks.md, "Profile, and what changed").
        Only where the kind allows it (PostgreSQL), for a single statement (the extended
        protocol refuses several)."""
        return (
            self._prepares
            and not self._unprepared
            and sql not in self._several_statements
            and _single_statement(sql)
        )

    async def query(
        self,
        conn: psycopg.AsyncConnection[Any],
        sql: str,
        params: Mapping[str, Any],
        limit: float,
        before: Sequence[str] = (),
        after: Sequence[str] = (),
    ) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        """Rows and columns of `sql` with `params` on `conn`: prepared once per session where
        prepared() says so (exporter.db.statements; waited for until `limit` at most). `before`
        and `after` (BEGIN, COMMIT: see ScrapeTransaction) run around it, in its message when
        it is prepared; after an error in any of them none of the rest runs."""
        text = self._text(conn, sql, params)
        prepared = self.prepared(sql)
        name = _statement_name(text) if prepared else None
        names = self._prepared_names
        if before and not (prepared and name in names):
            # Ahead, in a message of their own: a statement not prepared yet is parsed first
            # (which may fail) inside the transaction they begin, like any statement of it.
            await self.control(conn, "; ".join(before))
            before = ()
        if not prepared:
            result = await execute(conn, text, limit)
            if after:
                await self.control(conn, "; ".join(after))
            return result
        assert name is not None
        result = await execute(
            conn,
            text,
            limit,
            name,
            prepare=name not in names,
            before=[s.encode() for s in before],
            after=[s.encode() for s in after],
        )
        names.add(name)
        return result

    def _text(
        self, conn: psycopg.AsyncConnection[Any], sql: str, params: Mapping[str, Any]
    ) -> bytes:
        """`sql` as sent: its parameters' values written in (client-side binding, as
        psycopg's ClientCursor does), so that it is prepared once with no parameters."""
        key = (sql, repr(sorted(params.items())))
        text = self._texts.get(key)
        if text is None:
            if len(self._texts) >= _MAX_TEXTS:  # queries of configs since reloaded
                self._texts.clear()
            cursor = psycopg.AsyncClientCursor(conn)
            written = cursor.mogrify(sql, params) if params else sql
            text = self._texts[key] = _shared(written.encode(conn.info.encoding))
        return text

    async def forget_prepared(
        self, conn: psycopg.AsyncConnection[Any], sql: str, params: Mapping[str, Any]
    ) -> None:
        """Deallocate `sql`'s statement on `conn` (its plan went stale), so that the next run
        prepares it anew."""
        name = _statement_name(self._text(conn, sql, params))
        if name in self._prepared_names and not (conn.closed or conn.broken):
            self._prepared_names.discard(name)
            with contextlib.suppress(psycopg.Error):
                await self.control(conn, "DEALLOCATE " + name.decode())

    async def control(self, conn: psycopg.AsyncConnection[Any], sql: str) -> None:
        """Run one of our own short statements (BEGIN, COMMIT, DEALLOCATE) on `conn`."""
        limit = time.monotonic() + self.statement_timeout + _CONTROL_GRACE
        await execute(conn, sql.encode(), limit)

    def stop_preparing(self, exc: psycopg.Error) -> bool:
        """A statement failed with `exc`. If the server lost or never had our prepared
        statements (a transaction-pooling PgBouncer before 1.21 in front of it), the session
        runs unprepared from now on: True when that starts now."""
        if not isinstance(exc, _PREPARED_STATEMENT_ERRORS) or self._unprepared:
            return False
        self._unprepared = True
        log.warning(
            "prepared statements fail on this target; running its queries unprepared",
            extra={"target": self.target.name, "error": " ".join(str(exc).split())},
        )
        return True

    def several_statements(self, sql: str, exc: psycopg.Error) -> bool:
        """Whether preparing `sql` failed with `exc` because it holds several statements (a
        semicolon our look at the text took for part of a comment or string): it runs
        unprepared from now on. True when that starts now."""
        if (
            isinstance(exc, psycopg.errors.SyntaxError)
            and "cannot insert multiple commands into a prepared statement" in str(exc)
            and sql not in self._several_statements
        ):
            if len(self._several_statements) >= _MAX_TEXTS:
                self._several_statements.clear()
            self._several_statements.add(sql)
            return True
        return False

    @staticmethod
    def stale_plan(exc: psycopg.Error) -> bool:
        """Whether `exc` says a prepared statement's result columns changed (a table it reads
        gained or lost columns): the statement is deallocated (forget_prepared) and runs again
        re-prepared."""
        return isinstance(exc, psycopg.errors.FeatureNotSupported) and (
            "cached plan must not change result type" in str(exc)
        )

    def transaction(self, conn: psycopg.AsyncConnection[Any]) -> ScrapeTransaction:
        """A read-only transaction for one scrape's queries, begun by the first of them."""
        return ScrapeTransaction(self, conn)

    def _reverted(self, timeout: str | None) -> None:
        """A rollback put the session's statement_timeout back to `timeout`."""
        self._session_timeout = timeout

    @contextmanager
    def watchdog(self, conn: psycopg.AsyncConnection[Any], seconds: float) -> Iterator[Watchdog]:
        """Bound what runs inside to `seconds` on the client side: on expiry the socket is shut
        down, the awaited read fails at once and the connection is closed (its protocol state
        is unknown); the pool opens a new one once it is given back."""
        dog = Watchdog(conn, seconds)
        try:
            yield dog
        finally:
            if dog.finish():
                # Closed now: the rest of the scrape finds it closed, not half-read.
                conn.pgconn.finish()
                log.warning(
                    "target did not answer in time: its connection is closed and opened anew",
                    extra={"target": self.target.name, "seconds": round(seconds, 3)},
                )


class Watchdog:
    """Shuts a connection's socket down unless finished first (a timer of the event loop, so
    no thread); says whether it fired. A shut-down socket wakes the statement waiting on it
    with an error, wherever it is in the scrape (BEGIN, a SET, a query, COMMIT)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], seconds: float) -> None:
        self._conn = conn
        self.fired = False
        self._timer = asyncio.get_running_loop().call_later(max(seconds, 0.0), self._expire)

    def _expire(self) -> None:
        self.fired = True
        try:
            # A duplicate of the descriptor: shutting it down ends the socket for libpq too.
            with socket.socket(fileno=os.dup(self._conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):
            pass  # already closed: the query ends anyway

    def finish(self) -> bool:
        """Stop the watchdog; True if it fired."""
        self._timer.cancel()
        return self.fired


class ScrapeTransaction:
    """The queries of one scrape in one read-only transaction, so that they share one snapshot.

    PostgreSQL keeps the backend status it read for the rest of the transaction: every
    pg_stat_activity read after the first is cheaper, and all of them see the same backends.
    A failed query aborts the transaction: it is rolled back and the next query begins a fresh
    one, so a query still fails alone. A rollback also undoes a statement_timeout SET inside it,
    which the connection's bookkeeping is told.
    """

    def __init__(self, owner: TargetConnection, conn: psycopg.AsyncConnection[Any]) -> None:
        self._owner = owner
        self._conn = conn
        self._open = False
        self._timeout_at_begin: str | None = None

    async def opening(self, statement_timeout: float | None = None) -> list[str]:
        """The statements that begin the transaction (none if it is open), for the next query
        to carry in its message (TargetConnection.query); taken as run from now on
        (after_query sees to it if they were not).
        Before PostgreSQL 13 a SET in a message did not bound the rest of that message's
        statements: there they run now, and none are returned."""
        if self._open:
            return []
        self._timeout_at_begin = self._owner._session_timeout
        timeout = (
            None if statement_timeout is None else self._owner._timeout_to_set(statement_timeout)
        )
        statements = ["BEGIN READ ONLY"]
        if timeout is not None:
            # Our own "<digits>ms", written in: the simple protocol takes no parameters.
            assert timeout[:-2].isdigit(), timeout
            statements.append(f"SET statement_timeout = '{timeout}'")
        if self._conn.info.server_version < 130000:
            # One simple-protocol message, two statements.
            await self._owner.control(self._conn, "; ".join(statements))
            statements = []
        if timeout is not None:
            self._owner._session_timeout = timeout
        self._open = True
        return statements

    def closing(self) -> list[str]:
        """COMMIT, for the scrape's last query to carry in its message (none if not open)."""
        if not self._open:
            return []
        self._open = False
        return ["COMMIT"]

    async def after_query(self) -> None:
        """Roll back if the last query aborted the transaction; if its message failed before
        BEGIN, or before its COMMIT, say what really happened."""
        status = self._conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            self._open = True
            await self._end("ROLLBACK")
        elif self._open and status == TransactionStatus.IDLE:
            self._open = False  # BEGIN never ran: neither did the SET it carried
            self._owner._reverted(self._timeout_at_begin)
        elif not self._open and status == TransactionStatus.INTRANS:
            self._open = True  # the COMMIT it carried never ran

    async def finish(self) -> None:
        """Commit (nothing was written: this only ends the transaction)."""
        if self._open:
            failed = self._conn.info.transaction_status == TransactionStatus.INERROR
            await self._end("ROLLBACK" if failed else "COMMIT")

    async def _end(self, command: str) -> None:
        self._open = False
        if command == "ROLLBACK":
            self._owner._reverted(self._timeout_at_begin)
        if self._conn.broken or self._conn.closed:
            return
        # On failure the connection is gone: its check before the next use replaces it.
        with contextlib.suppress(psycopg.Error):
            await self._owner.control(self._conn, command)


def _readable(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server has sent something on the idle `conn` (poll, not select: a
    descriptor may be above FD_SETSIZE)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


@functools.lru_cache(maxsize=1024)
def _single_statement(sql: str) -> bool:
    """Whether `sql` looks like one statement: no semicolon but in `--` comments and at the
    end. A guess (a semicolon in a string hides the rest of a line from it): where it is
    wrong, preparing fails and several_statements() runs the query unprepared."""
    return ";" not in _LINE_COMMENT.sub("", sql).strip().rstrip(";")


_LINE_COMMENT = re.compile(r"--[^\n]*")


def _connect_options(client_side_binding: bool) -> dict[str, Any]:
    """psycopg.AsyncConnection.connect keyword arguments for the kind's binding."""
    if client_side_binding:
        # The server speaks only the simple query protocol: nothing prepared, ever.
        return {"prepare_threshold": None, "cursor_factory": psycopg.AsyncClientCursor}
    # Never prepared by count: only the statements run with prepare=True (prepared()).
    return {"prepare_threshold": NEVER_BY_COUNT}


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


# Query texts as sent, one object for every target sending the same (not a copy per target:
# docs/benchmarks.md, "Later: statements over libpq"); emptied when reloads pile up more.
_SHARED_TEXTS: dict[bytes, bytes] = {}


def _shared(text: bytes) -> bytes:
    if len(_SHARED_TEXTS) >= _MAX_TEXTS and text not in _SHARED_TEXTS:
        _SHARED_TEXTS.clear()
    return _SHARED_TEXTS.setdefault(text, text)


@functools.lru_cache(maxsize=_MAX_TEXTS)
def _statement_name(text: bytes) -> bytes:
    """A prepared statement's name, after its text: a reloaded config's changed query never
    meets the old one's plan on the connection it inherited. Remembered: the text is hashed
    once, not on every scrape of every target."""
    return b"pgce_" + hashlib.blake2b(text, digest_size=10).hexdigest().encode()


def _ms_at_most(seconds: float) -> str:
    """`seconds` as a statement_timeout, rounded down to 100 ms past a second."""
    ms = max(1, int(seconds * 1000))
    return f"{ms - ms % 100 if ms >= 1000 else ms}ms"
