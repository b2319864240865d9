"""Runs the configured queries against one target, within a deadline.

Each query is gated by target kind and server version, bounded by its own timeout (never beyond
the scrape deadline), served from its cache while fresh, and fails alone: an error in one query
is counted and the others still run. What differs by target kind is read from the target's
kind's policy (exporter.kinds), resolved once: on PostgreSQL a scrape's queries share one read-only
transaction (one snapshot of the backends; see connection.ScrapeTransaction); PgBouncer's SHOW
output gains and loses columns between versions, so there a metric whose columns are missing is
left out rather than failing its query.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pickle
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from exporter.config.model import QuerySpec, Settings, Target
from exporter.db.connection import NotConnected, ScrapeTransaction, TargetConnection, Watchdog
from exporter.kinds import WatchdogScope, kind_of
from exporter.scrape.engine import (
    MetricSamples,
    Row,
    build_samples,
    metric_missing_columns,
    missing_columns,
)
from exporter.scrape.logincheck import LoginChecker, LoginResult

log = logging.getLogger(__name__)

# Results of at most this many rows are fingerprinted to compare with the next; larger ones
# (sessions by client, by application) seldom repeat, and would cost the hashing for nothing.
_FINGERPRINTED_ROWS = 64
QUERY_ERROR_REASONS = ("error", "timeout", "deadline", "connection", "invalid_result")
# Seconds kept back from the deadline so that the answer still reaches Prometheus in time.
DEADLINE_MARGIN = 0.25
# A PostgreSQL target still busy this long after the deadline is not answering (every query's
# statement_timeout ends before the deadline): its connection is cut so that the next scrape
# gets a new one.
SILENT_SERVER_GRACE = 5.0


@dataclass(frozen=True)
class QueryOutcome:
    """One query's part of a scrape."""

    name: str
    duration: float
    metrics: tuple[MetricSamples, ...] = ()
    error: str | None = None
    cached: bool = False


@dataclass(frozen=True)
class TargetResult:
    """Everything one scrape learned about one target."""

    target: Target
    up: bool
    duration: float
    server_version: int | None = None
    queries: tuple[QueryOutcome, ...] = ()
    error: str | None = None
    login: LoginResult | None = None


# A query's rows and result columns.
_Read = tuple[Sequence[Row], tuple[str, ...]]


@dataclass
class _CacheEntry:
    expires: float
    outcome: QueryOutcome


