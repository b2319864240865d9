"""The log sources against real programs: the real logging collector rotating by size under a
steady rate of refusals (nothing lost, nothing counted twice), the remote function on a real
server (reads the log, refuses other files), and a real PgBouncer's refused clients."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from exporter.logs.classify import Failure
from exporter.logs.filetail import FileTail
from exporter.logs.remote import LISTING_SQL, READ_SQL, RemoteTail
from exporter.logs.stream import DEFAULT_PATTERNS, LogStream
from harness.localpg import LocalCluster, _service_user
from tests.conftest import new_cluster, require_program
from tests.helpers import refuse_at_once, wait_until
from tests.pgbouncer_server import PgBouncer

SQL = Path(__file__).resolve().parents[1] / "exporter" / "logs" / "sql" / "pgce_read_log.sql"
FULL = {"max_connections": 5, "superuser_reserved_connections": 0}


def _refuse(cluster: LocalCluster, times: int, user: str = "postgres") -> None:
    for _ in range(times):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.dsn(user=user), connect_timeout=5).close()


def _failures(stream: LogStream) -> Counter[str]:
    out: Counter[str] = Counter()
    for (reason, *_labels), count in stream.failures.counts.items():
        out[reason] += count
    return out


def test_rotation_by_the_logging_collector_loses_and_duplicates_nothing() -> None:
    cluster = new_cluster(
        "15",
        logging_collector="on",
        log_destination="csvlog",
        log_directory="log",
        log_rotation_size="1kB",  # a new file every few refusals
        log_filename="postgresql-%H%M%S.log",
        **FULL,
    )
    try:
        tail = FileTail(cluster.data / "log", "*.csv")
        stream = LogStream({"target": "t"}, "csvlog", tail.counts)
        stream.feed(tail.read_available(1 << 20))
        held = [psycopg.connect(cluster.dsn()) for _ in range(5)]
        sent = 0
        for _ in range(30):  # ~3 s at a steady rate, read as it goes
            _refuse(cluster, 2)
            sent += 2
            stream.feed(tail.read_available(1 << 16))
            time.sleep(0.1)
        wait_until(
            lambda: (
                stream.feed(tail.read_available(1 << 20)) is not None
                and _failures(stream)["too_many_clients"] >= sent
            ),
            15,
            what=f"{sent} refusals counted",
        )
        time.sleep(0.5)
        stream.feed(tail.read_available(1 << 20))
        assert _failures(stream) == {"too_many_clients": sent}
        assert tail.counts.rotations.get("next_file", 0) >= 3
        assert len(list((cluster.data / "log").glob("*.csv"))) >= 3
        for conn in held:
            conn.close()
    finally:
        cluster.stop()


@pytest.mark.parametrize("major", ["15", "18"])
def test_a_storm_of_concurrent_refusals_is_counted_exactly(major: str) -> None:
    """40 clients at once against a full server, as in the issue: each refusal counted once."""
    cluster = new_cluster(
        major, logging_collector="on", log_destination="csvlog", log_directory="log", **FULL
    )
    try:
        tail = FileTail(cluster.data / "log", "*.csv")
        stream = LogStream({"target": "t"}, "csvlog", tail.counts)
        stream.feed(tail.read_available(1 << 20))
        held = [psycopg.connect(cluster.dsn(user="postgres")) for _ in range(5)]
        try:
            # Over TCP (refuse_at_once says why).
            refused = refuse_at_once(cluster.dsn(host="127.0.0.1"), 40)
        finally:
            for conn in held:
                conn.close()
        others = [r for r in refused if "too many clients" not in r]
        assert len(refused) == 40 and not others, others
        expected = {("too_many_clients", "postgres", "postgres", "127.0.0.1"): 40}

        def counted() -> bool:
            stream.feed(tail.read_available(1 << 20))
            return stream.failures.counts == expected

        wait_until(counted, 15, what=f"{expected}, got {stream.failures.counts}")
    finally:
        cluster.stop()


def _read_remote(conn: psycopg.Connection, tail: RemoteTail, stream: LogStream) -> None:
    """What the core will do on the held connection: list, plan, read, feed."""
    while True:
        request = tail.plan(conn.execute(LISTING_SQL).fetchall(), 1 << 20)
        if request is None:
            return
        [(data,)] = conn.execute(READ_SQL, (request.name, request.offset, request.length))
        stream.feed(tail.take(request, data))
        if not data:
            return


@pytest.mark.parametrize(
    ("major", "log_format"), [("15", "csvlog"), ("18", "jsonlog"), ("18", "stderr")]
)
def test_the_remote_function_reads_only_the_log_directory(major: str, log_format: str) -> None:
    cluster = new_cluster(
        major, logging_collector="on", log_destination=log_format, log_directory="log", **FULL
    )
    try:
        cluster.execute(
            SQL.read_text(),
            "CREATE ROLE monitor LOGIN IN ROLE pg_monitor",
            "GRANT EXECUTE ON FUNCTION pgce_read_log(text, bigint, integer) TO monitor",
        )
        with psycopg.connect(cluster.dsn()) as conn:
            prefix = conn.execute("SHOW log_line_prefix").fetchone()
        assert prefix is not None
        with psycopg.connect(cluster.dsn(user="monitor"), autocommit=True) as conn:
            tail = RemoteTail(DEFAULT_PATTERNS[log_format])
            stream = LogStream(
                {"target": "t"},
                log_format,  # type: ignore[arg-type]
                tail.counts,
                log_line_prefix=prefix[0],
            )
            _read_remote(conn, tail, stream)
            held = [psycopg.connect(cluster.dsn()) for _ in range(4)]  # and this one: full
            _refuse(cluster, 3)
            for c in held:
                c.close()

            def counted() -> bool:
                _read_remote(conn, tail, stream)
                return _failures(stream) == {"too_many_clients": 3}

            wait_until(counted, 15, what="3 refusals read through pgce_read_log")
            name = conn.execute(LISTING_SQL).fetchall()[0][0]
            for bad in ("../postgresql.conf", "/etc/passwd", f"../log/{name}", "global/pg_control"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not a file of"):
                    conn.execute(READ_SQL, (bad, 0, 100))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT pg_read_binary_file('postgresql.conf', 0, 100)")
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                conn.execute(READ_SQL, (name, -1, 100))
    finally:
        cluster.stop()


def test_pgbouncer_refusals_counted_exactly(pgbouncer_for) -> None:
    cluster = new_cluster("15")
    try:
        bouncer = pgbouncer_for(
            cluster, max_client_conn=4, default_pool_size=1, query_wait_timeout=1
        )
        tail = FileTail(bouncer.dir, "pgbouncer.log")
        stream = LogStream({"target": "b"}, "pgbouncer", tail.counts)
        stream.feed(tail.read_available(1 << 20))
        # query_wait_timeout: one client holds the only server connection in a transaction.
        holder = psycopg.connect(bouncer.dsn("postgres", "app"))
        holder.execute("SELECT 1")
        waiter = psycopg.connect(bouncer.dsn("postgres", "app"), autocommit=True)
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
            waiter.execute("SELECT 1")
        # max_client_conn: 4 clients in (the holder and 3 more), 5 refused.
        others = [psycopg.connect(bouncer.dsn("postgres", "app")) for _ in range(3)]
        for _ in range(5):
            with pytest.raises(psycopg.OperationalError, match="max_client_conn"):
                psycopg.connect(bouncer.dsn("postgres", "app"), connect_timeout=5)
        for conn in [*others, holder]:
            conn.close()
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(bouncer.dsn("stranger", "app"), connect_timeout=5)
        with pytest.raises(psycopg.OperationalError, match="no such database"):
            psycopg.connect(bouncer.dsn("postgres", "nosuchdb"), connect_timeout=5)
        expected = {
            ("query_wait_timeout", "postgres", "app", "127.0.0.1"): 1,
            ("max_client_conn", "", "", "127.0.0.1"): 5,
            ("login_failed", "stranger", "", "127.0.0.1"): 1,
            ("no_such_database", "postgres", "", "127.0.0.1"): 1,
        }

        def counted() -> bool:
            stream.feed(tail.read_available(1 << 20))
            return stream.failures.counts == expected

        wait_until(counted, 10, what=f"{expected}, got {stream.failures.counts}")
        assert all(isinstance(e, Failure) for e in stream.feed(tail.read_available(1 << 20)))
        threading.Event().wait(0.3)
        stream.feed(tail.read_available(1 << 20))
        assert stream.failures.counts == expected
    finally:
        cluster.stop()


def _as_unprivileged(job: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run `job` in a forked child as the servers' unprivileged user (root reads any file, so
    a permission loss is only real for another user); its result comes back as JSON."""
    user = _service_user()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        status = 1
        try:
            os.close(read_end)
            if user:
                entry = pwd.getpwnam(user)
                os.setgroups([])
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
            with os.fdopen(write_end, "w") as out:
                json.dump(job(), out)
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as results:
        text = results.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and text, f"the child failed (status {status})"
    return json.loads(text)


