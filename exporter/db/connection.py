"""The one connection the exporter holds per target.

Opened once, kept between scrapes (no recycling, so a slot once held is never given up while the
server is full), checked before each use and re-opened in the background when lost, with at
most one connect attempt in flight. Connect attempts of every target run on one small shared
pool of threads (`_Connector`), not a thread or two per target as a connection pool each would
take: the exporter's threads do not grow with its targets.

What differs by target kind (connect options, session set-up, the liveness check, what bounds
a query) is read from the target's kind's policy (exporter.kinds) and done here. On
PostgreSQL, statement_timeout bounds each query on the server; a watchdog over the whole
scrape catches a server that does not answer at all (a stopped backend, or a proxy in front
whose server is gone: the kernel, or the proxy, still acknowledges, so neither TCP keepalives
nor tcp_user_timeout ever fire). A PgBouncer admin console has no statement_timeout: a
watchdog bounds each query, shutting the socket down when time is up.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import itertools
import logging
import os
import re
import select
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import psycopg.conninfo
from psycopg.pq import TransactionStatus

from exporter.config.model import Target
from exporter.db import lenienttext
from exporter.db.failures import classify
from exporter.db.redact import describe_conninfo
from exporter.db.statements import execute
from exporter.db.turns import SCRAPES
from exporter.kinds import Liveness, kind_of

APPLICATION_NAME = "pg-connections-exporter"
# psycopg prepares a statement after this many runs: never, unless asked for (prepared()).
NEVER_BY_COUNT = 1 << 62
# How long past its statement_timeout one of our own statements (BEGIN, COMMIT, a SET) is
# waited for at most; a watchdog normally cuts a silent server sooner.
_CONTROL_GRACE = 5.0
# Query texts kept per target (a config's queries; cleared when reloads pile up more).
_MAX_TEXTS = 256
# What a server without our prepared statements answers (a transaction-pooling PgBouncer in
# front of it hands each transaction another server connection).
_PREPARED_STATEMENT_ERRORS = (
    psycopg.errors.InvalidSqlStatementName,
    psycopg.errors.DuplicatePreparedStatement,
)

_TCP_LIVENESS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,  # ms: unacknowledged data for this long ends the connection
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectFailure:
    """The last failed connection attempt, as psycopg reported it."""

    at: float
    reason: str
    message: str


class NotConnected(Exception):
    """No connection to the target within the time given (the reason is in last_failure)."""


class TargetConnection:
    """Hands out the target's single connection to one user at a time."""

    def __init__(self, target: Target, statement_timeout: float, lock_timeout: float) -> None:
        self.target = target
        self.kind = kind_of(target.kind)
        self.policy = policy = self.kind.policy
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        # The statement_timeout each live session has, so that it is only SET when it changes.
        self._session_timeout: weakref.WeakKeyDictionary[psycopg.Connection[Any], str] = (
            weakref.WeakKeyDictionary()
        )
        # Sessions where prepared statements failed: they run every statement unprepared.
        self._unprepared: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        # The statements each live session has prepared (statements.execute's names).
        self._prepared_names: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[bytes]] = (
            weakref.WeakKeyDictionary()
        )
        # (sql, params) -> the text sent
        self._texts: dict[tuple[str, str], bytes] = {}
        # Queries the server found to hold several statements: never prepared.
        self._several_statements: set[str] = set()
        self._lock = threading.Lock()
        self.last_failure: ConnectFailure | None = None
        self.connect_failures: Counter[str] = Counter()
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
        self._connect_kwargs = kwargs
        # Resolved once: the hot path reads these, not the policy.
        self._sets_timeout = policy.session_timeouts
        self._prepares = policy.prepares_statements and target.prepared_statements
        # The held connection, and the state of connecting it (guarded by _state).
        self._conn: psycopg.Connection[Any] | None = None
        self._state = threading.Condition()
        self._connecting = False
        self._closed = True
        self._failures_in_a_row = 0
        self._next_attempt = 0.0
        self._waiters: list[Callable[[], None]] = []
        # One user at a time (concurrent scrapes share one run, so this is rarely contended).
        self._in_use = threading.Lock()

    def open(self) -> None:
        """Start connecting in the background; a down server does not block start-up."""
        with self._state:
            self._closed = False
            self._start_attempt()

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection, once its user (if any) is done with it or `timeout` passed."""
        with self._state:
            self._closed = True
            waiters, self._waiters = self._waiters, []
            self._state.notify_all()
        for waiter in waiters:
            waiter()
        acquired = self._in_use.acquire(timeout=timeout)
        try:
            with self._state:
                conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
        finally:
            if acquired:
                self._in_use.release()

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and not conn.broken

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call `callback` once there is a connection to use, or once connecting has failed
        for now: at once if either is already so, else from the attempt's thread. So that a
        scrape of a target still connecting does not hold a thread while it waits."""
        with self._state:
            if not (self.connected or self._closed) and self._start_attempt():
                self._waiters.append(callback)
                return
        callback()

    def _start_attempt(self) -> bool:
        """With _state held: an attempt in flight, or queued now; False if none will be made
        yet (the last failed less than its backoff ago)."""
        if self._connecting:
            return True
        if self._closed or time.monotonic() < self._next_attempt:
            return False
        self._connecting = True
        _CONNECTOR.submit(self._failures_in_a_row, self._attempt)
        return True

    def _attempt(self) -> None:
        with self._state:
            closed = self._closed
        conn = None
        if not closed:
            try:
                conn = psycopg.Connection.connect(self.target.conninfo, **self._connect_kwargs)
                self._configure(conn)
            except psycopg.Error as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                self._record_failure(exc)
            except Exception:  # a bug must not leave the target connecting forever
                log.exception("connecting failed", extra={"target": self.target.name})
        with self._state:
            self._connecting = False
            if conn is not None and self._closed:
                conn.close()
            elif conn is not None:
                self._conn = conn
                self._failures_in_a_row = 0
                self._next_attempt = 0.0
            else:
                # At most one attempt a second, backing off to one every 10 s while it fails.
                self._failures_in_a_row += 1
                backoff = min(10.0, 2.0 ** (self._failures_in_a_row - 1))
                self._next_attempt = time.monotonic() + backoff
            waiters, self._waiters = self._waiters, []
            self._state.notify_all()
        for waiter in waiters:
            waiter()

    def _record_failure(self, exc: psycopg.Error) -> None:
        message = " ".join(str(exc).split()) or type(exc).__name__
        reason = classify(exc)
        with self._lock:
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

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Set up a new session: its statement and lock timeouts where the kind has them."""
        if self._sets_timeout:
            timeout = _ms(self.statement_timeout)
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false),"
                " set_config('lock_timeout', %s, false)",
                (timeout, _ms(self.lock_timeout)),
            )
            self._session_timeout[conn] = timeout
        log.info(
            "connected to target",
            extra={"target": self.target.name, "server": describe_conninfo(self.target.conninfo)},
        )

    @contextmanager
    def connection(self, timeout: float) -> Iterator[psycopg.Connection[Any]]:
        """The held connection, waiting at most `timeout` seconds for it to be (re)opened;
        NotConnected if it is not there by then."""
        deadline = time.monotonic() + max(timeout, 0.001)
        if not self._in_use.acquire(timeout=max(timeout, 0.001)):
            raise NotConnected
        try:
            conn = self._usable(deadline)
            try:
                yield conn
            finally:
                self._after_use(conn)
        finally:
            self._in_use.release()

    def _usable(self, deadline: float) -> psycopg.Connection[Any]:
        """With _in_use held: the held connection if it passes its check, else a new one."""
        conn = self._conn
        if conn is not None:
            try:
                self._check(conn)
                return conn
            except (psycopg.Error, OSError):
                self._discard(conn)
        with self._state:
            self._start_attempt()
            while self._conn is None and self._connecting and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.wait(remaining)
            if self._conn is None:
                raise NotConnected
            return self._conn

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The liveness check before each use, as the kind says: raises psycopg.Error or
        OSError if the held connection cannot be used.

        Liveness.SOCKET: no round trip while nothing has arrived: a server that ended the
        session (restart, pg_terminate_backend, idle_session_timeout) sends its goodbye and
        closes the socket, which makes it readable; an idle session's socket has nothing to
        read. Anything readable is read by an empty query, which reads it and fails on a closed
        session (a new one is opened then). Liveness.ROUND_TRIP: the kind's statement, bounded
        by a watchdog."""
        if self.policy.liveness is Liveness.ROUND_TRIP:
            with self.watchdog(conn, self.statement_timeout):
                conn.execute(self.policy.liveness_statement)
            return
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the connection is closed")
        poller = select.poll()  # not select(): a descriptor may be above FD_SETSIZE
        poller.register(conn.fileno(), select.POLLIN)
        if poller.poll(0):
            conn.execute("")

    def _after_use(self, conn: psycopg.Connection[Any]) -> None:
        """A connection left broken, or inside a transaction it cannot end, is replaced in
        the background now, so that the next scrape finds a new one ready."""
        if not (conn.closed or conn.broken):
            status = conn.info.transaction_status
            if status == TransactionStatus.IDLE:
                return
            if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                    return
        self._discard(conn)
        with self._state:
            self._start_attempt()

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with self._state:
            if self._conn is conn:
                self._conn = None
        with contextlib.suppress(psycopg.Error, OSError):
            conn.close()

    def set_statement_timeout(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        """Give the next statement `seconds` to run; a round trip only when the value changes."""
        timeout = self._timeout_to_set(conn, seconds)
        if timeout is None:
            return
        with SCRAPES.given_up():  # psycopg waits for the server (turns.py)
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout,))
        self._session_timeout[conn] = timeout

    def _timeout_to_set(self, conn: psycopg.Connection[Any], seconds: float) -> str | None:
        """The statement_timeout to SET for `seconds`, or None if the session has it already.
        Past a second it is rounded down to a tenth: never later than asked, and the same
        value for the queries of one scrape whose time left (not their own timeout) bounds
        them, instead of a round trip before each."""
        if not self._sets_timeout:
            return None
        timeout = _ms_at_most(seconds)
        return None if self._session_timeout.get(conn) == timeout else timeout

    def prepared(self, conn: psycopg.Connection[Any], sql: str) -> bool:
        """Whether to run `sql` as a prepared statement, parsed and planned once per session
        instead of on every scrape (at 100 backends: 2.4 -> 0.9 ms for the built-in queries).
        Only where the kind allows it (PostgreSQL), for a single statement (the extended
        protocol refuses several)."""
        return (
            self._prepares
            and conn not in self._unprepared
            and sql not in self._several_statements
            and _single_statement(sql)
        )

    def query(
        self,
        conn: psycopg.Connection[Any],
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
        prepared = self.prepared(conn, sql)
        name = _statement_name(text) if prepared else None
        names = self._prepared_names.setdefault(conn, set())
        if before and not (prepared and name in names):
            # Ahead, in a message of their own: a statement not prepared yet is parsed first
            # (which may fail) inside the transaction they begin, like any statement of it.
            self.control(conn, "; ".join(before))
            before = ()
        if not prepared:
            result = execute(conn, text, limit)
            if after:
                self.control(conn, "; ".join(after))
            return result
        assert name is not None
        result = execute(
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

    def _text(self, conn: psycopg.Connection[Any], sql: str, params: Mapping[str, Any]) -> bytes:
        """`sql` as sent: its parameters' values written in (client-side binding, as
        psycopg's ClientCursor does), so that it is prepared once with no parameters."""
        key = (sql, repr(sorted(params.items())))
        text = self._texts.get(key)
        if text is None:
            if len(self._texts) >= _MAX_TEXTS:  # queries of configs since reloaded
                self._texts.clear()
            cursor = psycopg.ClientCursor(conn)
            written = cursor.mogrify(sql, params) if params else sql
            text = self._texts[key] = _shared(written.encode(conn.info.encoding))
        return text

    def forget_prepared(
        self, conn: psycopg.Connection[Any], sql: str, params: Mapping[str, Any]
    ) -> None:
        """Deallocate `sql`'s statement on `conn` (its plan went stale), so that the next run
        prepares it anew."""
        name = _statement_name(self._text(conn, sql, params))
        names = self._prepared_names.get(conn, set())
        if name in names and not (conn.closed or conn.broken):
            names.discard(name)
            with contextlib.suppress(psycopg.Error):
                self.control(conn, "DEALLOCATE " + name.decode())

    def control(self, conn: psycopg.Connection[Any], sql: str) -> None:
        """Run one of our own short statements (BEGIN, COMMIT, DEALLOCATE) on `conn`."""
        execute(conn, sql.encode(), time.monotonic() + self.statement_timeout + _CONTROL_GRACE)

    def stop_preparing(self, conn: psycopg.Connection[Any], exc: psycopg.Error) -> bool:
        """A statement on `conn` failed with `exc`. If the server lost or never had our
        prepared statements (a transaction-pooling PgBouncer before 1.21 in front of it), the
        session runs unprepared from now on: True when that starts now."""
        if not isinstance(exc, _PREPARED_STATEMENT_ERRORS) or conn in self._unprepared:
            return False
        self._unprepared.add(conn)
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

    def transaction(self, conn: psycopg.Connection[Any]) -> ScrapeTransaction:
        """A read-only transaction for one scrape's queries, begun by the first of them."""
        return ScrapeTransaction(self, conn)

    def _reverted(self, conn: psycopg.Connection[Any], timeout: str | None) -> None:
        """A rollback put the session's statement_timeout back to `timeout`."""
        if timeout is None:
            self._session_timeout.pop(conn, None)
        else:
            self._session_timeout[conn] = timeout

    @contextmanager
    def watchdog(self, conn: psycopg.Connection[Any], seconds: float) -> Iterator[Watchdog]:
        """Bound what runs inside to `seconds` on the client side: on expiry the socket is shut
        down, the blocked read fails at once and the connection is closed (its protocol state
        is unknown); a new one is opened in the background."""
        dog = Watchdog(conn)
        EXPIRIES.add(time.monotonic() + seconds, dog)
        try:
            yield dog
        finally:
            if dog.finish():
                conn.close()
                log.warning(
                    "target did not answer in time: its connection is closed and opened anew",
                    extra={"target": self.target.name, "seconds": round(seconds, 3)},
                )


class ScrapeTransaction:
    """The queries of one scrape in one read-only transaction, so that they share one snapshot.

    PostgreSQL keeps the backend status it read for the rest of the transaction: every
    pg_stat_activity read after the first is cheaper, and all of them see the same backends.
    A failed query aborts the transaction: it is rolled back and the next query begins a fresh
    one, so a query still fails alone. A rollback also undoes a statement_timeout SET inside it,
    which the connection's bookkeeping is told.
    """

    def __init__(self, owner: TargetConnection, conn: psycopg.Connection[Any]) -> None:
        self._owner = owner
        self._conn = conn
        self._open = False
        self._timeout_at_begin: str | None = None

    def opening(self, statement_timeout: float | None = None) -> list[str]:
        """The statements that begin the transaction (none if it is open), for the next query
        to carry in its message (TargetConnection.query); taken as run from now on
        (after_query sees to it if they were not).
        Before PostgreSQL 13 a SET in a message did not bound the rest of that message's
        statements: there they run now, and none are returned."""
        if self._open:
            return []
        self._timeout_at_begin = self._owner._session_timeout.get(self._conn)
        timeout = (
            None
            if statement_timeout is None
            else self._owner._timeout_to_set(self._conn, statement_timeout)
        )
        statements = ["BEGIN READ ONLY"]
        if timeout is not None:
            # Our own "<digits>ms", written in: the simple protocol takes no parameters.
            assert timeout[:-2].isdigit(), timeout
            statements.append(f"SET statement_timeout = '{timeout}'")
        if self._conn.info.server_version < 130000:
            # One simple-protocol message, two statements.
            self._owner.control(self._conn, "; ".join(statements))
            statements = []
        if timeout is not None:
            self._owner._session_timeout[self._conn] = timeout
        self._open = True
        return statements

    def closing(self) -> list[str]:
        """COMMIT, for the scrape's last query to carry in its message (none if not open)."""
        if not self._open:
            return []
        self._open = False
        return ["COMMIT"]

    def after_query(self) -> None:
        """Roll back if the last query aborted the transaction; if its message failed before
        BEGIN, or before its COMMIT, say what really happened."""
        status = self._conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            self._open = True
            self._end("ROLLBACK")
        elif self._open and status == TransactionStatus.IDLE:
            self._open = False  # BEGIN never ran: neither did the SET it carried
            self._owner._reverted(self._conn, self._timeout_at_begin)
        elif not self._open and status == TransactionStatus.INTRANS:
            self._open = True  # the COMMIT it carried never ran

    def finish(self) -> None:
        """Commit (nothing was written: this only ends the transaction)."""
        if self._open:
            failed = self._conn.info.transaction_status == TransactionStatus.INERROR
            self._end("ROLLBACK" if failed else "COMMIT")

    def _end(self, command: str) -> None:
        self._open = False
        if command == "ROLLBACK":
            self._owner._reverted(self._conn, self._timeout_at_begin)
        if self._conn.broken or self._conn.closed:
            return
        # On failure the connection is gone: its check before the next use replaces it.
        with contextlib.suppress(psycopg.Error):
            self._owner.control(self._conn, command)


class Watchdog:
    """Shuts a connection's socket down unless finished first; says whether it fired."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._finished = False
        self.fired = False

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.fired = True
            try:
                # A duplicate of the descriptor: shutting it down ends the socket for libpq too.
                with socket.socket(fileno=os.dup(self._conn.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, psycopg.Error):
                pass  # already closed: the query ends anyway

    def finish(self) -> bool:
        """Stop the watchdog; True if it fired."""
        with self._lock:
            self._finished = True
            return self.fired

    @property
    def finished(self) -> bool:
        return self._finished


class Expiring(Protocol):
    """What the expiry thread expires: a Watchdog, or /probe's answer due by its deadline."""

    @property
    def finished(self) -> bool: ...

    def expire(self) -> None: ...


class Expiries:
    """Expires every watchdog of the process (and whatever else is due by a time, see
    Expiring) on time from one thread: a threading.Timer per guarded scrape or query would
    start a thread each time. Finished ones are dropped when their time comes (or when they
    reach the front), not searched for."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Expiring]] = []
        self._order = itertools.count()  # ties never compare watchdogs
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, at: float, dog: Expiring) -> None:
        """Expire `dog` at `at` (a time.monotonic() value) unless it is finished by then."""
        with self._wake:
            heapq.heappush(self._heap, (at, next(self._order), dog))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is dog:  # sooner than what the thread waits for
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    while self._heap and self._heap[0][2].finished:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._wake.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._wake.wait(wait)
                dog = heapq.heappop(self._heap)[2]
            dog.expire()


EXPIRIES = Expiries()


class _Connector:
    """Runs every target's connect attempts on at most `size` threads, started as needed and
    ended when idle. Attempts are served by how many times their target has failed in a row,
    fewest first: a target that just lost its connection is not kept waiting behind the
    attempts of targets that have been down for a while."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._threads = 0
        self._idle = 0

    def submit(self, priority: int, job: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._queue, (priority, next(self._order), job))
            if self._idle:
                self._wake.notify()
            elif self._threads < self.size:
                self._threads += 1
                threading.Thread(target=self._run, name="connect", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._idle += 1
                    woken = self._wake.wait(60.0)
                    self._idle -= 1
                    if not woken and not self._queue:
                        self._threads -= 1
                        return
                job = heapq.heappop(self._queue)[2]
            try:
                job()
            except Exception:
                log.exception("connect attempt failed")


# Connect attempts in flight at once, for all targets together.
CONNECT_THREADS = 8
_CONNECTOR = _Connector(CONNECT_THREADS)


@functools.lru_cache(maxsize=1024)
def _single_statement(sql: str) -> bool:
    """Whether `sql` looks like one statement: no semicolon but in `--` comments and at the
    end. A guess (a semicolon in a string hides the rest of a line from it): where it is
    wrong, preparing fails and several_statements() runs the query unprepared."""
    return ";" not in _LINE_COMMENT.sub("", sql).strip().rstrip(";")


_LINE_COMMENT = re.compile(r"--[^\n]*")


def _connect_options(client_side_binding: bool) -> dict[str, Any]:
    """psycopg.Connection.connect keyword arguments for the kind's binding."""
    if client_side_binding:
        # The server speaks only the simple query protocol: nothing prepared, ever.
        return {"prepare_threshold": None, "cursor_factory": psycopg.ClientCursor}
    # Never prepared by count: only the statements run with prepare=True (prepared()).
    return {"prepare_threshold": NEVER_BY_COUNT}


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


# Query texts as sent, one object for every target sending the same (the built-in queries
# are ~14 KB: 14 MB at 1,000 targets otherwise); emptied when reloads pile up more.
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
