"""The target kinds (exporter.kinds): what each one says differs, and that the connection and
the config act on it. No server: a fake connection stands in where the behaviour is the kind's."""

from __future__ import annotations

import socket
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg
import pytest

from exporter.config.errors import ConfigError
from exporter.config.model import QuerySpec, Target, TargetSpec, builtin_queries
from exporter.db.connection import TargetConnection
from exporter.kinds import KINDS, PGBOUNCER, POSTGRES, KindName, kind_of
from exporter.kinds.pgbouncer import PgBouncerKind
from tests.unit.target_fakes import FakeConn, FakeServer


def test_every_kind_the_config_accepts_has_an_object_and_no_other() -> None:
    assert set(KINDS) == set(typing.get_args(KindName))
    for name in typing.get_args(KindName):
        assert kind_of(name).name == name
    # What the model accepts is the registry: a target's kind and a query's target_kind.
    for model, field in ((TargetSpec, "kind"), (QuerySpec, "target_kind")):
        assert typing.get_args(model.model_fields[field].annotation) == tuple(KINDS)


def test_every_built_in_query_file_belongs_to_one_kind_and_its_queries_to_that_kind() -> None:
    on_disk = {
        p.name for p in resources.files("exporter.queries").iterdir() if p.name.endswith(".yaml")
    }
    claimed = [name for kind in KINDS.values() for name in kind.query_files]
    assert sorted(claimed) == sorted(on_disk)
    queries = builtin_queries()
    for kind in KINDS.values():
        assert [q for q in queries if q.target_kind == kind.name], kind.name
    assert all(q.target_kind in KINDS for q in queries)


def test_a_query_file_named_by_the_wrong_kind_is_a_load_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(PgBouncerKind, "query_files", ("pgbouncer.yaml", "sessions.yaml"))
    with pytest.raises(ConfigError) as err:
        builtin_queries()
    assert (
        "built-in sessions.yaml: queries[0].target_kind: postgres, in a file of kind pgbouncer"
        in (err.value.problems)
    )


@pytest.mark.parametrize(
    ("kind", "version", "shown"),
    [
        (PGBOUNCER, 11800, "1.18.0"),  # psycopg's reading of PgBouncer's "1.18.0"
        (PGBOUNCER, 12101, "1.21.1"),
        (PGBOUNCER, 12400, "1.24.0"),
        (POSTGRES, 160002, "16.2"),
        (POSTGRES, 120000, "12.0"),
        (POSTGRES, 90624, "9.6.24"),
    ],
)
def test_version_shown_as_the_server_writes_it(kind, version: int, shown: str) -> None:
    assert kind.format_version(version) == shown


def test_pgbouncer_dsn_goes_to_the_admin_console() -> None:
    problems: list[str] = []
    conninfo = PGBOUNCER.resolve_conninfo("host=h port=6432", "f: targets[0].dsn", problems)
    assert psycopg.conninfo.conninfo_to_dict(conninfo)["dbname"] == "pgbouncer"
    assert PGBOUNCER.resolve_conninfo("host=h dbname=pgbouncer", "w", problems) == (
        "host=h dbname=pgbouncer"
    )
    assert problems == []
    PGBOUNCER.resolve_conninfo("host=h dbname=app", "f: targets[0].dsn", problems)
    assert problems == [
        "f: targets[0].dsn: a pgbouncer target connects to the admin console: dbname must be "
        "pgbouncer, not 'app'"
    ]
    assert POSTGRES.resolve_conninfo("host=h dbname=app", "w", problems) == "host=h dbname=app"
    assert len(problems) == 1


def _connection(kind: str, prepared_statements: bool = True) -> TargetConnection:
    """Not opened: nothing connects."""
    target = Target("t", "host=nowhere", {}, 1.0, kind, None, prepared_statements)  # type: ignore[arg-type]
    return TargetConnection(target, statement_timeout=5.0, lock_timeout=1.0)


def _kwargs(connection: TargetConnection) -> dict[str, Any]:
    """The keyword arguments its pool connects with."""
    kwargs = connection._pool.kwargs
    assert isinstance(kwargs, dict)
    return kwargs


def test_connect_options_by_kind() -> None:
    bouncer = _kwargs(_connection("pgbouncer"))
    assert bouncer["cursor_factory"] is psycopg.AsyncClientCursor
    assert bouncer["prepare_threshold"] is None
    postgres = _kwargs(_connection("postgres"))
    assert "cursor_factory" not in postgres
    assert postgres["prepare_threshold"] > 10**9  # never by count, only when asked
    for kwargs in (bouncer, postgres):
        assert kwargs["autocommit"] is True
        assert kwargs["application_name"] == "pg-connections-exporter"


