"""Each target's local log read as a stream: one task per target with `log: {source: file}` on
the exporter's event loop, reading the log directory on the loop's executor (plain file I/O,
bounded by a byte budget) and feeding the target's `LogStream`; the streams' families for
/metrics.

A reload keeps the stream of a target whose log settings and labels did not change, so its
totals never go backwards; a removed target's task stops, an added one's starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.config.model import LogSpec, Target
from exporter.logs.filetail import FileTail
from exporter.logs.prefix import PrefixError
from exporter.logs.source import Piece
from exporter.logs.stream import DEFAULT_PATTERNS, LogStream

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
# Bytes read per poll: small enough that feeding them holds the loop's thread only briefly
# (docs/benchmarks.md, "Figures that were in code comments"); a reader behind reads again at
# once (up to 4 MiB a second before it skips, filetail).
BUDGET_BYTES = 1 << 20

_Key = tuple[LogSpec, str, tuple[tuple[str, str], ...]]


def _key(target: Target) -> _Key | None:
    if target.log is None or target.log.source != "file":
        return None
    return (target.log, target.name, tuple(target.labels.items()))


@dataclass
class _Feed:
    """One target's tail and stream; the lock keeps a close from racing a read on the
    executor."""

    name: str
    tail: FileTail
    stream: LogStream
    task: asyncio.Task[None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, budget: int) -> list[Piece]:
        with self.lock:
            return self.tail.read_available(budget)

    def close(self) -> None:
        with self.lock:
            self.tail.close()


def _new_feed(target: Target) -> _Feed | None:
    spec = target.log
    assert spec is not None and spec.directory is not None
    tail = FileTail(spec.directory, spec.pattern or DEFAULT_PATTERNS[spec.format])
    labels = {"target": target.name, **target.labels}
    try:
        stream = LogStream(
            labels, spec.format, tail.counts, log_line_prefix=spec.log_line_prefix or ""
        )
    except PrefixError as exc:
        log.error(
            "the target's log cannot be read: its log_line_prefix is refused",
            extra={"target": target.name, "error": str(exc)},
        )
        return None
    return _Feed(target.name, tail, stream)


class LogFeeds(Collector):
    """The feeds of a configuration's targets: `start(loop)` on the loop, `update(targets)`
    from any thread (a reload), `close()` once the loop has stopped."""

    def __init__(
        self,
        targets: Sequence[Target],
        poll: float = POLL_SECONDS,
        budget: int = BUDGET_BYTES,
    ) -> None:
        self.poll = poll
        self.budget = budget
        self._lock = threading.Lock()
        self._feeds: dict[_Key, _Feed] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.update(targets)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: a task for each feed."""
        with self._lock:
            self._loop = loop
            for feed in self._feeds.values():
                self._start(feed)

    def update(self, targets: Sequence[Target]) -> None:
        """Keep the feeds whose settings are unchanged, stop the others, start the new."""
        wanted = {key: t for t in targets if (key := _key(t)) is not None}
        with self._lock:
            for key in list(self._feeds):
                if key not in wanted:
                    self._stop(self._feeds.pop(key))
            for key, target in wanted.items():
                if key not in self._feeds and (feed := _new_feed(target)) is not None:
                    self._feeds[key] = feed
                    self._start(feed)

    def close(self) -> None:
        """After the loop has stopped (its tasks cancelled): every file closed."""
        with self._lock:
            for feed in self._feeds.values():
                feed.close()

    def _start(self, feed: _Feed) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def create() -> None:
            feed.task = loop.create_task(self._follow(feed), name=f"log {feed.name}")

        loop.call_soon_threadsafe(create)

    def _stop(self, feed: _Feed) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            feed.close()
            return

        def cancel() -> None:
            if feed.task is not None:
                feed.task.cancel()  # its finally closes the file
            else:
                feed.close()

        try:
            loop.call_soon_threadsafe(cancel)
        except RuntimeError:  # the loop closed meanwhile
            feed.close()

    async def _follow(self, feed: _Feed) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                pieces = await loop.run_in_executor(None, feed.read, self.budget)
                try:
                    feed.stream.feed(pieces)
                except Exception:  # a parser bug costs those bytes, never the feed
                    log.exception("counting the log failed", extra={"target": feed.name})
                behind = sum(len(p.data) for p in pieces) >= self.budget
                await asyncio.sleep(0 if behind else self.poll)
        finally:
            feed.close()

    def collect(self) -> Iterator[Metric]:
        """The streams' families, one per name over all targets."""
        with self._lock:
            streams = [feed.stream for feed in self._feeds.values()]
        merged: dict[str, Metric] = {}
        for stream in streams:
            for family in stream.collect():
                into = merged.get(family.name)
                if into is None:
                    merged[family.name] = family
                else:
                    into.samples.extend(family.samples)
        yield from merged.values()
