"""TargetConnection on psycopg_pool's AsyncConnectionPool, against real servers: one session
however many users at once, a lost one replaced, every failed attempt counted by reason (the
pool's `_connect`, which exporter/db/connection.py wraps, is held here to what pyproject.toml
pins) and attempts spaced while they fail, the sampler's never-waiting borrow."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from exporter.config.model import Target
from exporter.db.connection import APPLICATION_NAME, Busy, NotConnected, TargetConnection
from harness.localpg import LocalCluster


def _connection(dsn: str, connect_timeout: float = 2.0) -> TargetConnection:
    return TargetConnection(
        Target("t", dsn, {}, connect_timeout), statement_timeout=5.0, lock_timeout=1.0
    )


def _sessions(pg: LocalCluster) -> list[int]:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,)
        ).fetchall()
    return [r[0] for r in rows]


async def test_one_session_for_many_users_and_a_lost_one_replaced(pg: LocalCluster) -> None:
    connection = _connection(pg.dsn())
    await connection.open()
    try:
        seen: set[int] = set()

        async def use() -> None:
            async with connection.connection(timeout=10) as conn:
                cur = await conn.execute("SELECT pg_backend_pid(), pg_sleep(0.01)")
                row = await cur.fetchone()
                assert row is not None
                seen.add(row[0])

        await asyncio.gather(*(use() for _ in range(20)))
        assert len(seen) == 1
        assert await asyncio.to_thread(_sessions, pg) == list(seen)
        (old,) = seen
        await asyncio.to_thread(_terminate, pg, old)
        seen.clear()
        deadline = time.monotonic() + 20
        while not seen or seen == {old}:
            assert time.monotonic() < deadline, "the lost session was not replaced"
            seen.clear()
            try:
                await use()
            except psycopg.OperationalError:
                seen.add(old)
            await asyncio.sleep(0.05)
        (new,) = seen
        assert new != old
        assert await asyncio.to_thread(_sessions, pg) == [new]
    finally:
        await connection.close()
    assert await asyncio.to_thread(_sessions, pg) == []


def _terminate(pg: LocalCluster, pid: int) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_the_samplers_borrow_never_waits(pg: LocalCluster) -> None:
    connection = _connection(pg.dsn())
    with pytest.raises(NotConnected):  # not opened: no attempt made for it
        async with connection.idle_connection():
            pass
    await connection.open()
    try:
        async with connection.connection(timeout=10):
            started = time.monotonic()
            with pytest.raises(Busy):
                async with connection.idle_connection():
                    pass
            assert time.monotonic() - started < 0.1
        async with connection.idle_connection() as conn:
            assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
        # A terminated session: the borrow says so and starts no attempt (between scrapes the
        # exporter does not race the server's clients for the slot it freed); a scrape's use
        # replaces it.
        (old,) = await asyncio.to_thread(_sessions, pg)
        await asyncio.to_thread(_terminate, pg, old)
        deadline = time.monotonic() + 10
        while old in await asyncio.to_thread(_sessions, pg):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        for _ in range(5):
            with pytest.raises(NotConnected):
                async with connection.idle_connection():
                    pass
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_sessions, pg) == []
        async with connection.connection(timeout=10) as conn:
            assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
        assert len(await asyncio.to_thread(_sessions, pg)) == 1
    finally:
        await connection.close()


async def test_a_session_lost_under_a_samplers_statement_waits_for_a_scrape(
    pg: LocalCluster,
) -> None:
    """The server ends the session while a sampler's statement runs on it: the pool learns of
    the loss at once, and still opens no session until a scrape needs one (between scrapes
    the freed slot is left to the server's clients)."""
    connection = _connection(pg.dsn())
    await connection.open()
    try:
        async with connection.connection(timeout=10):
            pass
        (old,) = await asyncio.to_thread(_sessions, pg)
        with pytest.raises(psycopg.OperationalError):
            async with connection.idle_connection() as conn:
                sleeping = asyncio.ensure_future(conn.execute("SELECT pg_sleep(5)"))
                deadline = time.monotonic() + 10
                while not await asyncio.to_thread(_sleeping, pg, old):
                    assert time.monotonic() < deadline, "the statement never ran"
                    await asyncio.sleep(0.02)
                await asyncio.to_thread(_terminate, pg, old)
                await sleeping
        deadline = time.monotonic() + 10
        while old in await asyncio.to_thread(_sessions, pg):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        for _ in range(15):
            await asyncio.sleep(0.1)
            assert await asyncio.to_thread(_sessions, pg) == [], "replaced without a scrape"
        async with connection.connection(timeout=10) as conn:
            assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
        assert len(await asyncio.to_thread(_sessions, pg)) == 1
    finally:
        await connection.close()
        # Had it failed mid-way, a sleeping session would be counted by the next test on
        # this shared server.
        for pid in await asyncio.to_thread(_sessions, pg):
            await asyncio.to_thread(_terminate, pg, pid)


def _sleeping(pg: LocalCluster, pid: int) -> bool:
    """Whether backend `pid` is running its pg_sleep now."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT state = 'active' AND query LIKE '%%pg_sleep%%' FROM pg_stat_activity"
            " WHERE pid = %s",
            (pid,),
        ).fetchone()
    return bool(row and row[0])


class _Refuser:
    """A TCP port that accepts each connection and closes it at once, noting when: every
    connect attempt made to it, as the server sees them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.attempts: list[float] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.attempts.append(time.monotonic())
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def refuser() -> Iterator[_Refuser]:
    server = _Refuser()
    try:
        yield server
    finally:
        server.close()


async def test_failed_attempts_are_counted_and_spaced(refuser: _Refuser) -> None:
    """Asked for its connection four times a second for 18 s (past the pool's own retries,
    which end after 15 s and start again at the next use), the exporter tries at most after 1,
    2, 4, 8, then every 10 s: a full server is not sent a backend to refuse any more often."""
    connection = _connection(f"host=127.0.0.1 port={refuser.port} user=x dbname=x")
    await connection.open()
    try:
        end = time.monotonic() + 18
        while time.monotonic() < end:
            with pytest.raises(NotConnected):
                async with connection.connection(timeout=0.2):
                    pass
            await asyncio.sleep(0.05)
    finally:
        # Its next attempt waits out a backoff now: a close does not.
        started = time.monotonic()
        await connection.close()
        closing = time.monotonic() - started
    assert closing < 1.0, closing
    attempts = refuser.attempts
    assert 4 <= len(attempts) <= 6, attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    for i, gap in enumerate(gaps):
        assert gap >= 0.85 * min(10.0, 2.0**i), (i, gaps)
    # Each attempt counted once, under its reason, and the last one remembered.
    assert sum(connection.connect_failures.values()) == len(attempts)
    assert connection.last_failure is not None
    assert connection.connect_failures[connection.last_failure.reason] == len(attempts)
