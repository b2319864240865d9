"""The one connection the exporter holds per target.

A psycopg-pool of exactly one connection: opened once, kept between scrapes (no recycling, so a
slot once held is never given up while the server is full), checked before each use and
re-opened in the background when lost, with at most one connect attempt in flight.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from exporter.config import Target
from exporter.failures import classify
from exporter.redact import describe_conninfo

APPLICATION_NAME = "pg-connections-exporter"
# A held connection is never recycled on a timer: giving up the slot on a full server could
# mean never getting it back.
_NEVER = 10 * 365 * 24 * 3600.0

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
        self._lock = threading.Lock()
        self.last_failure: ConnectFailure | None = None
        self.connect_failures: Counter[str] = Counter()
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": None,
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(1, round(target.connect_timeout)),
        }
        self.pool = _RecordingPool(
            target.conninfo,
            kwargs=kwargs,
            min_size=1,
            max_size=1,
            open=False,
            configure=self._configure,
            check=ConnectionPool.check_connection,
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
        if self._session_timeout.get(conn) == timeout:
            return
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout,))
        self._session_timeout[conn] = timeout


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"
