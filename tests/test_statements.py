"""exporter.db.statements against real PostgreSQL: the rows, columns and errors a psycopg cursor
would give, the statement prepared once under our name, and a silent server given up on."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

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
def conn(pg_any_major: LocalCluster) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_any_major.dsn(), autocommit=True) as c:
        c.execute("DROP TYPE IF EXISTS pgce_mood; CREATE TYPE pgce_mood AS ENUM ('x', 'y')")
        yield c


def _cursor_answer(conn: psycopg.Connection, sql: str) -> tuple[list[dict], tuple[str, ...]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall(), tuple(c.name for c in cur.description or ())


def test_rows_and_columns_are_a_cursors(conn: psycopg.Connection) -> None:
    expected_rows, expected_columns = _cursor_answer(conn, VALUES_SQL)
    rows, columns = execute(conn, VALUES_SQL.encode(), time.monotonic() + 10)
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
    prepared, _ = execute(conn, VALUES_SQL.encode(), time.monotonic() + 10, b"pgce_t", True)
    again, _ = execute(conn, VALUES_SQL.encode(), time.monotonic() + 10, b"pgce_t")
    assert [r["n"] for r in prepared] == [r["n"] for r in again] == [1, 2, 3]
    names = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
    assert ("pgce_t",) in names


def test_a_statement_without_rows_and_several_statements(conn: psycopg.Connection) -> None:
    assert execute(conn, b"SET application_name = 'x'", time.monotonic() + 10) == ([], ())
    # As a cursor: the first statement's result.
    rows, columns = execute(conn, b"SELECT 1 AS a; SELECT 2 AS b", time.monotonic() + 10)
    assert (rows, columns) == _cursor_answer(conn, "SELECT 1 AS a; SELECT 2 AS b")


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
def test_errors_are_a_cursors(conn: psycopg.Connection, sql: str) -> None:
    conn.execute("SET statement_timeout = '50ms'")
    with pytest.raises(psycopg.Error) as from_cursor:
        _cursor_answer(conn, sql)
    with pytest.raises(psycopg.Error) as from_execute:
        execute(conn, sql.encode(), time.monotonic() + 10)
    assert type(from_execute.value) is type(from_cursor.value)
    assert str(from_execute.value) == str(from_cursor.value)
    assert from_execute.value.sqlstate == from_cursor.value.sqlstate
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # usable still
    assert execute(conn, b"SELECT 7 AS v", time.monotonic() + 10)[0] == [{"v": 7}]


def test_a_missing_prepared_statement_is_postgres_error(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        execute(conn, b"SELECT 1", time.monotonic() + 10, b"pgce_never_prepared")


def test_a_server_that_never_answers_is_given_up_at_the_limit(pg: LocalCluster) -> None:
    """A stopped backend (SIGSTOP) answers nothing: the limit, not a hang. The connection is
    left mid-statement (the exporter discards such a one)."""
    conn = psycopg.connect(pg.dsn(), autocommit=True)
    pid = conn.info.backend_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="did not answer"):
            execute(conn, b"SELECT 1", start + 0.5)
        assert 0.45 < time.monotonic() - start < 3.0
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
    finally:
        os.kill(pid, signal.SIGCONT)
        conn.close()
