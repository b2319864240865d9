"""Samples to monotonic totals: seconds at or above each level, a trailing-window peak, samples
taken and missed. Pure logic (no clock, no I/O): every call is given the monotonic time."""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Reading:
    """What a reader sees at one moment: copies, so a sample recorded meanwhile changes
    nothing here."""

    seconds_at: dict[float, float]
    peak_value: float | None
    peak_ratio: float | None
    taken: int
    missed: dict[str, int]


class PeakWindow:
    """The most of a value over the trailing `window` seconds: one maximum per whole second,
    at most `window` + 1 of them (a bounded ring, whatever the sampling rate)."""

    def __init__(self, window: float) -> None:
        if window <= 0:
            raise ValueError("the peak window must be positive")
        self.window = window
        self._seconds: deque[tuple[int, float]] = deque(maxlen=math.ceil(window) + 1)

    def add(self, now: float, value: float) -> None:
        second = math.floor(now)
        if self._seconds and self._seconds[-1][0] == second:
            if value > self._seconds[-1][1]:
                self._seconds[-1] = (second, value)
            return
        self._seconds.append((second, value))

    def peak(self, now: float) -> float | None:
        """The maximum over the seconds that overlap (now - window, now]; None without one."""
        oldest = math.floor(now - self.window)
        values = [v for s, v in self._seconds if s >= oldest]
        return max(values) if values else None


class Accumulator:
    """One target's samples of (value, limit). A sample stands for the time since the one
    before it, at most `max_gap` seconds (so a sampler that was stopped or missing does not
    credit its whole silence to the first sample after it); that time goes to every level
    the sample's ratio value / limit is at or above. Nothing resets on read: any number of
    Prometheus servers, scraping at any intervals, read the same totals. A lock makes a read
    on another thread (the registry's) see whole samples only."""

    def __init__(self, levels: Sequence[float], window: float, max_gap: float) -> None:
        if max_gap <= 0:
            raise ValueError("max_gap must be positive")
        self.levels = tuple(sorted(set(levels)))
        self.max_gap = max_gap
        self._seconds_at = dict.fromkeys(self.levels, 0.0)
        self._values = PeakWindow(window)
        self._ratios = PeakWindow(window)
        self._last: float | None = None
        self._taken = 0
        self._missed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, now: float, value: float, limit: float | None) -> None:
        """A sample taken at monotonic time `now`; `limit` None or <= 0: no ratio (no level)."""
        with self._lock:
            self._record(now, value, limit)

    def _record(self, now: float, value: float, limit: float | None) -> None:
        credit = 0.0 if self._last is None else min(max(now - self._last, 0.0), self.max_gap)
        self._last = now
        self._taken += 1
        self._values.add(now, value)
        if limit is None or limit <= 0:
            return
        ratio = value / limit
        self._ratios.add(now, ratio)
        for level in self.levels:
            if ratio >= level:
                self._seconds_at[level] += credit

    def missed(self, now: float, reason: str) -> None:
        """A tick with no sample (the connection busy, the statement failed or timed out):
        counted by reason; the time since the last sample goes to the next one, up to
        `max_gap`."""
        with self._lock:
            self._missed[reason] += 1

    def read(self, now: float) -> Reading:
        with self._lock:
            return Reading(
                seconds_at=dict(self._seconds_at),
                peak_value=self._values.peak(now),
                peak_ratio=self._ratios.peak(now),
                taken=self._taken,
                missed=dict(self._missed),
            )
