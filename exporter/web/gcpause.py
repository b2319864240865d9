"""The cyclic garbage collector, paused while a /metrics answer is being made.

An answer (a scrape's metric families, the encoding, gzip) makes hundreds of thousands of
container objects at 1,000 targets that live until the body is written, and no reference
cycles (tests/test_gcpause.py). With the collector on, those objects set off hundreds of
collections a round that free nothing (docs/benchmarks.md, "The hand-built parts on the new
core"). Paused, reference counting frees everything as before. The collector runs again as soon
as no answer is being made, and overlapping answers never keep it off longer than MAX_PAUSE,
so that cycles made meanwhile by anything else wait at most that long."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MAX_PAUSE = 60.0


class CollectorPause:
    """Counts the answers in progress; the collector is off while there is one, at most
    `max_pause` seconds in a row, and only if it was on (someone who turned it off keeps it
    off)."""

    def __init__(self, max_pause: float = MAX_PAUSE) -> None:
        self._max_pause = max_pause
        self._lock = threading.Lock()
        self._active = 0
        self._since = 0.0
        self._paused = False

    @contextmanager
    def during(self) -> Iterator[None]:
        self._enter()
        try:
            yield
        finally:
            self._exit()

    def _enter(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._active == 0:
                self._since = now
            self._active += 1
            overdue = now - self._since >= self._max_pause
            if self._paused and overdue:
                gc.enable()  # answers have overlapped for too long
                self._paused = False
            elif not self._paused and not overdue and gc.isenabled():
                gc.disable()
                self._paused = True

    def _exit(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._paused:
                gc.enable()
                self._paused = False


ANSWERS = CollectorPause()
