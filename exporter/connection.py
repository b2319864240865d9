"""The one connection the exporter holds per target.

A psycopg-pool of exactly one connection: opened once, kept between scrapes (no recycling, so a
slot once held is never given up while the server is full), checked before each use and
re-opened in the background when lost, with at most one connect attempt in flight.

A PgBouncer admin console speaks only the simple query protocol and has no statement_timeout:
there the connection uses client-side parameter binding, and a query is bounded by a watchdog
that shuts the socket down when time is up (a cancel request would not help: a stalled
PgBouncer handles it on the same stalled event loop). On PostgreSQL, statement_timeout bounds
each query on the server; a watchdog over the whole scrape catches a server that does not
answer at all (a stopped backend, or a proxy in front whose server is gone: the kernel, or the
proxy, still acknowledges, so neither TCP keepalives nor tcp_user_timeout ever fire).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from exporter.config import Target
from exporter.failures import classify
from exporter.redact import describe_conninfo

APPLICATION_NAME = "pg-connections-exporter"
# A held connection is never recycled on a timer: giving up the slot on a full server could
# mean never getting it back.
_NEVER = 10 * 365 * 24 * 3600.0

# psycopg prepares a statement after this many runs: never, unless asked for.
_NEVER_BY_COUNT = 1 << 62
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


class _RecordingPool(ConnectionPool):
    """A pool that remembers why its last connection attempt failed."""

    def __init__(self, *args: Any, on_connect_error: Any, **kwargs: Any) -> None:
        self._on_connect_error = on_connect_error
        super().__init__(*args, **kwargs)

    def _connect(self, timeout: float | None = None) -> Any:
        try:
            return super()._connect(timeout)
        except psycopg.Error as exc:
            self._on_connect_error(exc)
            raise


class TargetConnection:
    """Hands out the target's single connection to one user at a time."""

    def __init__(self, target: Target, statement_timeout: float, lock_timeout: float) -> None:
        self.target = target
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        # The statement_timeout each live session has, so that it is only SET when it changes.
        self._session_timeout: weakref.WeakKeyDictionary[psycopg.Connection[Any], str] = (
            weakref.WeakKeyDictionary()
        )
        # Sessions where prepared statements failed: they run every statement unprepared.
        self._unprepared: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.last_failure: ConnectFailure | None = None
        self.connect_failures: Counter[str] = Counter()
        kwargs: dict[str, Any] = {
            "autocommit": True,
            # Never prepared by count: only the statements run with prepare=True (prepared()).
            "prepare_threshold": None if target.kind == "pgbouncer" else _NEVER_BY_COUNT,
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
        }
        if target.kind == "pgbouncer":
            kwargs["cursor_factory"] = psycopg.ClientCursor
        self.pool = _RecordingPool(
            target.conninfo,
            kwargs=kwargs,
            min_size=1,
            max_size=1,
            open=False,
            configure=self._configure,
            check=self._check_pgbouncer if target.kind == "pgbouncer" else _check_postgres,
            name=f"target-{target.name}",
            max_lifetime=_NEVER,
            max_idle=_NEVER,
            reconnect_timeout=max(5.0, 2 * target.connect_timeout),
            num_workers=1,
            on_connect_error=self._record_failure,
        )

    def open(self) -> None:
        """Start connecting in the background; a down server does not block start-up."""
        self.pool.open(wait=False)

    def close(self, timeout: float = 5.0) -> None:
        self.pool.close(timeout=timeout)

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
        if self.target.kind == "postgres":
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
        """The held connection, waiting at most `timeout` seconds for it to be (re)opened."""
        with self.pool.connection(timeout=max(timeout, 0.001)) as conn:
            yield conn

    def set_statement_timeout(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        """Give the next statement `seconds` to run; a round trip only when the value changes."""
        timeout = _ms(seconds)
        if self.target.kind != "postgres" or self._session_timeout.get(conn) == timeout:
            return
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout,))
        self._session_timeout[conn] = timeout

    def prepared(self, conn: psycopg.Connection[Any], sql: str) -> bool:
        """Whether to run `sql` as a prepared statement, parsed and planned once per session
        instead of on every scrape (at 100 backends: 2.4 -> 0.9 ms for the built-in queries).
        Only on PostgreSQL, for a single statement (the extended protocol refuses several)."""
        return (
            self.target.kind == "postgres"
            and self.target.prepared_statements
            and conn not in self._unprepared
            and _single_statement(sql)
        )

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

    @staticmethod
    def stale_plan(exc: psycopg.Error) -> bool:
        """Whether `exc` says a prepared statement's result columns changed (a table it reads
        gained or lost columns). Rolling back makes psycopg drop its prepared statements, so
        the statement runs again re-prepared."""
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

    def _check_pgbouncer(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's liveness check, bounded: the admin console refuses the empty query of
        psycopg-pool's own check."""
        with self.watchdog(conn, self.statement_timeout):
            conn.execute("SHOW VERSION")

    @contextmanager
    def watchdog(self, conn: psycopg.Connection[Any], seconds: float) -> Iterator[Watchdog]:
        """Bound what runs inside to `seconds` on the client side: on expiry the socket is shut
        down, the blocked read fails at once and the connection is closed (its protocol state
        is unknown); the pool opens a new one in the background."""
        dog = Watchdog(conn)
        _EXPIRIES.add(time.monotonic() + seconds, dog)
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

    def begin(self) -> None:
        """Begin, unless already in one (the connection is autocommit between scrapes)."""
        if self._open:
            return
        self._timeout_at_begin = self._owner._session_timeout.get(self._conn)
        self._conn.execute("BEGIN READ ONLY")
        self._open = True

    def after_query(self) -> None:
        """Roll back if the last query aborted the transaction."""
        if self._open and self._conn.info.transaction_status == TransactionStatus.INERROR:
            self._end("ROLLBACK")

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
        # On failure the connection is gone: the pool checks it before its next use.
        with contextlib.suppress(psycopg.Error):
            self._conn.execute(command)


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


class _Expiries:
    """Expires every watchdog of the process on time from one thread: a threading.Timer per
    guarded scrape or query would start a thread each time. Finished watchdogs are dropped when
    their time comes (or when they reach the front), not searched for."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._order = itertools.count()  # ties never compare watchdogs
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, at: float, dog: Watchdog) -> None:
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


_EXPIRIES = _Expiries()


def _check_postgres(conn: psycopg.Connection[Any]) -> None:
    """The pool's liveness check, without a round trip while nothing has arrived: a server
    that ended the session (restart, pg_terminate_backend, idle_session_timeout) sends its
    goodbye and closes the socket, which makes it readable; an idle session's socket has
    nothing to read. Anything readable goes to psycopg-pool's own check, whose empty query
    reads it and fails on a closed session (the pool then opens a new one)."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()  # not select(): a descriptor may be above FD_SETSIZE
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


@functools.lru_cache(maxsize=1024)
def _single_statement(sql: str) -> bool:
    return ";" not in sql.strip().rstrip(";")


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"
