"""Scrapes every target at once, within one deadline, sharing work between concurrent scrapes.

Target runs share a bounded pool of threads (`settings.scrape_concurrency`), so the exporter's
threads do not grow with its targets. A target is handed to the pool only once it has a
connection (or has failed to get one for now), so a dead or still-connecting target holds no
thread while others wait; a run is bounded by the deadline, and a server that stops answering
has its connection cut (target.SILENT_SERVER_GRACE). A scrape that arrives while a target's run
is still in flight joins that run instead of starting another: two Prometheus replicas and a
curious human cost the server one set of queries, and the held connection is never asked for
twice.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from exporter.config import Config
from exporter.target import TargetResult, TargetScraper

log = logging.getLogger(__name__)


class Scraper:
    """All targets of the current configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.targets = [TargetScraper(t, config.queries, config.settings) for t in config.targets]
        self._executor = _executor(config)
        self._inflight: dict[str, Future[TargetResult]] = {}
        self._lock = threading.Lock()

    def open(self) -> None:
        for target in self.targets:
            target.open()

    def close(self) -> None:
        with self._lock:
            self._executor.shutdown(wait=False, cancel_futures=True)
            for target in self.targets:
                target.close()

    def reload(self, config: Config) -> None:
        """Switch to `config`. A target whose connection settings are unchanged keeps its
        connection (and so its slot on a full server), its login check and its counters."""
        with self._lock:
            old = {t.target.name: t for t in self.targets}
            targets = [
                TargetScraper(t, config.queries, config.settings, old.get(t.name))
                for t in config.targets
            ]
            old_executor, old_runs = self._executor, self._inflight
            self.config, self.targets = config, targets
            self._executor = _executor(config)
            self._inflight = {}
        for target in targets:
            if target.connection is not getattr(old.get(target.target.name), "connection", None):
                target.open()
        old_executor.shutdown(wait=False)
        successors = {t.target.name: t for t in targets}
        for name, scraper in old.items():
            # An old scraper is closed only once its run in flight (if any) has ended: a
            # scrape waiting for that run must get its answer, not a closed pool.
            def close(_run: object = None, scraper: TargetScraper = scraper) -> None:
                # Quick (a connection's close sends one message): no thread of its own.
                scraper.close(successors.get(scraper.target.name))

            run = old_runs.get(name)
            if run is not None:
                run.add_done_callback(close)  # runs at once if already done
            else:
                close()

    def scrape(self, timeout: float) -> list[TargetResult]:
        """One result per target, all within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            runs = [(t, self._join_or_start(t, deadline)) for t in self.targets]
        return [self._wait(t, run, deadline) for t, run in runs]

    def scrape_target(self, name: str, timeout: float) -> tuple[TargetScraper, TargetResult] | None:
        """One configured target's result within `timeout` (joining a run in flight), or None
        if the configuration has no target of that name: what /probe?target=NAME serves."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = next((t for t in self.targets if t.target.name == name), None)
            if target is None:
                return None
            run = self._join_or_start(target, deadline)
        return target, self._wait(target, run, deadline)

    def _join_or_start(self, target: TargetScraper, deadline: float) -> Future[TargetResult]:
        run = self._inflight.get(target.target.name)
        if run is None or run.done():
            run = Future()
            executor = self._executor

            def start(run: Future[TargetResult] = run) -> None:
                # Once the target has a connection, or has failed to get one for now.
                try:
                    inner = executor.submit(target.scrape, deadline)
                except RuntimeError:  # the pool was shut down (a reload or stop)
                    run.set_result(TargetResult(target.target, False, 0.0, error="stopped"))
                    return
                inner.add_done_callback(lambda done: _copy(done, run, target))

            target.connection.when_ready(start)
            self._inflight[target.target.name] = run
        return run

    @staticmethod
    def _wait(target: TargetScraper, run: Future[TargetResult], deadline: float) -> TargetResult:
        try:
            return run.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            return TargetResult(target.target, False, 0.0, error="scrape deadline exceeded")
        except Exception:
            # A bug must cost this target's metrics, never the whole scrape.
            log.exception("scrape of target failed", extra={"target": target.target.name})
            return TargetResult(target.target, False, 0.0, error="internal error (see the log)")


def _executor(config: Config) -> ThreadPoolExecutor:
    workers = min(config.settings.scrape_concurrency, max(1, len(config.targets)))
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scrape")


def _copy(done: Future[TargetResult], run: Future[TargetResult], target: TargetScraper) -> None:
    """The result of a target's run on the pool, to the run scrapes wait for."""
    if done.cancelled():
        run.set_result(TargetResult(target.target, False, 0.0, error="stopped"))
    elif (exc := done.exception()) is not None:
        run.set_exception(exc)
    else:
        run.set_result(done.result())