def test_a_log_that_loses_its_permissions_is_a_metric_then_read_on() -> None:
    base = Path(tempfile.mkdtemp(prefix="pgce-logperm-"))  # pytest's tmp_path is root's only
    base.chmod(0o777)
    directory = base / "log"

    def job() -> dict[str, object]:
        directory.mkdir()
        log = directory / "postgresql.log"
        log.write_text("")
        tail = FileTail(directory, "*.log")
        stream = LogStream({"target": "t"}, "stderr", tail.counts, log_line_prefix="%m [%p] ")
        line = "2026-12-07 03:00:00.000 UTC [7] FATAL:  sorry, too many clients already\n"
        stream.feed(tail.read_available(1 << 20))
        with log.open("a") as f:
            f.write(line * 2)
        log.chmod(0)
        directory.chmod(0)
        lost = [tail.read_available(1 << 20) for _ in range(3)]
        up_while_lost, errors = tail.counts.up, dict(tail.counts.errors)
        directory.chmod(0o700)
        log.chmod(0o600)
        with log.open("a") as f:
            f.write(line)
        stream.feed([p for pieces in lost for p in pieces])
        stream.feed(tail.read_available(1 << 20))
        return {
            "up_while_lost": up_while_lost,
            "errors": errors,
            "up": tail.counts.up,
            "counted": sum(stream.failures.counts.values()),
        }

    try:
        got = _as_unprivileged(job)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert got == {"up_while_lost": False, "errors": {"permission": 3}, "up": True, "counted": 3}


