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

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from exporter.config.model import Config
from exporter.db.connection import EXPIRIES
from exporter.scrape.target import TargetResult, TargetScraper

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

    def start_target(
        self, name: str, timeout: float
    ) -> tuple[TargetScraper, Future[TargetResult]] | None:
        """One configured target's run (joining one in flight), or None if the configuration
        has no target of that name: what /probe?target=NAME serves. The result comes in the
        Future, by `timeout` at the latest (see answer_by), so that a caller need not hold a
        thread."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = next((t for t in self.targets if t.target.name == name), None)
            if target is None:
                return None
            run = self._join_or_start(target, deadline)
        return target, answer_by(target, run, deadline)

    def submit(self, target: TargetScraper, deadline: float) -> Future[TargetResult]:
        """A run of `target` (one not of this config: /probe's from discovery) on the pool,
        handed to it once the target has a connection or has failed to get one."""
        with self._lock:
            return self._submit(target, deadline)

    def _join_or_start(self, target: TargetScraper, deadline: float) -> Future[TargetResult]:
        run = self._inflight.get(target.target.name)
        if run is None or run.done():
            run = self._inflight[target.target.name] = self._submit(target, deadline)
        return run

    def _submit(self, target: TargetScraper, deadline: float) -> Future[TargetResult]:
        run: Future[TargetResult] = Future()
        executor = self._executor

        def start() -> None:
            # Once the target has a connection, or has failed to get one for now.
            try:
                inner = executor.submit(target.scrape, deadline)
            except RuntimeError:  # the pool was shut down (a reload or stop)
                run.set_result(TargetResult(target.target, False, 0.0, error="stopped"))
                return
            inner.add_done_callback(lambda done: _copy(done, run, target))

        target.connection.when_ready(start)
        return run

    @staticmethod
    def _wait(target: TargetScraper, run: Future[TargetResult], deadline: float) -> TargetResult:
        try:
            return run.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            return TargetResult(target.target, False, 0.0, error=DEADLINE)
        except Exception:
            # A bug must cost this target's metrics, never the whole scrape.
            log.exception("scrape of target failed", extra={"target": target.target.name})
            return TargetResult(target.target, False, 0.0, error="internal error (see the log)")


class _AnswerBy:
    """Settles a target's answer at its deadline if its run has not yet: an object of the
    process's one expiry thread (connection.EXPIRIES), so no thread waits for it."""

    def __init__(self, target: TargetScraper, answer: Future[TargetResult]) -> None:
        self._target = target
        self._answer = answer

    @property
    def finished(self) -> bool:
        return self._answer.done()

    def expire(self) -> None:
        _settle(self._answer, TargetResult(self._target.target, False, 0.0, error=DEADLINE))


DEADLINE = "scrape deadline exceeded"


def answer_by(
    target: TargetScraper, run: Future[TargetResult], deadline: float
) -> Future[TargetResult]:
    """`run`'s result, or by `deadline` a result saying it missed it (as Scraper.scrape
    reports such a target), in a Future that never raises."""
    answer: Future[TargetResult] = Future()

    def done(run: Future[TargetResult]) -> None:
        try:
            result = run.result()
        except Exception:
            # A bug must cost this target's metrics, never the request.
            log.exception("scrape of target failed", extra={"target": target.target.name})
            result = TargetResult(target.target, False, 0.0, error="internal error (see the log)")
        _settle(answer, result)

    run.add_done_callback(done)
    if not answer.done():
        EXPIRIES.add(deadline, _AnswerBy(target, answer))
    return answer


def _settle(answer: Future[TargetResult], result: TargetResult) -> None:
    with contextlib.suppress(InvalidStateError):  # the other of run and deadline came first
        answer.set_result(result)


def _executor(config: Config) -> ThreadPoolExecutor:
    # Sized by the setting alone, not the configured targets: /probe's servers from discovery
    # run here too. The pool starts a thread only when no idle one can take a run.
    return ThreadPoolExecutor(
        max_workers=config.settings.scrape_concurrency, thread_name_prefix="scrape"
    )


def _copy(done: Future[TargetResult], run: Future[TargetResult], target: TargetScraper) -> None:
    """The result of a target's run on the pool, to the run scrapes wait for."""
    if done.cancelled():
        run.set_result(TargetResult(target.target, False, 0.0, error="stopped"))
    elif (exc := done.exception()) is not None:
        run.set_exception(exc)
    else:
        run.set_result(done.result())
