"""Between scrapes: one task per target on the exporter's event loop, sampling its slots (or
PgBouncer's clients) every interval on the target's held connection, never a second one
(docs/architecture.md, "The sampler").

A tick takes the connection only if it is free at once (`TargetConnection.idle_connection`):
a scrape holding or waiting for it makes the tick a miss (`busy`), never a wait, and a scrape
that arrives during a tick waits for one statement at most (the tick gives the connection back
before its next one). A sample is bounded like a scrape's query: PostgreSQL's statement_timeout
(the target's query timeout), with the scrape's watchdog only for a server that does not answer
at all (timeout plus target.SILENT_SERVER_GRACE: a merely slow, full server keeps the
exporter's slot); PgBouncer's console, which has no statement_timeout, under a watchdog per
statement as its scrape's queries are.

Configured targets are sampled every `sampler.interval`, /probe's servers from discovery every
`sampler.probe_interval` while they are held; past `max_samples_per_second` over all of them
every interval stretches evenly (`effective_interval`). A reload keeps the totals of a target
whose name, kind, labels and levels are unchanged (they never go backwards); a removed target's
task stops after its tick in flight, if any (cancelling it mid-statement would close a
connection its successor may have kept).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.config.model import SamplerSettings
from exporter.db.connection import Busy, NotConnected, TargetConnection, Watchdog
from exporter.kinds import WatchdogScope
from exporter.sampling.sampler import MissReason, SamplerKind, TargetSampler, effective_interval
from exporter.sampling.statements import Rows
from exporter.scrape.merged import merged_families
from exporter.scrape.target import SILENT_SERVER_GRACE, TargetScraper

log = logging.getLogger(__name__)

# How often the set of targets is compared with the tasks (probe targets come and go with
# discovery; a reload also updates at once).
RECONCILE_SECONDS = 1.0
# Ticks start on a grid of this many seconds: the targets due in one step share the loop's
# wake-up (the exporter's CPU per sample is mostly waking up for it).
TICK_GRID = 0.1

# What makes a sampler the same one after a reload (its totals kept).
_Levels = tuple[float, ...]
_Key = tuple[bool, str, str, tuple[tuple[str, str], ...], _Levels, _Levels, float]


def _key(scraper: TargetScraper, settings: SamplerSettings, probe: bool) -> _Key:
    target = scraper.target
    return (
        probe,
        target.name,
        target.kind,
        tuple(target.labels.items()),
        tuple(settings.levels),
        tuple(settings.pgbouncer_levels),
        settings.window,
    )


@dataclass
class _Entry:
    """One target's sampler, the scraper whose connection it samples (replaced by a reload
    that keeps the target), and its task."""

    scraper: TargetScraper
    sampler: TargetSampler
    probe: bool
    stopped: bool = False
    task: asyncio.Task[None] | None = None


class Samplers(Collector):
    """Every target's sampler: `start(loop)` on the loop, `update(...)` on the loop (a reload),
    `close()` on the loop before it ends. `collect()` (any thread) yields the configured
    targets' families, one per name; `families(scraper)` one /probe target's."""

    def __init__(
        self,
        settings: SamplerSettings,
        configured: Callable[[], Sequence[TargetScraper]],
        probed: Callable[[], Sequence[TargetScraper]] = lambda: (),
    ) -> None:
        self.settings = settings
        self._configured = configured
        self._probed = probed
        self._entries: dict[_Key, _Entry] = {}
        self._lock = threading.Lock()  # the entries as collect() on a worker reads them
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconciler: asyncio.Task[None] | None = None
        # Every sampler task not ended yet, a stopped target's included.
        self._running: set[asyncio.Task[None]] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: the targets' tasks, and the one that follows /probe's targets."""
        self._loop = loop
        self.update()
        self._reconciler = loop.create_task(self._follow(), name="samplers")

    def update(self, settings: SamplerSettings | None = None) -> None:
        """On the loop: tasks for the targets there are now, with `settings` if given (a
        reload); the others stopped; every interval worked out again."""
        if settings is not None:
            self.settings = settings
        settings = self.settings
        wanted: dict[_Key, tuple[TargetScraper, bool]] = {}
        if settings.enabled:
            for probe, scrapers in ((False, self._configured()), (True, self._probed())):
                for scraper in scrapers:
                    wanted[_key(scraper, settings, probe)] = (scraper, probe)
        count = len(wanted)
        intervals = {
            False: effective_interval(settings, count),
            True: effective_interval(settings, count, probe=True),
        }
        with self._lock:
            gone = [self._entries.pop(k) for k in list(self._entries) if k not in wanted]
            for key, (scraper, probe) in wanted.items():
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = self._new(scraper, probe, intervals[probe])
                else:
                    entry.scraper = scraper
                    if entry.sampler.interval != intervals[probe]:
                        entry.sampler.retime(intervals[probe])
        for entry in gone:
            entry.stopped = True
        if self._loop is not None:
            for entry in self._entries.values():
                if entry.task is None:
                    entry.task = task = self._loop.create_task(
                        self._drive(entry), name=f"sampler {entry.scraper.target.name}"
                    )
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)

    def _new(self, scraper: TargetScraper, probe: bool, interval: float) -> _Entry:
        target = scraper.target
        labels = {"target": target.name, **target.labels}
        kind = cast(SamplerKind, target.kind)
        return _Entry(scraper, TargetSampler(kind, labels, self.settings, interval=interval), probe)

    async def close(self) -> None:
        """On the loop, as the exporter stops: every task ended."""
        tasks = list(self._running)
        if self._reconciler is not None:
            tasks.append(self._reconciler)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    @property
    def tasks(self) -> int:
        """Sampler tasks not ended yet, a removed target's included (tests hold it bounded)."""
        return len(self._running)

    async def _follow(self) -> None:
        """Follow the targets: update() only when they changed (a probe target came or went,
        the configured ones were replaced), since it walks all of them (at 1,000 targets,
        each second, that walk cost 2 % of a core: docs/benchmarks.md)."""
        seen: tuple[int, ...] = ()
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            try:
                now = (id(self._configured()), *map(id, self._probed()))
                if now != seen:
                    seen = now
                    self.update()
            except Exception:
                log.exception("samplers: following the targets failed")

    async def _drive(self, entry: _Entry) -> None:
        """Tick every interval until stopped; a late tick is not caught up (the ticks it
        lost are skipped, the next sample covers up to two intervals)."""
        interval = entry.sampler.interval
        # Spread the targets' ticks over the interval rather than all at once.
        phase = zlib.crc32(entry.scraper.target.name.encode()) % 1000 / 1000
        next_at = time.monotonic() + phase * interval
        while True:
            at = math.ceil(next_at / TICK_GRID) * TICK_GRID
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if entry.stopped:
                return
            now = time.monotonic()
            try:
                await self.tick(entry.scraper.connection, entry.sampler, now)
            except Exception:  # a bug costs this tick, never the task
                log.exception("sampling failed", extra={"target": entry.scraper.target.name})
                entry.sampler.missed(now, "error")
            interval = entry.sampler.interval
            next_at += interval
            late = time.monotonic() - next_at
            if late >= 0:
                next_at += (late // interval + 1) * interval

    @staticmethod
    async def tick(connection: TargetConnection, sampler: TargetSampler, now: float) -> None:
        """One tick: the sample recorded, or the miss and why."""
        reason: MissReason | None = None
        try:
            async with connection.idle_connection() as conn:
                reason = await _sample(connection, conn, sampler, now)
        except Busy:
            reason = "busy"
        except NotConnected:
            reason = "down"
        if reason is not None:
            sampler.missed(now, reason)

    def collect(self) -> Iterator[Metric]:
        """The configured targets' families, one per name over all of them."""
        with self._lock:
            samplers = [e.sampler for e in self._entries.values() if not e.probe]
        yield from merged_families(samplers)

    def families(self, scraper: TargetScraper) -> list[Metric]:
        """One target's families, for its /probe answer (none if it is not sampled)."""
        with self._lock:
            samplers = [e.sampler for e in self._entries.values() if e.scraper is scraper]
        return list(merged_families(samplers))


async def _sample(
    connection: TargetConnection,
    conn: psycopg.AsyncConnection[Any],
    sampler: TargetSampler,
    now: float,
) -> MissReason | None:
    """Run the tick's statements on `conn`; None once recorded, else why not."""
    policy = connection.policy
    bound = connection.statement_timeout
    per_query = policy.watchdog is WatchdogScope.QUERY
    results: list[Rows] = []
    dog: Watchdog | None = None
    try:
        # PostgreSQL: statement_timeout bounds each statement on the server (a SET only when
        # the session has another value); the watchdog cuts only a server silent past it.
        guard: AbstractContextManager[Watchdog | None] = (
            nullcontext() if per_query else connection.watchdog(conn, bound + SILENT_SERVER_GRACE)
        )
        with guard as dog:
            await connection.set_statement_timeout(conn, bound)
            for sql in sampler.statements(now):
                if connection.wanted:
                    return "busy"  # a scrape waits: it gets the connection now
                limit = time.monotonic() + bound + SILENT_SERVER_GRACE + 1.0
                each: AbstractContextManager[Watchdog | None] = (
                    connection.watchdog(conn, bound) if per_query else nullcontext(dog)
                )
                with each as dog:
                    rows, _ = await connection.query(conn, sql, {}, limit)
                results.append(rows)
    except psycopg.errors.QueryCanceled:
        return "timeout"
    except psycopg.Error as exc:
        if dog is not None and dog.fired:
            return "timeout"
        connection.stop_preparing(exc)  # a pooler in front lost our prepared statement
        log.debug(
            "sample failed",
            extra={"target": connection.target.name, "error": " ".join(str(exc).split())},
        )
        return "error"
    sampler.record(now, results)
    return None
