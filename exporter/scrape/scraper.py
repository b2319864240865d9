"""Scrapes every target at once, within one deadline, sharing work between concurrent scrapes.

Every target's run is a task of the exporter's event loop; at most
`settings.scrape_concurrency` of them run their queries at once (a target still waiting for
its connection holds no place, so a dead or still-connecting target delays no other). A run is
bounded by the deadline, and a server that stops answering has its connection cut
(target.SILENT_SERVER_GRACE). A scrape that arrives while a target's run is still in flight
joins that run instead of starting another: two Prometheus replicas and a curious human cost
the server one set of queries, and the held connection is never asked for twice.

The methods are coroutines of the loop; `call` runs one from another thread (an HTTP worker
rendering /metrics, a reload) and waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from exporter.config.model import Config
from exporter.scrape.target import TargetResult, TargetScraper

log = logging.getLogger(__name__)

T = TypeVar("T")

DEADLINE = "scrape deadline exceeded"


class Scraper:
    """All targets of the current configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.targets = [TargetScraper(t, config.queries, config.settings) for t in config.targets]
        # Each target's run in flight (configured ones and /probe's from discovery alike).
        self._inflight: dict[TargetScraper, asyncio.Task[TargetResult]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._places: asyncio.Semaphore | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the targets' connections live on (set by open())."""
        if self._loop is None:
            raise RuntimeError("the scraper is not open")
        return self._loop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the scraper's loop from another thread, and wait for its result."""
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("Scraper.call on its own loop: await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def open(self) -> None:
        """On the loop that will run the scrapes: start connecting every target."""
        self._loop = asyncio.get_running_loop()
        self._places = asyncio.Semaphore(self.config.settings.scrape_concurrency)
        await asyncio.gather(*(target.open() for target in self.targets))

    async def close(self) -> None:
        for run in list(self._inflight.values()):
            run.cancel()
        # At once: a thousand targets' closes cost one round trip's time, not a thousand.
        await asyncio.gather(*(target.close() for target in self.targets))
        if self._closing:
            await asyncio.wait(self._closing, timeout=5.0)

    async def reload(self, config: Config) -> None:
        """Switch to `config`. A target whose connection settings are unchanged keeps its
        connection (and so its slot on a full server), its login check and its counters."""
        old = {t.target.name: t for t in self.targets}
        targets = [
            TargetScraper(t, config.queries, config.settings, old.get(t.name))
            for t in config.targets
        ]
        self.config, self.targets = config, targets
        # Runs in flight keep the places they hold; new ones take the new setting's.
        self._places = asyncio.Semaphore(config.settings.scrape_concurrency)
        for target in targets:
            if target.connection is not getattr(old.get(target.target.name), "connection", None):
                await target.open()
        successors = {t.target.name: t for t in targets}
        for name, scraper in old.items():
            # An old scraper is closed only once its run in flight (if any) has ended: a
            # scrape waiting for that run must get its answer, not a closed connection.
            self.retire(scraper, successors.get(name))

    def retire(self, scraper: TargetScraper, successor: TargetScraper | None = None) -> None:
        """Close `scraper` (but what `successor` took over) once its run in flight ends."""
        run = self._inflight.get(scraper)

        async def close() -> None:
            if run is not None:
                await asyncio.wait([run])
            await scraper.close(successor)

        task = self.loop.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def scrape(self, timeout: float) -> list[TargetResult]:
        """One result per target, all within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        runs = [(t, self.start(t, deadline)) for t in self.targets]
        if runs:
            await asyncio.wait([r for _, r in runs], timeout=max(0.0, timeout))
        return [_result(t, run) for t, run in runs]

    async def answer(self, target: TargetScraper, deadline: float) -> TargetResult:
        """`target`'s result by `deadline`, joining its run in flight: what /probe serves, for
        a configured target and for a server from discovery alike."""
        run = self.start(target, deadline)
        await asyncio.wait([run], timeout=max(0.0, deadline - time.monotonic()))
        return _result(target, run)

    def busy(self, target: TargetScraper) -> bool:
        """Whether `target` has a run in flight."""
        run = self._inflight.get(target)
        return run is not None and not run.done()

    def start(self, target: TargetScraper, deadline: float) -> asyncio.Task[TargetResult]:
        """`target`'s run in flight, or a new one."""
        run = self._inflight.get(target)
        if run is None or run.done():
            run = self._inflight[target] = self.loop.create_task(self._run(target, deadline))
            run.add_done_callback(lambda done: self._ended(target, done))
        return run

    def _ended(self, target: TargetScraper, run: asyncio.Task[TargetResult]) -> None:
        if self._inflight.get(target) is run:
            del self._inflight[target]

    async def _run(self, target: TargetScraper, deadline: float) -> TargetResult:
        assert self._places is not None
        return await target.scrape(deadline, self._places)


def _result(target: TargetScraper, run: asyncio.Task[TargetResult]) -> TargetResult:
    """A run's result, or what a target that missed the deadline (or failed) reports."""
    if not run.done():
        return TargetResult(target.target, False, 0.0, error=DEADLINE)
    if run.cancelled():
        return TargetResult(target.target, False, 0.0, error="stopped")
    exc = run.exception()
    if exc is not None:
        # A bug must cost this target's metrics, never the whole scrape.
        log.error("scrape of target failed", exc_info=exc, extra={"target": target.target.name})
        return TargetResult(target.target, False, 0.0, error="internal error (see the log)")
    return run.result()
