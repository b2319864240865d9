"""Target runs take turns at running Python: one at a time, the others waiting on the server.

Only one thread runs Python at a time anyway (the GIL), but 32 scrape threads all asking for
the GIL at once is costly: each of them wakes every few milliseconds to ask the holder to drop
it, and every short call that lets go of the GIL (psycopg's send and is_busy, libpq's poll)
hands it to another thread, which the caller then waits to get back. At 1,000 targets that
churn cost about a tenth of a scrape round's CPU (docs/benchmarks.md). A run holds the scrape turn
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
from contextlib import AbstractContextManager


class Turns:
    """One turn, passed between threads; a thread holding it may take it again (a no-op)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder = threading.local()

    def taken(self) -> AbstractContextManager[None]:
        """Hold the turn for the work inside (waiting for it first)."""
        return _Holding(self, True)

    def given_up(self) -> AbstractContextManager[None]:
        """Let another thread have the turn while this one waits (if it holds the turn), and
        take it back after."""
        return _Holding(self, False)

    def _holds(self) -> bool:
        return getattr(self._holder, "held", False)

    def _set(self, held: bool) -> None:
        if held:
            self._lock.acquire()
            self._holder.held = True
        else:
            self._holder.held = False
            self._lock.release()


class _Holding:
    """The turn held (or not) inside, as it was after: a class, not a @contextmanager
    generator, as a target run passes through one for every statement it waits for."""

    __slots__ = ("_changed", "_held", "_turns")

    def __init__(self, turns: Turns, held: bool) -> None:
        self._turns = turns
        self._held = held
        self._changed = False

    def __enter__(self) -> None:
        if self._turns._holds() != self._held:
            self._turns._set(self._held)
            self._changed = True

    def __exit__(self, *exc: object) -> None:
        if self._changed:
            self._turns._set(not self._held)


SCRAPES = Turns()
