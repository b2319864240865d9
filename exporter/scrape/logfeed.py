"""Each target's log read as a stream: one task per target with a `log:` section on the
exporter's event loop, feeding the target's `LogStream`; the streams' families for /metrics.

`source: file` reads the log directory on the loop's executor (plain file I/O, bounded by a
byte budget) every 250 ms. `source: remote` reads through `pgce_read_log` on the target's held
connection (remotelog.py) every 2 s, and only when no scrape holds or waits for it. A `stderr`
log whose prefix the configuration does not give is read once `SHOW log_line_prefix` (on the
held connection) has answered with a prefix the reader can parse.

A reload keeps the stream of a target whose log settings and labels did not change, so its
totals never go backwards; a removed target's task stops, an added one's starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.config.model import LogSpec, Target
from exporter.db.connection import Busy, NotConnected, TargetConnection
from exporter.logs.filetail import FileTail
from exporter.logs.prefix import PrefixError
from exporter.logs.remote import RemoteTail
from exporter.logs.source import Piece, SourceCounts
from exporter.logs.stream import DEFAULT_PATTERNS, LogStream
from exporter.scrape.merged import merged_families
from exporter.scrape.remotelog import failure_reason, read_remote, show_log_line_prefix

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
# The remote source: each poll is two statements on the server (pg_ls_logdir() and one read);
# every 2 s keeps that under one statement a second per target, and a count at most ~2 s late
# (a refusal is counted whenever it is read: the interval delays counts, never loses them).
REMOTE_POLL_SECONDS = 2.0
# A poll that found the connection in use (a scrape) tries again this soon.
BUSY_RETRY_SECONDS = 0.25
# A refused prefix (or one not read yet for want of a connection) is asked for again this often.
PREFIX_RETRY_SECONDS = 30.0
# Bytes read per poll: small enough that feeding them holds the loop's thread only briefly
# (docs/benchmarks.md, "Figures that were in code comments"); a reader behind reads again at
# once (up to 4 MiB a second before it skips, filetail).
BUDGET_BYTES = 1 << 20
# A stand-in until the server's stderr prefix is known: nothing is fed through it.
_PENDING_PREFIX = "%m [%p] "

_Key = tuple[LogSpec, str, tuple[tuple[str, str], ...]]
Connections = Callable[[str], TargetConnection | None]


def _key(target: Target) -> _Key | None:
    if target.log is None:
        return None
    return (target.log, target.name, tuple(target.labels.items()))


@dataclass
class _Feed:
    """One target's source and stream; the lock keeps a close from racing a read on the
    executor. `problem` is the reason the last attempt failed (logged once, when it starts)."""

    name: str
    spec: LogSpec
    source: FileTail | RemoteTail
    stream: LogStream
    prefix_known: bool
    task: asyncio.Task[None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    problem: str | None = None

    @property
    def asks_prefix(self) -> bool:
        """A stderr log whose prefix the server is asked for (SHOW log_line_prefix)."""
        return not self.prefix_known and self.spec.log_line_prefix is None

    @property
    def counts(self) -> SourceCounts:
        return self.source.counts

    def read(self, budget: int) -> list[Piece]:
        assert isinstance(self.source, FileTail)
        with self.lock:
            return self.source.read_available(budget)

    def close(self) -> None:
        if isinstance(self.source, FileTail):
            with self.lock:
                self.source.close()

    def failed(self, reason: str, error: str) -> None:
        """log_up 0, the reason counted, and one log line when this reason starts."""
        self.counts.up = False
        self.counts.failed(reason)
        if reason != self.problem:
            log.log(
                logging.ERROR if reason == "prefix" else logging.WARNING,
                "the target's log cannot be read",
                extra={"target": self.name, "reason": reason, "error": error},
            )
        self.problem = reason

    def recovered(self) -> None:
        if self.problem is not None:
            log.info("the target's log is read again", extra={"target": self.name})
        self.problem = None

    def use_prefix(self, prefix: str) -> bool:
        """The server's stderr prefix, or False (logged once, counted) if it is refused."""
        try:
            self.stream.use_log_line_prefix(prefix)
        except PrefixError as exc:
            self.failed("prefix", str(exc))
            return False
        self.prefix_known = True
        return True


def _new_feed(target: Target) -> _Feed:
    spec = target.log
    assert spec is not None
    pattern = spec.pattern or DEFAULT_PATTERNS[spec.format]
    source: FileTail | RemoteTail
    if spec.source == "remote":
        source = RemoteTail(pattern)
    else:
        assert spec.directory is not None
        source = FileTail(spec.directory, pattern)
    labels = {"target": target.name, **target.labels}
    stream = LogStream(labels, spec.format, source.counts, log_line_prefix=_PENDING_PREFIX)
    feed = _Feed(target.name, spec, source, stream, prefix_known=spec.format != "stderr")
    if spec.format == "stderr" and spec.log_line_prefix is not None:
        feed.use_prefix(spec.log_line_prefix)  # refused: logged, log_up 0, never read
    return feed


