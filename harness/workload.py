"""Sessions held open in chosen states, for the demo, the tests and the benchmarks.

Each session is a real client connection. Active and lock-waiting sessions are made by sending
a statement without reading its result (libpq's asynchronous send), so no thread per session
is needed and thousands of sessions stay cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.conninfo

STATES = ("idle", "active", "idle in transaction", "idle in transaction (aborted)", "disabled")


@dataclass(frozen=True)
class SessionSpec:
    """What one session looks like on the server."""

    state: str = "idle"
    user: str = "postgres"
    dbname: str = "postgres"
    application_name: str = ""
    host: str | None = None  # None: the cluster's Unix socket


class Workload:
    """Opens sessions against one server and closes them all at the end."""

    def __init__(self, dsn: str) -> None:
        self.base = psycopg.conninfo.conninfo_to_dict(dsn)
        self.sessions: list[psycopg.Connection[Any]] = []

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, spec: SessionSpec, autocommit: bool = True) -> psycopg.Connection[Any]:
        params = {
            **self.base,
            "user": spec.user,
            "dbname": spec.dbname,
            "application_name": spec.application_name,
        }
        if spec.host is not None:
            params["host"] = spec.host
        conn = psycopg.connect(psycopg.conninfo.make_conninfo(**params), autocommit=autocommit)
        self.sessions.append(conn)
        return conn

    def open(self, spec: SessionSpec) -> psycopg.Connection[Any]:
        """A session left in `spec.state`."""
        if spec.state == "idle":
            return self.connect(spec)
        if spec.state == "active":
            conn = self.connect(spec)
            send_without_waiting(conn, "SELECT pg_sleep(86400)")
            return conn
        if spec.state == "idle in transaction":
            conn = self.connect(spec, autocommit=False)
            conn.execute("SELECT 1")
            return conn
        if spec.state == "idle in transaction (aborted)":
            conn = self.connect(spec, autocommit=False)
            with contextlib.suppress(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            return conn
        if spec.state == "disabled":
            # track_activities is superuser-only; the session's state then reads "disabled".
            conn = self.connect(spec)
            conn.execute("SET track_activities = off")
            return conn
        raise ValueError(f"cannot produce state {spec.state!r}")

    def open_many(self, specs: Iterable[SessionSpec]) -> list[psycopg.Connection[Any]]:
        return [self.open(spec) for spec in specs]

    def hold_lock(self, table: str, spec: SessionSpec | None = None) -> psycopg.Connection[Any]:
        """An idle-in-transaction session holding an ACCESS EXCLUSIVE lock on `table`."""
        conn = self.connect(spec or SessionSpec(state="idle in transaction"), autocommit=False)
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE".encode())
        return conn

    def wait_for_lock(self, table: str, spec: SessionSpec | None = None) -> psycopg.Connection[Any]:
        """An active session queued behind the lock on `table` (wait_event_type Lock)."""
        conn = self.connect(spec or SessionSpec(state="active"))
        send_without_waiting(conn, f"SELECT count(*) FROM {table}")
        return conn

    def close(self) -> None:
        for conn in self.sessions:
            close_quietly(conn)
        self.sessions.clear()


def send_without_waiting(conn: psycopg.Connection[Any], sql: str) -> None:
    """Start `sql` on the server and return at once, leaving the session active."""
    conn.pgconn.send_query(sql.encode())
    conn.pgconn.flush()


def close_quietly(conn: psycopg.Connection[Any]) -> None:
    """Close a session whatever it is doing; a busy one is cancelled first."""
    try:
        if conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
            conn.cancel()
        conn.pgconn.finish()
    except Exception:
        pass
    with contextlib.suppress(Exception):
        conn.close()
