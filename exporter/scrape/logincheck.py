"""The login check: a fresh connection, opened and closed, to see what a new client sees.

The held connection cannot tell that the server refuses new clients: it is already in. So, at
most once per interval, a scrape also logs in afresh (as the configured role), and reports
whether it was let in and how long that took. The check runs on a shared thread: a scrape waits
for it only as long as its deadline allows, and otherwise reports the previous result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import psycopg

from exporter.config.model import LoginCheck
from exporter.db.failures import REASONS, classify
from exporter.db.redact import describe_conninfo

APPLICATION_NAME = "pg-connections-exporter-login-check"

log = logging.getLogger(__name__)

# Login checks of every target share these threads (a check is one login, bounded by its
# timeout), so that threads do not grow with targets.
LOGIN_CHECK_THREADS = 4
_LOGIN_CHECKS = ThreadPoolExecutor(LOGIN_CHECK_THREADS, thread_name_prefix="login-check")


@dataclass(frozen=True)
class LoginResult:
    """One login attempt."""

    success: bool
    duration: float
    reason: str | None = None


class LoginChecker:
    """Runs a target's login check when it is due, one attempt at a time."""

    def __init__(self, target_name: str, check: LoginCheck) -> None:
        self.target_name = target_name
        self.check = check
        self.last: LoginResult | None = None
        # Every reason from 0, so that increase() sees the first failure.
        self.failures: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        self._next_due = 0.0
        self._running: Future[LoginResult] | None = None
        # Re-entrant: a done callback may run inside start_if_due().
        self._lock = threading.RLock()

    def start_if_due(self) -> Future[LoginResult] | None:
        """Start an attempt if the interval has passed and none is running; return the one
        running, if any."""
        with self._lock:
            now = time.monotonic()
            if self._running is None and now >= self._next_due:
                self._next_due = now + self.check.interval
                self._running = _LOGIN_CHECKS.submit(self._attempt)
                self._running.add_done_callback(self._finished)
            return self._running

    def result(self, attempt: Future[LoginResult] | None, deadline: float) -> LoginResult | None:
        """The running attempt's result if it ends by `deadline` (time.monotonic()), else the
        last one that ended."""
        if attempt is not None:
            try:
                return attempt.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                pass
        return self.last

    def close(self) -> None:
        with self._lock:
            if self._running is not None:
                self._running.cancel()  # if it has not started yet

    def _finished(self, attempt: Future[LoginResult]) -> None:
        with self._lock:
            if not attempt.cancelled() and attempt.exception() is None:
                self.last = attempt.result()
            self._running = None

    def _attempt(self) -> LoginResult:
        start = time.monotonic()
        try:
            conn = psycopg.connect(
                self.check.conninfo,
                connect_timeout=max(2, round(self.check.timeout)),
                application_name=APPLICATION_NAME,
                autocommit=True,
            )
        except psycopg.Error as exc:
            duration = time.monotonic() - start
            reason = classify(exc)
            with self._lock:
                self.failures[reason] += 1
            log.warning(
                "login check failed",
                extra={
                    "target": self.target_name,
                    "server": describe_conninfo(self.check.conninfo),
                    "reason": reason,
                    "error": " ".join(str(exc).split()),
                },
            )
            return LoginResult(False, duration, reason)
        duration = time.monotonic() - start
        conn.close()
        return LoginResult(True, duration)
