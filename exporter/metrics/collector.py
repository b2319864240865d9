"""The prometheus-client custom collector: one scrape of every target, as metric families.

Follows client_python's custom-collector pattern: `collect()` yields freshly built families on
each call and keeps no metric objects between scrapes, so a label set that disappears from the
server disappears from /metrics too.
"""

from __future__ import annotations

import asyncio
import contextvars
import platform
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.db.failures import REASONS
from exporter.metrics.families import RowFamily, ValueFamily, new_family, new_value_family
from exporter.metrics.poolerview import derived_families
from exporter.scrape.scraper import Scraper
from exporter.scrape.target import QUERY_ERROR_REASONS, TargetResult, TargetScraper

SELF = "pg_connections_exporter"

# The HTTP handler sets this to the time Prometheus allows (X-Prometheus-Scrape-Timeout-Seconds).
scrape_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "scrape_timeout", default=None
)
# The results of the scrape the HTTP handler already waited for on the event loop (begin()),
# for the collect() the registry makes while the answer is rendered on a worker.
scraped: contextvars.ContextVar[list[TargetResult] | None] = contextvars.ContextVar(
    "scraped", default=None
)


@dataclass(frozen=True)
class ReloadStatus:
    """How the last configuration (re)load went, and when (Unix time) one last succeeded."""

    success: bool
    last_success_at: float
    # With --web.config.file: whether its last change was taken (True until one is refused).
    web_config_loaded: bool | None = None


class ExporterCollector(Collector):
    """Yields every target's metrics plus the exporter's own."""

    def __init__(
        self, scraper: Scraper, reload_status: Callable[[], ReloadStatus] | None = None
    ) -> None:
        self.scraper = scraper
        self.reload_status = reload_status

    def begin(self) -> Future[list[TargetResult]]:
        """The scrape, started on the scraper's event loop from another thread: the HTTP
        handler awaits it there, holding no worker, then renders with its results
        (`scraped`)."""
        coro = self.scraper.scrape(self._timeout())
        return asyncio.run_coroutine_threadsafe(coro, self.scraper.loop)

    async def results(self) -> list[TargetResult]:
        """The scrape, on the loop (`scrape_timeout` set in this task's context)."""
        return await self.scraper.scrape(self._timeout())

    def _timeout(self) -> float:
        settings = self.scraper.config.settings
        timeout = scrape_timeout.get()
        return settings.scrape_timeout if timeout is None else min(timeout, settings.scrape_timeout)

    def collect(self) -> Iterator[Metric]:
        results = scraped.get()
        if results is None:  # a direct caller: scrape now, waiting on this thread
            results = self.scraper.call(self.scraper.scrape(self._timeout()))
        yield from target_families(results)
        yield from derived_families(results)
        reload = self.reload_status() if self.reload_status else None
        yield from self_families(self.scraper.targets, results, reload)


def target_families(results: Sequence[TargetResult]) -> Iterator[Metric]:
    """The query metrics of all targets, one family per metric name."""
    families: dict[str, RowFamily] = {}
    for result in results:
        base_names = ("target", *result.target.labels)
        base_values = (result.target.name, *result.target.labels.values())
        for outcome in result.queries:
            for produced in outcome.metrics:
                spec = produced.spec
                family = families.get(spec.name)
                if family is None:
                    family = families[spec.name] = new_family(
                        spec.type, spec.name, spec.help, [*base_names, *spec.labels]
                    )
                # Rows under this target's label names: targets may carry different constant
                # labels, and still share one family per metric name.
                names = (*base_names, *spec.labels)
                if produced.histograms:
                    family.add_rows(
                        names,
                        [(h.labels, h.buckets, h.sum) for h in produced.histograms],
                        base_values,
                    )
                else:
                    # The samples as they are: the target's values go in once, as the base.
                    family.add_rows(names, produced.samples, base_values)
    yield from families.values()


