"""Target runs take turns at running Python: one at a time, the others waiting on the server.

Only one thread runs Python at a time anyway (the GIL), but 32 scrape threads all asking for
the GIL at once is costly: each of them wakes every few milliseconds to ask the holder to drop
it, and every short call that lets go of the GIL (psycopg's send and is_busy, libpq's poll)
hands it to another thread, which the caller then waits to get back. At 1,000 targets that
churn cost a tenth of a scrape round's CPU (docs/benchmarks.md). A run holds the scrape turn
while it works on its results and gives it up while it waits for the server (statements.py),
so the threads that have work queue on one plain lock, and the GIL, asked for by one scrape
thread at a time, changes hands only when the work does.

The turn is given up around every wait of a run, so a slow or silent server still delays no
other target. A run takes it only once it holds its connection, and waits for nothing else
while holding it: every lock a waiting run holds (its target's, its connection's) is one no
holder of the turn asks for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """One turn, passed between threads; a thread holding it may take it again (a no-op)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder = threading.local()

    @contextmanager
    def taken(self) -> Iterator[None]:
        """Hold the turn for the work inside (waiting for it first)."""
        if getattr(self._holder, "held", False):
            yield
            return
        self._lock.acquire()
        self._holder.held = True
        try:
            yield
        finally:
            self._holder.held = False
            self._lock.release()

    @contextmanager
    def given_up(self) -> Iterator[None]:
        """Let another thread have the turn while this one waits (if it holds the turn), and
        take it back after."""
        if not getattr(self._holder, "held", False):
            yield
            return
        self._holder.held = False
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._holder.held = True


SCRAPES = Turns()
