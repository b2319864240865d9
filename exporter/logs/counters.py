"""Monotonic counts of the events, for any number of Prometheus servers to read: nothing is
reset or removed on read, and the label sets are bounded so that they cannot grow without
limit however many names clients send.

The bound is the other breakdowns' (`max_series: 50`), applied as counters allow: the first
`max_series` (user, database, client host) label sets seen keep a series of their own for the
exporter's life, and later ones are counted in `other` (ranking them again at each read, as a
gauge's breakdown does, would move counts between series and break their monotony).
"""

from __future__ import annotations

from bisect import bisect_left

from exporter.logs.classify import Failure, SetupTime

OTHER = "other"
MAX_SERIES = 50  # the built-in breakdowns' max_series (exporter/queries/connections.yaml)

# Connection setup seconds: from a local socket's ~1 ms to an authentication that waits on
# LDAP, or a server so busy that forking takes a second.
SETUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

LabelSet = tuple[str, str, str]


class FailureCounts:
    """Failed attempts by (reason, user, database, host), past `max_series` folded."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self.max_series = max_series
        self._admitted: set[LabelSet] = set()
        self.counts: dict[tuple[str, str, str, str], int] = {}

    def add(self, failure: Failure) -> None:
        labels = (failure.user, failure.database, failure.host)
        if labels not in self._admitted:
            if len(self._admitted) < self.max_series:
                self._admitted.add(labels)
            else:
                labels = (OTHER, OTHER, OTHER)
        key = (failure.reason, *labels)
        self.counts[key] = self.counts.get(key, 0) + 1


class Histogram:
    """Cumulative at read time; kept as per-bucket counts."""

    def __init__(self, buckets: tuple[float, ...] = SETUP_BUCKETS) -> None:
        self.buckets = buckets
        self.per_bucket = [0] * (len(buckets) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.per_bucket[bisect_left(self.buckets, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        per_bucket = self.per_bucket.copy()
        for bound, count in zip((*self.buckets, float("inf")), per_bucket, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class SetupTimes:
    def __init__(self) -> None:
        self.by_phase: dict[str, Histogram] = {}

    def add(self, setup: SetupTime) -> None:
        histogram = self.by_phase.get(setup.phase)
        if histogram is None:
            histogram = self.by_phase[setup.phase] = Histogram()
        histogram.observe(setup.seconds)