@dataclass(frozen=True)
class SelfMetric:
    """An exporter-level metric: declared once, for the collector and the metrics reference."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str

    def family(self) -> ValueFamily:
        base = self.name.removesuffix("_total") if self.type == "counter" else self.name
        return new_value_family(self.type, base, self.help, list(self.labels))


BUILD_INFO = SelfMetric(
    f"{SELF}_build_info",
    "gauge",
    ("version", "python_version"),
    "Version of pg-connections-exporter.",
)
UP = SelfMetric(
    "pg_up",
    "gauge",
    ("target",),
    "1 if the exporter reached the target in this scrape (a failing query alone does not "
    "make it 0: see pg_connections_exporter_query_success).",
)
SCRAPE_DURATION = SelfMetric(
    f"{SELF}_scrape_duration_seconds", "gauge", ("target",), "Time this scrape spent on the target."
)
QUERY_DURATION = SelfMetric(
    f"{SELF}_query_duration_seconds",
    "gauge",
    ("target", "query"),
    "Time each query took in this scrape (0 when served from cache).",
)
QUERY_SUCCESS = SelfMetric(
    f"{SELF}_query_success",
    "gauge",
    ("target", "query"),
    "1 if the query ran (or was served from cache) without error.",
)
QUERY_ERRORS = SelfMetric(
    f"{SELF}_query_errors_total",
    "counter",
    ("target", "query", "reason"),
    f"Failed query runs, by reason ({', '.join(QUERY_ERROR_REASONS)}).",
)
CONNECT_FAILURES = SelfMetric(
    f"{SELF}_connect_failures_total",
    "counter",
    ("target", "reason"),
    f"Failed connection attempts, by reason ({', '.join(REASONS)}).",
)
LOGIN_SUCCESS = SelfMetric(
    "pg_connections_login_check_success",
    "gauge",
    ("target",),
    "1 if the last login check was let in, 0 if it was refused or failed (targets with "
    "login_check only).",
)
LOGIN_DURATION = SelfMetric(
    "pg_connections_login_check_duration_seconds",
    "gauge",
    ("target",),
    "Time the last login check took to be let in or refused.",
)
LOGIN_FAILURES = SelfMetric(
    "pg_connections_login_check_failures_total",
    "counter",
    ("target", "reason"),
    f"Failed login checks, by reason ({', '.join(REASONS)}).",
)
RELOAD_SUCCESS = SelfMetric(
    f"{SELF}_config_last_reload_successful",
    "gauge",
    (),
    "1 if the last configuration load (start, SIGHUP or POST /-/reload) succeeded; "
    "0 while a rejected config waits to be fixed (the previous one keeps running).",
)
WEB_CONFIG_RELOAD_SUCCESS = SelfMetric(
    f"{SELF}_web_config_last_reload_successful",
    "gauge",
    (),
    "With --web.config.file: 1 if its last change (or a certificate, key or CA file's) was "
    "taken, 0 while a refused change waits to be fixed (the previous web config stays).",
)
RELOAD_TIME = SelfMetric(
    f"{SELF}_config_last_reload_success_timestamp_seconds",
    "gauge",
    (),
    "Unix time of the last successful configuration load.",
)
SELF_METRICS = (
    BUILD_INFO,
    UP,
    SCRAPE_DURATION,
    QUERY_DURATION,
    QUERY_SUCCESS,
    QUERY_ERRORS,
    CONNECT_FAILURES,
    LOGIN_SUCCESS,
    LOGIN_DURATION,
    LOGIN_FAILURES,
    RELOAD_SUCCESS,
    RELOAD_TIME,
    WEB_CONFIG_RELOAD_SUCCESS,
)


def self_families(
    targets: Sequence[TargetScraper],
    results: Sequence[TargetResult],
    reload: ReloadStatus | None = None,
) -> Iterator[Metric]:
    """pg_up, the login checks and the exporter's own health."""
    family = {m.name: m.family() for m in SELF_METRICS}
    family[BUILD_INFO.name].add_metric([__version__, platform.python_version()], 1)
    for r in results:
        family[UP.name].add_metric([r.target.name], 1 if r.up else 0)
        family[SCRAPE_DURATION.name].add_metric([r.target.name], r.duration)
        base = (r.target.name,)
        family[QUERY_DURATION.name].add_rows(
            QUERY_DURATION.labels, [((q.name,), q.duration) for q in r.queries], base
        )
        family[QUERY_SUCCESS.name].add_rows(
            QUERY_SUCCESS.labels, [((q.name,), 0 if q.error else 1) for q in r.queries], base
        )
        if r.login is not None:
            family[LOGIN_SUCCESS.name].add_metric([r.target.name], 1 if r.login.success else 0)
            family[LOGIN_DURATION.name].add_metric([r.target.name], r.login.duration)
    for t in targets:
        base = (t.target.name,)
        family[QUERY_ERRORS.name].add_rows(
            QUERY_ERRORS.labels, sorted(t.query_errors.items()), base
        )
        # Every reason from 0, so that increase() sees the first failure.
        counts = t.connection.connect_failures
        family[CONNECT_FAILURES.name].add_rows(
            CONNECT_FAILURES.labels,
            [((reason,), counts.get(reason, 0)) for reason in REASONS],
            base,
        )
        if t.login_checker is not None:
            for reason, n in t.login_checker.failures.items():
                family[LOGIN_FAILURES.name].add_metric([t.target.name, reason], n)
    if reload is not None:
        family[RELOAD_SUCCESS.name].add_metric([], 1 if reload.success else 0)
        family[RELOAD_TIME.name].add_metric([], reload.last_success_at)
        if reload.web_config_loaded is not None:
            family[WEB_CONFIG_RELOAD_SUCCESS.name].add_metric(
                [], 1 if reload.web_config_loaded else 0
            )
    yield from family.values()