def rows_fingerprint(rows: Sequence[Row]) -> bytes | None:
    """A digest that equals the last scrape's only if the rows do (their pickle: the same
    bytes unpickle to equal rows; blake2b's 128 bits, no collision to fear); None for a value
    pickle cannot write (the rows are then built every time). Kept instead of the rows
    themselves, which at 1,000 targets held 50 MB between scrapes (docs/benchmarks.md, "The
    fleet's memory")."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        # Pickled straight into the hash: no copy of a large value is made for it.
        pickle.Pickler(_Hashing(digest), protocol=5).dump(rows)
    except Exception:  # any value a loader may give that has no pickle: not fingerprinted
        return None
    return digest.digest()


class _Hashing:
    """A file for pickle that feeds what it is given to a hash."""

    def __init__(self, digest: Any) -> None:
        self.write = digest.update


class TargetScraper:
    """Owns a target's connection, login check, query cache and error counters."""

    def __init__(
        self,
        target: Target,
        queries: Sequence[QuerySpec],
        settings: Settings,
        previous: TargetScraper | None = None,
    ) -> None:
        """`previous` is this target's scraper under the config being replaced: its connection
        (the slot it holds), login check and counters are kept where the new config allows."""
        self.target = target
        self.settings = settings
        self.kind = kind_of(target.kind)
        self.policy = self.kind.policy
        self.queries = [q for q in queries if q.target_kind == self.kind.name]
        self.connection: TargetConnection
        if previous is not None and previous.connection_reusable(target, settings):
            self.connection = previous.connection
        else:
            self.connection = TargetConnection(
                target, settings.query_timeout, settings.lock_timeout
            )
        self.login_checker: LoginChecker | None = None
        if previous is not None and previous.target.login_check == target.login_check:
            self.login_checker = previous.login_checker
        elif target.login_check is not None:
            self.login_checker = LoginChecker(target.name, target.login_check)
        # (query, reason) -> failed runs; every pair starts at 0 so that increase() sees the
        # first failure.
        self.query_errors: Counter[tuple[str, str]] = Counter(
            {(q.name, reason): 0 for q in self.queries for reason in QUERY_ERROR_REASONS}
        )
        if previous is not None:
            for key in self.query_errors:
                self.query_errors[key] = previous.query_errors.get(key, 0)
        self.last_result: TargetResult | None = previous.last_result if previous else None
        self._cache: dict[str, _CacheEntry] = {}
        self._warned: set[str] = set()
        self._missing_logged: set[str] = set()
        self._version_skipped: set[str] = set()
        # query -> the result columns last found to hold everything its metrics need
        self._complete_columns: dict[str, tuple[str, ...]] = {}
        # query -> its last rows' fingerprint and the samples made of them: a server whose
        # answer did not change since the last scrape (limits, settings, a quiet server's
        # counters) costs no building of samples.
        self._last_rows: dict[
            str, tuple[bytes, frozenset[str], QuerySpec, tuple[MetricSamples, ...]]
        ] = {}
        # One run at a time (concurrent scrapes share one run: rarely contended).
        self._lock = asyncio.Lock()

    def connection_reusable(self, target: Target, settings: Settings) -> bool:
        """Whether `target` under `settings` would open the very same connection as this one."""
        return (target.conninfo, target.connect_timeout, target.kind) == (
            self.target.conninfo,
            self.target.connect_timeout,
            self.target.kind,
        ) and (settings.query_timeout, settings.lock_timeout) == (
            self.settings.query_timeout,
            self.settings.lock_timeout,
        )

    async def open(self) -> None:
        await self.connection.open()

    async def close(self, keep: TargetScraper | None = None) -> None:
        """Close what this scraper owns, except what `keep` (its successor) took over."""
        if keep is None or keep.connection is not self.connection:
            await self.connection.close()
        if self.login_checker is not None and (
            keep is None or keep.login_checker is not self.login_checker
        ):
            self.login_checker.close()

    async def scrape(
        self, deadline: float, places: asyncio.Semaphore | None = None
    ) -> TargetResult:
        """Run every due query; never runs past `deadline` (a time.monotonic() value), but
        for a server that stops answering, cut SILENT_SERVER_GRACE after it. With `places`,
        the queries wait for one (taken once the connection is there: a target waiting for
        its connection holds none)."""
        async with self._lock:
            start = time.monotonic()
            result = await self._scrape(start, deadline, places or nullcontext())
            checker = self.login_checker
            if checker is not None:
                # After the queries, so that the check's own backend is not counted by them.
                attempt = checker.start_if_due()
                login = await checker.result(attempt, deadline - DEADLINE_MARGIN)
                result = replace(result, login=login)
            self.last_result = result
            return result

    async def _scrape(
        self, start: float, deadline: float, place: AbstractAsyncContextManager[Any]
    ) -> TargetResult:
        wait = min(self.target.connect_timeout, deadline - DEADLINE_MARGIN - start)
        try:
            async with self.connection.connection(timeout=wait) as conn, place:
                version = conn.info.server_version
                with self._guard(conn, deadline) as guard:
                    outcomes = tuple(await self._run_all(conn, version, deadline, guard))
                up = not conn.broken and not conn.closed
        except NotConnected:
            # The reason only: the server's full message names hosts and ports, and goes to
            # the log instead (the landing page shows this).
            failure = self.connection.last_failure
            error = f"cannot connect: {failure.reason}" if failure else "cannot connect yet"
            return TargetResult(self.target, False, time.monotonic() - start, error=error)
        return TargetResult(self.target, up, time.monotonic() - start, version, outcomes)

    def _guard(
        self, conn: psycopg.AsyncConnection[Any], deadline: float
    ) -> AbstractContextManager[Watchdog | None]:
        """What bounds the whole scrape (BEGIN, SETs, queries, COMMIT), as the kind says: on
        PostgreSQL a watchdog that cuts a connection the server no longer answers on (every
        statement_timeout ends before the deadline)."""
        if self.policy.watchdog is not WatchdogScope.SCRAPE:
            return nullcontext()  # every query has its own watchdog
        seconds = deadline + SILENT_SERVER_GRACE - time.monotonic()
        return self.connection.watchdog(conn, seconds)

    async def _run_all(
        self,
        conn: psycopg.AsyncConnection[Any],
        version: int,
        deadline: float,
        guard: Watchdog | None = None,
    ) -> list[QueryOutcome]:
        outcomes = []
        read: dict[str, _Read] = {}  # each query's rows and columns, for the rows_from ones
        tx = self.connection.transaction(conn) if self.policy.one_transaction else None
        # The last query to go to the server carries the COMMIT (if one whose cache runs out
        # meanwhile follows it, that one runs in a transaction of its own).
        last = next((q for q in reversed(self.queries) if self._goes_to_server(q, version)), None)
        # Ended whatever happens: the connection goes back to the pool outside a transaction.
        try:
            for query in self.queries:
                if not self._in_version(query, version):
                    self._log_version_skip(query, version)
                    continue
                if query.rows_from is not None:
                    outcomes.append(self._from_rows(query, read.get(query.rows_from)))
                    continue
                entry = self._cache.get(query.name)
                now = time.monotonic()
                if entry is not None and entry.expires > now:
                    metrics = entry.outcome.metrics
                    outcomes.append(QueryOutcome(query.name, 0.0, metrics, cached=True))
                    continue
                if conn.broken or conn.closed:
                    outcomes.append(self._failed(query, 0.0, "connection", "connection lost"))
                    continue
                outcome = await self._run(
                    conn, query, deadline, tx, guard, read=read, last=query is last
                )
                if tx is not None:
                    await tx.after_query()
                if outcome.error is None and query.cache:
                    self._cache[query.name] = _CacheEntry(now + query.cache, outcome)
                outcomes.append(outcome)
        finally:
            if tx is not None:
                await tx.finish()
        return outcomes

    @staticmethod
    def _in_version(query: QuerySpec, version: int) -> bool:
        return not (
            (query.min_version and version < query.min_version)
            or (query.max_version and version > query.max_version)
        )

    def _goes_to_server(self, query: QuerySpec, version: int) -> bool:
        """Whether `query` runs on the server in this scrape (not skipped, derived or cached)."""
        entry = self._cache.get(query.name)
        return (
            self._in_version(query, version)
            and query.rows_from is None
            and not (entry is not None and entry.expires > time.monotonic())
        )

    async def _run(
        self,
        conn: psycopg.AsyncConnection[Any],
        query: QuerySpec,
        deadline: float,
        tx: ScrapeTransaction | None = None,
        guard: Watchdog | None = None,
        retry: bool = True,
        read: dict[str, _Read] | None = None,
        last: bool = False,
    ) -> QueryOutcome:
        start = time.monotonic()
        remaining = deadline - DEADLINE_MARGIN - start
        if remaining <= 0.01:
            return self._failed(query, 0.0, "deadline", "no time left in this scrape")
        timeout = min(query.timeout or self.settings.query_timeout, remaining)
        # PostgreSQL bounds the statement itself (and the scrape's `guard` a silent server);
        # PgBouncer's console has no statement_timeout: a watchdog bounds the query.
        bound: AbstractContextManager[Watchdog | None] = (
            self.connection.watchdog(conn, timeout)
            if self.policy.watchdog is WatchdogScope.QUERY
            else nullcontext(guard)
        )
        try:
            with bound as dog:
                # BEGIN (and its SET) and, for the scrape's last query, COMMIT travel in the
                # query's own message (a round trip each fewer).
                before = await tx.opening(timeout) if tx is not None else []
                await self.connection.set_statement_timeout(conn, timeout)
                after = tx.closing() if tx is not None and last else []
                rows, columns = await self.connection.query(
                    conn,
                    query.sql,
                    query.params,
                    deadline + SILENT_SERVER_GRACE + 1.0,
                    before,
                    after,
                )
        except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
            # statement_timeout, or lock_timeout behind a lock held by someone else.
            return self._failed(query, time.monotonic() - start, "timeout", str(exc))
        except psycopg.Error as exc:
            if tx is not None and (
                self.connection.stop_preparing(exc)
                or self.connection.several_statements(query.sql, exc)
                or (retry and self.connection.stale_plan(exc))
            ):
                # The server lacked our prepared statement, the query holds several statements,
                # or its plan went stale: once more (unprepared, or prepared anew) in a new
                # transaction, this one being aborted.
                await tx.after_query()
                await self.connection.forget_prepared(conn, query.sql, query.params)
                return await self._run(
                    conn, query, deadline, tx, guard, retry=False, read=read, last=last
                )
            if dog is not None and dog.fired:
                reason, message = "timeout", f"no answer within {timeout:.3g}s"
            else:
                reason = "connection" if conn.broken or conn.closed else "error"
                message = str(exc)
            return self._failed(query, time.monotonic() - start, reason, message)
        duration = time.monotonic() - start
        if read is not None:
            read[query.name] = (rows, columns)
        return self._samples(query, rows, columns, duration)

    def _from_rows(self, query: QuerySpec, read: _Read | None) -> QueryOutcome:
        """A rows_from query: its metrics from the rows its source read in this scrape."""
        if read is None:
            return self._failed(
                query, 0.0, "error", f"query {query.rows_from} read no rows in this scrape"
            )
        return self._samples(query, *read, 0.0)

    def _samples(
        self, query: QuerySpec, rows: Sequence[Row], columns: tuple[str, ...], duration: float
    ) -> QueryOutcome:
        skip: frozenset[str] = frozenset()
        if self.policy.tolerates_missing_columns:
            skip = self._unavailable(query, columns)
        elif self._complete_columns.get(query.name) != columns:
            missing = missing_columns(query, columns)
            if missing:
                return self._failed(
                    query,
                    duration,
                    "invalid_result",
                    f"result has no column(s) {', '.join(missing)}",
                )
            self._complete_columns[query.name] = columns  # checked once per result shape
        last = self._last_rows.get(query.name)
        fingerprint = rows_fingerprint(rows) if len(rows) <= _FINGERPRINTED_ROWS else None
        if (
            fingerprint is not None
            and last is not None
            and last[0] == fingerprint
            and last[1] == skip
            and last[2] is query
        ):
            metrics = last[3]  # the same rows make the same samples (engine is pure)
        else:
            try:
                metrics = tuple(build_samples(query, rows, skip))
            except (TypeError, ValueError) as exc:
                return self._failed(query, duration, "invalid_result", str(exc))
            if fingerprint is None:
                self._last_rows.pop(query.name, None)
            else:
                self._last_rows[query.name] = (fingerprint, skip, query, metrics)
        self._warn_once(metrics)
        return QueryOutcome(query.name, duration, metrics)

    def _unavailable(self, query: QuerySpec, columns: Sequence[str]) -> frozenset[str]:
        """Metrics of `query` this server's version has no columns for (logged once)."""
        missing = {m.name: metric_missing_columns(m, columns) for m in query.metrics}
        missing = {name: cols for name, cols in missing.items() if cols}
        if missing and query.name not in self._missing_logged:
            self._missing_logged.add(query.name)
            log.info(
                "metrics left out: this %s has no such columns",
                self.kind.title,
                extra={
                    "target": self.target.name,
                    "query": query.name,
                    "missing": "; ".join(f"{n}: {', '.join(c)}" for n, c in missing.items()),
                },
            )
        return frozenset(missing)

    def _failed(self, query: QuerySpec, duration: float, reason: str, message: str) -> QueryOutcome:
        assert reason in QUERY_ERROR_REASONS, reason
        self.query_errors[(query.name, reason)] += 1
        log.warning(
            "query failed",
            extra={
                "target": self.target.name,
                "query": query.name,
                "reason": reason,
                "error": message.strip(),
            },
        )
        return QueryOutcome(query.name, duration, error=reason)

    def _log_version_skip(self, query: QuerySpec, version: int) -> None:
        """Said once per query: a server outside a query's versions (PostgreSQL older than 12
        for the built-in ones) gets fewer metrics and no error, so the log says why."""
        if query.name in self._version_skipped:
            return
        self._version_skipped.add(query.name)
        log.info(
            "query %s skipped: it is for server versions %s to %s, this server is %s",
            query.name,
            query.min_version or "any",
            query.max_version or "any",
            version,
            extra={"target": self.target.name, "query": query.name},
        )

    def _warn_once(self, metrics: tuple[MetricSamples, ...]) -> None:
        for m in metrics:
            if not m.spec.warn:
                continue
            positive = any(value > 0 for _, value in m.samples)
            if positive and m.spec.name not in self._warned:
                self._warned.add(m.spec.name)
                log.warning(m.spec.warn, extra={"target": self.target.name, "metric": m.spec.name})
            elif not positive:
                self._warned.discard(m.spec.name)
