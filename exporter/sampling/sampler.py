"""`TargetSampler`: one target's sampling, as the core drives it (which statements to run,
what their rows were, or why there were none), and its totals as metric families."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporter.config.model import SamplerSettings
from exporter.sampling.accumulator import Accumulator
from exporter.sampling.statements import (
    PGBOUNCER_LIMIT,
    PGBOUNCER_LIMIT_EVERY,
    PGBOUNCER_SAMPLE,
    POSTGRES_SAMPLE,
    Rows,
    SampleError,
    read_max_client_conn,
    read_pgbouncer,
    read_postgres,
)

SamplerKind = Literal["postgres", "pgbouncer"]
# Why a tick took no sample: the connection was held (a scrape), the statement failed or
# timed out, or the target had no connection.
MissReason = Literal["busy", "error", "timeout", "down"]
MISS_REASONS: tuple[MissReason, ...] = ("busy", "error", "timeout", "down")


@dataclass(frozen=True)
class SamplerMetric:
    """A family this module yields, for the README's table (tests hold them together)."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


POSTGRES_METRICS = (
    SamplerMetric(
        "pg_connections_used_peak",
        "gauge",
        ("target",),
        "Most slots in use (the rule of pg_connections_used) in any sample of the last "
        "sampler.window (5 minutes), sampled every sampler.interval between scrapes.",
    ),
    SamplerMetric(
        "pg_connections_utilization_peak_ratio",
        "gauge",
        ("target",),
        "Highest pg_connections_utilization_ratio in any sample of the last sampler.window.",
    ),
    SamplerMetric(
        "pg_connections_saturation_seconds_total",
        "counter",
        ("target", "level"),
        "Seconds sampled at or above each utilization level (sampler.levels, and 1: "
        "exhaustion, ordinary roles refused).",
    ),
)
PGBOUNCER_METRICS = (
    SamplerMetric(
        "pgbouncer_clients_waiting_peak",
        "gauge",
        ("target",),
        "Most clients waiting for a server connection (cl_waiting over every pool) in any "
        "sample of the last sampler.window.",
    ),
    SamplerMetric(
        "pgbouncer_clients_waiting_seconds_total",
        "counter",
        ("target",),
        "Seconds sampled with at least one client waiting for a server connection.",
    ),
    SamplerMetric(
        "pgbouncer_client_connections_peak",
        "gauge",
        ("target",),
        "Most client connections (used_clients) in any sample of the last sampler.window.",
    ),
    SamplerMetric(
        "pgbouncer_client_connections_saturation_seconds_total",
        "counter",
        ("target", "level"),
        "Seconds sampled with client connections / max_client_conn at or above each level "
        "(sampler.pgbouncer_levels, and 1: new clients refused).",
    ),
)
SELF_METRICS = (
    SamplerMetric(
        "pg_connections_exporter_samples_total",
        "counter",
        ("target",),
        "Samples taken between scrapes.",
    ),
    SamplerMetric(
        "pg_connections_exporter_samples_missed_total",
        "counter",
        ("target", "reason"),
        "Sampler ticks without a sample: busy (a scrape held the connection), error, timeout, "
        "down (no connection).",
    ),
)
SAMPLER_METRICS = (*POSTGRES_METRICS, *PGBOUNCER_METRICS, *SELF_METRICS)


def effective_interval(settings: SamplerSettings, targets: int, *, probe: bool = False) -> float:
    """A target's interval with `targets` sampled in all: its configured one, stretched evenly
    for every target once they would take more than `max_samples_per_second` together."""
    own = settings.probe_interval if probe else settings.interval
    return max(own, targets / settings.max_samples_per_second)


def _level(level: float) -> str:
    return f"{level:g}"


class TargetSampler:
    """Per tick, the core calls `statements(now)`; if the target's connection is free it runs
    them in order (autocommit, the target's statement timeout) and calls `record(now,
    results)`, one row list per statement; otherwise `missed(now, reason)`. `collect()` reads
    copies, so it may run on any thread while ticks go on."""

    def __init__(
        self,
        kind: SamplerKind,
        labels: Mapping[str, str],
        settings: SamplerSettings,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.label_names = tuple(labels)
        self.label_values = tuple(labels.values())
        self.interval = settings.interval if interval is None else interval
        self.clock = clock
        levels = settings.levels if kind == "postgres" else settings.pgbouncer_levels
        # A sample stands for the time since the last one, at most two intervals: one tick
        # missed for a scrape is still covered, a longer silence is not guessed at.
        gap = 2 * self.interval
        self.slots = Accumulator([*levels, 1.0], settings.window, gap)
        self.waiting = Accumulator([1.0], settings.window, gap)
        self._max_client_conn: int | None = None
        self._limit_read_at: float | None = None

    def retime(self, interval: float) -> None:
        """A new interval (targets came or went): a sample still stands for at most two."""
        self.interval = interval
        self.slots.max_gap = self.waiting.max_gap = 2 * interval

    def statements(self, now: float) -> tuple[str, ...]:
        """What to run this tick, in order, on the held connection."""
        if self.kind == "postgres":
            return (POSTGRES_SAMPLE,)
        due = self._limit_read_at is None or now - self._limit_read_at >= PGBOUNCER_LIMIT_EVERY
        return (*PGBOUNCER_SAMPLE, PGBOUNCER_LIMIT) if due else PGBOUNCER_SAMPLE

    def record(self, now: float, results: Sequence[Rows]) -> None:
        """The rows of `statements(now)`, in order. Rows that do not read as a sample count
        as a missed tick (`error`) rather than raising into the core's loop."""
        try:
            if self.kind == "postgres":
                sample = read_postgres(results[0])
                self.slots.record(now, sample.used, sample.slots)
                return
            bouncer = read_pgbouncer(results[0], results[1])
            if len(results) > 2:
                self._max_client_conn = read_max_client_conn(results[2])
                self._limit_read_at = now
        except (SampleError, IndexError):
            self.missed(now, "error")
            return
        self.slots.record(now, bouncer.clients, self._max_client_conn)
        self.waiting.record(now, bouncer.waiting, 1)

    def missed(self, now: float, reason: MissReason) -> None:
        self.slots.missed(now, reason)

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        slots = self.slots.read(now)
        names, values = self.label_names, self.label_values
        if self.kind == "postgres":
            used, ratio, seconds = POSTGRES_METRICS
            peaks = ((used, slots.peak_value), (ratio, slots.peak_ratio))
        else:
            waiting = self.waiting.read(now)
            wait_peak, wait_seconds, clients, seconds = PGBOUNCER_METRICS
            peaks = ((wait_peak, waiting.peak_value), (clients, slots.peak_value))
            family = CounterMetricFamily(wait_seconds.name, wait_seconds.help, labels=names)
            family.add_metric(values, waiting.seconds_at.get(1.0, 0.0))
            yield family
        for metric, value in peaks:
            gauge = GaugeMetricFamily(metric.name, metric.help, labels=names)
            if value is not None:
                gauge.add_metric(values, value)
            yield gauge
        counter = CounterMetricFamily(seconds.name, seconds.help, labels=(*names, "level"))
        for level, total in slots.seconds_at.items():
            counter.add_metric((*values, _level(level)), total)
        yield counter
        taken, missed = SELF_METRICS
        family = CounterMetricFamily(taken.name, taken.help, labels=names)
        family.add_metric(values, slots.taken)
        yield family
        family = CounterMetricFamily(missed.name, missed.help, labels=(*names, "reason"))
        for reason in MISS_REASONS:
            family.add_metric((*values, reason), slots.missed.get(reason, 0))
        yield family
