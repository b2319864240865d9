"""exporter.db.statements against real PostgreSQL: the rows, columns and errors a psycopg cursor
would give, the statement prepared once under our name, and a silent server given up on."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest
from psycopg.rows import dict_row

from exporter.db.statements import execute
from harness.localpg import LocalCluster

# Every kind of value a collector query may return: numbers of each type, text, NULL, a
# boolean, an address, a time, an array, a type psycopg has no loader for, a NaN.
VALUES_SQL = """
SELECT 1::int2 AS small, 2::int4 AS int, 3::int8 AS big, 1.5::numeric AS num,
       2.5::float4 AS real, 'NaN'::float8 AS nan, 'a"b\\c'::text AS txt, NULL::text AS nothing,
       true AS yes, '10.1.2.3'::inet AS addr, '2024-02-03 04:05:06+00'::timestamptz AS at,
       ARRAY[1, 2] AS arr, 'x'::pgce_mood AS mood, g AS n
FROM generate_series(1, 3) AS g
"""


@pytest.fixture
def dsn(pg_any_major: LocalCluster) -> str:
    with psycopg.connect(pg_any_major.dsn(), autocommit=True) as c:
        c.execute("DROP TYPE IF EXISTS pgce_mood; CREATE TYPE pgce_mood AS ENUM ('x', 'y')")
    return pg_any_major.dsn()


@asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[psycopg.AsyncConnection]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


async def _cursor_answer(
    conn: psycopg.AsyncConnection, sql: str
) -> tuple[list[dict], tuple[str, ...]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql)  # type: ignore[arg-type]
        return await cur.fetchall(), tuple(c.name for c in cur.description or ())


async def test_rows_and_columns_are_a_cursors(dsn: str) -> None:
    async with connected(dsn) as conn:
        await _rows_and_columns_are_a_cursors(conn)


async def _rows_and_columns_are_a_cursors(conn: psycopg.AsyncConnection) -> None:
    expected_rows, expected_columns = await _cursor_answer(conn, VALUES_SQL)
    rows, columns = await execute(conn, VALUES_SQL.encode(), time.monotonic() + 10)
    assert columns == expected_columns
    assert len(rows) == 3
    for got, want in zip(rows, expected_rows, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            if key == "nan":
                assert got[key] != got[key] and type(got[key]) is type(want[key])
            else:
                assert (got[key], type(got[key])) == (want[key], type(want[key])), key
    # Prepared: the same rows, and the statement stays on the server under our name.
    limit = time.monotonic() + 10
    prepared, _ = await execute(conn, VALUES_SQL.encode(), limit, b"pgce_t", True)
    again, _ = await execute(conn, VALUES_SQL.encode(), limit, b"pgce_t")
    assert [r["n"] for r in prepared] == [r["n"] for r in again] == [1, 2, 3]
    cur = await conn.execute("SELECT name FROM pg_prepared_statements")
    assert ("pgce_t",) in await cur.fetchall()


async def test_a_statement_without_rows_and_several_statements(dsn: str) -> None:
    async with connected(dsn) as conn:
        limit = time.monotonic() + 10
        assert await execute(conn, b"SET application_name = 'x'", limit) == ([], ())
        # As a cursor: the first statement's result.
        rows, columns = await execute(conn, b"SELECT 1 AS a; SELECT 2 AS b", limit)
        assert (rows, columns) == await _cursor_answer(conn, "SELECT 1 AS a; SELECT 2 AS b")


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC 1",  # syntax
        "SELECT 1/0",  # division by zero
        "SELECT * FROM pgce_no_such_table",
        "SELECT pg_sleep(2)",  # statement_timeout: a QueryCanceled
        "SELECT 1; SELECT 1/0",  # the second statement's error
    ],
)
async def test_errors_are_a_cursors(dsn: str, sql: str) -> None:
    async with connected(dsn) as conn:
        await conn.execute("SET statement_timeout = '50ms'")
        with pytest.raises(psycopg.Error) as from_cursor:
            await _cursor_answer(conn, sql)
        with pytest.raises(psycopg.Error) as from_execute:
            await execute(conn, sql.encode(), time.monotonic() + 10)
        assert type(from_execute.value) is type(from_cursor.value)
        assert str(from_execute.value) == str(from_cursor.value)
        assert from_execute.value.sqlstate == from_cursor.value.sqlstate
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # usable still
        assert (await execute(conn, b"SELECT 7 AS v", time.monotonic() + 10))[0] == [{"v": 7}]


async def test_a_missing_prepared_statement_is_postgres_error(dsn: str) -> None:
    async with connected(dsn) as conn:
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            await execute(conn, b"SELECT 1", time.monotonic() + 10, b"pgce_never_prepared")


async def test_a_server_that_never_answers_is_given_up_at_the_limit(pg: LocalCluster) -> None:
    """A stopped backend (SIGSTOP) answers nothing: the limit, not a hang. The connection,
    left mid-statement, is closed (it can serve no one again), and the loop was free
    meanwhile."""
    async with connected(pg.dsn()) as conn:
        pid = conn.info.backend_pid
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            ticking = asyncio.create_task(tick())
            with pytest.raises(psycopg.OperationalError, match="did not answer"):
                await execute(conn, b"SELECT 1", start + 0.5)
            ticking.cancel()
            assert 0.45 < time.monotonic() - start < 3.0
            assert conn.closed
            assert ticks >= 5  # the wait held no thread: the loop ran other tasks
        finally:
            os.kill(pid, signal.SIGCONT)