def test_only_postgres_prepares_and_only_when_the_target_allows() -> None:
    assert _connection("postgres").prepared("SELECT 1")
    assert not _connection("postgres").prepared("SELECT 1; SELECT 2")
    assert not _connection("postgres", prepared_statements=False).prepared("SELECT 1")
    assert not _connection("pgbouncer").prepared("SHOW POOLS")


class _ControlRecorded(TargetConnection):
    """A real TargetConnection (never opened) whose own statements go to the fake's record."""

    async def control(self, conn: Any, sql: str) -> None:
        conn.executed.append(sql)


def _recording(kind: str) -> TargetConnection:
    target = Target("t", "host=nowhere", {}, 1.0, kind, None, True)  # type: ignore[arg-type]
    return _ControlRecorded(target, statement_timeout=5.0, lock_timeout=1.0)


async def test_session_set_up_and_statement_timeout_only_where_the_kind_has_one() -> None:
    postgres, conn = _recording("postgres"), FakeConn(FakeServer())
    await postgres._configure(conn)  # type: ignore[arg-type]
    assert len(conn.executed) == 1 and "lock_timeout" in conn.executed[0]
    await postgres.set_statement_timeout(conn, 5.0)  # type: ignore[arg-type]
    assert len(conn.executed) == 1  # unchanged since the session was set up: no round trip
    await postgres.set_statement_timeout(conn, 2.0)  # type: ignore[arg-type]
    await postgres.set_statement_timeout(conn, 2.0)  # type: ignore[arg-type]
    assert len(conn.executed) == 2 and "statement_timeout" in conn.executed[1]
    # A new session starts from the setting it was given, whatever the last one had.
    conn = FakeConn(FakeServer())
    await postgres._configure(conn)  # type: ignore[arg-type]
    await postgres.set_statement_timeout(conn, 2.0)  # type: ignore[arg-type]
    assert len(conn.executed) == 2

    bouncer, conn = _recording("pgbouncer"), FakeConn(FakeServer())
    await bouncer._configure(conn)  # type: ignore[arg-type]
    await bouncer.set_statement_timeout(conn, 2.0)  # type: ignore[arg-type]
    assert conn.executed == []  # the console refuses SET


class _RecordingConnection(TargetConnection):
    """A real TargetConnection (never opened) that records the watchdogs it arms."""

    def __init__(self, kind: str) -> None:
        target = Target("t", "host=nowhere", {}, 1.0, kind, None, True)
        super().__init__(target, statement_timeout=3.0, lock_timeout=1.0)
        self.watchdogs: list[float] = []

    @contextmanager
    def watchdog(self, conn: Any, seconds: float) -> Iterator[Any]:
        self.watchdogs.append(seconds)
        yield None


async def test_pgbouncer_liveness_check_is_a_bounded_show_version() -> None:
    conn = FakeConn(FakeServer())
    connection = _RecordingConnection("pgbouncer")
    await connection._check(conn)  # type: ignore[arg-type]  # FakeConn stands in for a psycopg one
    assert conn.executed == ["SHOW VERSION"]
    assert connection.watchdogs == [3.0]


class _SocketConn(FakeConn):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__(FakeServer())
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()


async def test_postgres_liveness_check_reads_only_when_the_server_said_something() -> None:
    ours, server = socket.socketpair()
    with ours, server:
        conn = _SocketConn(ours)
        connection = _RecordingConnection("postgres")
        await connection._check(conn)  # type: ignore[arg-type]  # FakeConn stands in for psycopg's
        assert conn.executed == []  # nothing to read: no round trip
        server.send(b"E")  # e.g. the server's goodbye before it closes the session
        await connection._check(conn)  # type: ignore[arg-type]
        assert conn.executed == [""]
        assert connection.watchdogs == []
        conn.broken = True
        with pytest.raises(psycopg.OperationalError):
            await connection._check(conn)  # type: ignore[arg-type]


def test_what_each_kind_offers() -> None:
    assert POSTGRES.policy.offers_sessions and not PGBOUNCER.policy.offers_sessions
    assert PGBOUNCER.policy.tolerates_missing_columns
    assert not POSTGRES.policy.tolerates_missing_columns
    assert POSTGRES.version_gate(120000) == "PostgreSQL 12+"
    assert PGBOUNCER.version_gate(11800) == ""
