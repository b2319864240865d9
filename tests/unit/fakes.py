"""Stand-ins for a target's scraper, with the surface `Scraper` and the collector use."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from exporter.config.model import Config, parse_config
from exporter.scrape.target import QueryOutcome, TargetResult


def config(*names: str, **settings: Any) -> Config:
    """A config of targets that nothing will connect to (their scrapers are replaced)."""
    targets = [{"name": name, "dsn": "host=127.0.0.1 port=1 user=nobody"} for name in names]
    return parse_config({"targets": targets, "settings": settings}, "unit-test")


class FakeConnection:
    """`when_ready` at once, or (ready=False) only when `become_ready()` is called."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready
        self.waiters: list[Callable[[], None]] = []
        self.connect_failures: dict[str, int] = {}

    def when_ready(self, callback: Callable[[], None]) -> None:
        if self.ready:
            callback()
        else:
            self.waiters.append(callback)

    def become_ready(self) -> None:
        self.ready = True
        waiters, self.waiters = self.waiters, []
        for callback in waiters:
            callback()


class FakeTarget:
    """A target's scraper whose run blocks until `release` is set (when given), then answers
    up with one query outcome, or raises `error`."""

    def __init__(
        self,
        target: Any,
        release: threading.Event | None = None,
        ready: bool = True,
        error: Exception | None = None,
    ) -> None:
        self.target = target
        self.connection = FakeConnection(ready)
        self.release = release
        self.error = error
        self.runs = 0
        self.running = threading.Event()
        self.closed = False
        self.query_errors: dict[tuple[str, str], int] = {}
        self.login_checker = None

    def scrape(self, deadline: float) -> TargetResult:
        self.runs += 1
        self.running.set()
        if self.release is not None:
            self.release.wait(30)
        if self.error is not None:
            raise self.error
        outcome = QueryOutcome("connections", 0.001)
        return TargetResult(self.target, True, 0.002, 150000, (outcome,))

    def close(self, successor: object = None) -> None:
        self.closed = True


def install(scraper: Any, **kinds: dict[str, Any]) -> dict[str, FakeTarget]:
    """Replace each of `scraper`'s targets by a FakeTarget (keyword arguments per name)."""
    fakes = {
        t.target.name: FakeTarget(t.target, **kinds.get(t.target.name, {})) for t in scraper.targets
    }
    scraper.targets = list(fakes.values())
    return fakes


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)
