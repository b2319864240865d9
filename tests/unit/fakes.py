"""Stand-ins for a target's scraper, with the surface `Scraper` and the collector use."""

from __future__ import annotations

import asyncio
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
    def __init__(self) -> None:
        self.connect_failures: dict[str, int] = {}


class FakeTarget:
    """A target's scraper whose run (holding one of the scraper's places) waits until
    `release` is set (when given), then answers up with one query outcome, or raises `error`."""

    def __init__(
        self,
        target: Any,
        release: asyncio.Event | None = None,
        error: Exception | None = None,
    ) -> None:
        self.target = target
        self.connection = FakeConnection()
        self.release = release
        self.error = error
        self.runs = 0
        self.running = asyncio.Event()
        self.closed = False
        self.query_errors: dict[tuple[str, str], int] = {}
        self.login_checker = None
        self.last_result: TargetResult | None = None

    def connection_reusable(self, target: Any, settings: Any) -> bool:
        return False

    async def scrape(
        self, deadline: float, places: asyncio.Semaphore | None = None
    ) -> TargetResult:
        self.runs += 1
        assert places is not None, "the scraper bounds its runs"
        async with places:
            self.running.set()
            if self.release is not None:
                await self.release.wait()
        if self.error is not None:
            raise self.error
        outcome = QueryOutcome("connections", 0.001)
        return TargetResult(self.target, True, 0.002, 150000, (outcome,))

    async def open(self) -> None:
        pass

    async def close(self, successor: object = None) -> None:
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
