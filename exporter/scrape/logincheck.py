"""The login check: a fresh connection, opened and closed, to see what a new client sees.

The held connection cannot tell that the server refuses new clients: it is already in. So, at
most once per interval, a scrape also logs in afresh (as the configured role), and reports
whether it was let in and how long that took. The check runs as a task of the event loop: a
scrape waits for it only as long as its deadline allows, and otherwise reports the previous
result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

import psycopg

from exporter.config.model import LoginCheck
from exporter.db.failures import REASONS, classify
from exporter.db.redact import describe_conninfo

APPLICATION_NAME = "pg-connections-exporter-login-check"

log = logging.getLogger(__name__)


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
        self._running: asyncio.Task[LoginResult] | None = None

    def start_if_due(self) -> asyncio.Task[LoginResult] | None:
        """Start an attempt if the interval has passed and none is running; return the one
        running, if any."""
        now = time.monotonic()
        if self._running is None and now >= self._next_due:
            self._next_due = now + self.check.interval
            self._running = asyncio.get_running_loop().create_task(self._attempt())
            self._running.add_done_callback(self._finished)
        return self._running

    async def result(
        self, attempt: asyncio.Task[LoginResult] | None, deadline: float
    ) -> LoginResult | None:
        """The running attempt's result if it ends by `deadline` (time.monotonic()), else the
        last one that ended."""
        if attempt is not None:
            await asyncio.wait([attempt], timeout=max(0.0, deadline - time.monotonic()))
            if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
                return attempt.result()
        return self.last

    def close(self) -> None:
        if self._running is not None:
            self._running.cancel()

    def _finished(self, attempt: asyncio.Task[LoginResult]) -> None:
        if not attempt.cancelled() and attempt.exception() is None:
            self.last = attempt.result()
        self._running = None

    async def _attempt(self) -> LoginResult:
        start = time.monotonic()
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.check.conninfo,
                connect_timeout=max(2, round(self.check.timeout)),
                application_name=APPLICATION_NAME,
                autocommit=True,
            )
        except psycopg.Error as exc:
            duration = time.monotonic() - start
            reason = classify(exc)
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
        await conn.close()
        return LoginResult(True, duration)
