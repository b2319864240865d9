"""Fakes for the exporter's own logic above the connection: a server that answers SQL from a
table, and the part of TargetConnection that TargetScraper uses. What the real server does
(timeouts, transactions, prepared statements) is tested against real PostgreSQL and PgBouncer
in tests/; these only stand in where the behaviour under test is the exporter's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from psycopg.pq import TransactionStatus

# What a fake server answers to a statement: (columns, rows), or an exception to raise.
Answer = tuple[tuple[str, ...], list[tuple[Any, ...]]] | BaseException


@dataclass
class FakeServer:
    """Answers statements by their SQL text; counts what it ran."""

    version: int = 160000
    answers: dict[str, Answer] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)

    def run(self, sql: str) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        self.ran.append(sql)
        answer = self.answers[sql]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class FakeConn:
    """The psycopg.AsyncConnection attributes the scraper reads, over a FakeServer."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.info = SimpleNamespace(
            server_version=server.version, transaction_status=TransactionStatus.IDLE
        )
        self.broken = False
        self.closed = False
        self.executed: list[str] = []

    async def execute(self, sql: str, params: Any = None) -> None:
        self.executed.append(sql)

    def fileno(self) -> int:
        raise NotImplementedError


class FakeTransaction:
    def __init__(self, log: list[str]) -> None:
        self._log = log

    async def opening(self, statement_timeout: float | None = None) -> list[str]:
        self._log.append("begin")
        return []

    def closing(self) -> list[str]:
        self._log.append("closing")
        return []

    async def after_query(self) -> None:
        self._log.append("after_query")

    async def finish(self) -> None:
        self._log.append("finish")


class FakeDog:
    fired = False


class FakeTargetConnection:
    """The part of TargetConnection TargetScraper uses, recording what was asked of it."""

    def __init__(self, conn: FakeConn, statement_timeout: float = 5.0) -> None:
        self.conn = conn
        self.statement_timeout = statement_timeout
        self.last_failure = None
        self.calls: list[str] = []
        self.timeouts: list[float] = []
        self.watchdogs: list[float] = []
        # Set: connected. Cleared: still connecting (connection() waits for it).
        self.ready = asyncio.Event()
        self.ready.set()

    @asynccontextmanager
    async def connection(self, timeout: float) -> AsyncIterator[FakeConn]:
        await self.ready.wait()
        yield self.conn

    async def set_statement_timeout(self, conn: FakeConn, seconds: float) -> None:
        self.timeouts.append(seconds)

    async def query(
        self,
        conn: FakeConn,
        sql: str,
        params: Any,
        limit: float,
        before: Any = (),
        after: Any = (),
    ) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        columns, rows = conn.server.run(sql)
        return [dict(zip(columns, row, strict=True)) for row in rows], columns

    async def forget_prepared(self, conn: FakeConn, sql: str, params: Any) -> None:
        pass

    def stop_preparing(self, exc: Exception) -> bool:
        return False

    def several_statements(self, sql: str, exc: Exception) -> bool:
        return False

    @staticmethod
    def stale_plan(exc: Exception) -> bool:
        return False

    def transaction(self, conn: FakeConn) -> FakeTransaction:
        self.calls.append("transaction")
        return FakeTransaction(self.calls)

    @contextmanager
    def watchdog(self, conn: FakeConn, seconds: float) -> Iterator[FakeDog]:
        self.watchdogs.append(seconds)
        yield FakeDog()

    async def close(self, timeout: float = 5.0) -> None:
        pass