class LogFeeds(Collector):
    """The feeds of a configuration's targets: `start(loop)` on the loop, `update(targets)`
    from any thread (a reload), `close()` once the loop has stopped."""

    def __init__(
        self,
        targets: Sequence[Target],
        connections: Connections = lambda name: None,
        poll: float = POLL_SECONDS,
        budget: int = BUDGET_BYTES,
        remote_poll: float = REMOTE_POLL_SECONDS,
    ) -> None:
        # `connections(name)`: the target's held connection now (a reload may replace it).
        self.connections = connections
        self.poll = poll
        self.remote_poll = remote_poll
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
                if key not in self._feeds:
                    feed = self._feeds[key] = _new_feed(target)
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
        try:
            while True:
                if not feed.prefix_known and not feed.asks_prefix:
                    return  # the configuration's prefix was refused: nothing to read
                try:
                    if not feed.prefix_known:
                        wait = await self._ask_prefix(feed)
                    elif feed.spec.source == "remote":
                        wait = await self._read_remote(feed)
                    else:
                        wait = await self._read_file(feed)
                except Exception as exc:  # a bug costs this poll, never the feed
                    if feed.problem != "error":
                        log.exception("reading the log failed", extra={"target": feed.name})
                    feed.problem = "error"  # logged just now, with the traceback
                    feed.failed("error", repr(exc))
                    wait = self.remote_poll
                await asyncio.sleep(wait)
        finally:
            feed.close()

    async def _read_file(self, feed: _Feed) -> float:
        """One read of the local file; the wait before the next."""
        loop = asyncio.get_running_loop()
        pieces = await loop.run_in_executor(None, feed.read, self.budget)
        if feed.counts.up:
            feed.problem = None  # FileTail logs its own problems
        self._feed(feed, pieces)
        return 0 if sum(len(p.data) for p in pieces) >= self.budget else self.poll

    async def _read_remote(self, feed: _Feed) -> float:
        """One poll through pgce_read_log on the held connection, if it is free now; the
        wait before the next."""
        assert isinstance(feed.source, RemoteTail)
        owner = self.connections(feed.name)
        if owner is None:
            return self.remote_poll
        try:
            async with owner.idle_connection() as conn:
                pieces = await read_remote(owner, conn, feed.source, self.budget)
        except Busy:
            return min(BUSY_RETRY_SECONDS, self.remote_poll)
        except NotConnected:
            return self.remote_poll  # the scrape reports the connection; no attempt from here
        except psycopg.Error as exc:
            feed.failed(failure_reason(exc), " ".join(str(exc).split()))
            return self.remote_poll
        if feed.counts.up:
            feed.recovered()
        else:
            feed.problem = "missing"  # RemoteTail logged it
        self._feed(feed, pieces)
        return 0 if sum(len(p.data) for p in pieces) >= self.budget else self.remote_poll

    async def _ask_prefix(self, feed: _Feed) -> float:
        """SHOW log_line_prefix on the held connection, if it is free now; the wait before
        the next try (0 once the prefix is known)."""
        owner = self.connections(feed.name)
        if owner is None:
            return PREFIX_RETRY_SECONDS
        try:
            async with owner.idle_connection() as conn:
                prefix = await show_log_line_prefix(owner, conn)
        except Busy:
            return BUSY_RETRY_SECONDS
        except NotConnected:
            return min(1.0, PREFIX_RETRY_SECONDS)
        except psycopg.Error as exc:
            feed.failed(failure_reason(exc), " ".join(str(exc).split()))
            return PREFIX_RETRY_SECONDS
        if not feed.use_prefix(prefix):
            return PREFIX_RETRY_SECONDS
        feed.recovered()
        log.info(
            "the target's log_line_prefix read from the server",
            extra={"target": feed.name, "log_line_prefix": prefix},
        )
        return 0

    @staticmethod
    def _feed(feed: _Feed, pieces: list[Piece]) -> None:
        try:
            feed.stream.feed(pieces)
        except Exception:  # a parser bug costs those bytes, never the feed
            log.exception("counting the log failed", extra={"target": feed.name})

    def collect(self) -> Iterator[Metric]:
        """The streams' families, one per name over all targets."""
        with self._lock:
            streams = [feed.stream for feed in self._feeds.values()]
        yield from merged_families(streams)