class _BouncerWithGhostDatabase(PgBouncer):
    """Also a database `ghostdb` whose server role does not exist: its server logins fail."""

    def _write_config(self) -> Path:
        ini = super()._write_config()
        ghost = (
            f"ghostdb = host={self.cluster.socket_dir} port={self.cluster.port} dbname=postgres"
            " user=ghost\n\n[pgbouncer]"
        )
        ini.write_text(ini.read_text().replace("[pgbouncer]", ghost, 1))
        return ini


def test_pgbouncer_server_login_failures_counted() -> None:
    cluster = new_cluster("15")
    bouncer = _BouncerWithGhostDatabase(require_program("pgbouncer"), cluster)
    try:
        bouncer.start()
        tail = FileTail(bouncer.dir, "pgbouncer.log")
        stream = LogStream({"target": "b"}, "pgbouncer", tail.counts)
        stream.feed(tail.read_available(1 << 20))
        with pytest.raises(psycopg.OperationalError, match='role "ghost" does not exist'):
            psycopg.connect(bouncer.dsn("postgres", "ghostdb"), connect_timeout=5)
        expected = {("server_login_failed", "ghost", "ghostdb", ""): 1}

        def counted() -> bool:
            stream.feed(tail.read_available(1 << 20))
            return stream.failures.counts == expected

        wait_until(counted, 10, what=f"{expected}, got {stream.failures.counts}")
        assert stream.parser.counts.unparsed == 0
    finally:
        bouncer.stop()
        cluster.stop()
