"""`pg-connections-exporter diagnose` against real full servers: holders, counts and candidates
compared with pg_stat_activity, a reserved slot on 18, --terminate with filters, bad input;
`gather` and `gather_async` finding the same facts, each bounded by its budget."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from exporter.diagnose.analysis import (
    Criteria,
    Facts,
    Session,
    analyze,
    gather,
    gather_async,
    redact_query,
    terminate_statement,
)
from exporter.diagnose.command import APPLICATION_NAME
from harness.localpg import LocalCluster, free_port
from harness.workload import SessionSpec, Workload
from tests.conftest import new_cluster
from tests.helpers import REPO, wait_until

IDLE_AGE = 1.0


def diagnose(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def diagnose_json(*args: str) -> dict[str, Any]:
    result = diagnose(*args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fill(w: Workload, user: str, application: str) -> int:
    """Idle sessions of `user` until the server refuses the next one."""
    opened = 0
    while opened < 100:
        try:
            w.open(SessionSpec("idle", user=user, application_name=application))
        except psycopg.OperationalError as exc:
            assert "reserved" in str(exc) or "too many clients" in str(exc), exc
            return opened
        opened += 1
    raise AssertionError("the server never refused a session")


def truth(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql.encode()).fetchall()


def client_sessions(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(pid, user, application, state, seconds in state) of every client backend but
    `conn`'s own and any diagnose session."""
    return truth(
        conn,
        "SELECT pid, usename::text, application_name, state,"
        " date_part('epoch', now() - state_change) FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        f" AND application_name <> '{APPLICATION_NAME}'",
    )


@pytest.fixture(params=["15", "18"])
def full_server(request: pytest.FixtureRequest):
    """A server whose ordinary slots are all taken: web (role app) idle, a batch query
    running, a lock holder idle in transaction, a reader waiting on it, and filler."""
    cluster = new_cluster(request.param, max_connections=16, superuser_reserved_connections=3)
    try:
        cluster.execute(
            "CREATE ROLE app LOGIN",
            "CREATE ROLE batch LOGIN",
            "CREATE TABLE orders (id int)",
            "GRANT SELECT ON orders TO app",
        )
        # The test's own eye on the server: a superuser session opened before it fills.
        eye = psycopg.connect(cluster.dsn(application_name="truth"), autocommit=True)
        with Workload(cluster.dsn()) as w:
            for _ in range(4):
                w.open(SessionSpec("idle", user="app", application_name="web"))
            w.open(SessionSpec("active", user="batch", application_name="etl"))
            locker = w.hold_lock(
                "orders", SessionSpec("idle in transaction", application_name="locker")
            )
            w.wait_for_lock("orders", SessionSpec("active", user="app", application_name="reader"))
            filler = fill(w, "batch", "filler")
            time.sleep(IDLE_AGE + 0.2)
            yield cluster, eye, locker.info.backend_pid, filler
        eye.close()
    finally:
        cluster.stop()


def test_diagnose_reports_what_pg_stat_activity_says_on_a_full_server(full_server) -> None:
    cluster, eye, locker_pid, filler = full_server
    assert filler >= 1
    # Ordinary roles are refused; the superuser gets in through superuser_reserved_connections.
    report = diagnose_json(
        "--dsn", cluster.dsn(), "--idle-age", f"{IDLE_AGE}s", "--long-query-age", "1s"
    )
    sessions = client_sessions(eye)
    eye_pid = eye.info.backend_pid

    slots = report["slots"]
    # Every client backend: the listed sessions, the test's eye and the diagnose session.
    assert slots["used"] == len(sessions) + 2
    assert slots["max_connections"] == 16 and slots["superuser_reserved_connections"] == 3
    assert slots["may_get_in"][0] == {"who": "ordinary roles", "slots": 0}
    assert slots["may_get_in"][-1]["who"] == "superusers"
    assert slots["may_get_in"][-1]["slots"] == 16 - slots["used"]

    holders = {
        (h["user"], h["application"]): h["count"]
        for h in report["holders"]
        if h["application"] != "truth"
    }
    assert holders == Counter((s[1], s[2]) for s in sessions)
    assert report["holders"][0]["application"] == "filler"  # biggest first
    by_state = {r["key"]: r["count"] for r in report["breakdowns"]["state"]}
    assert by_state == Counter(s[3] for s in sessions) + Counter({"idle": 1})  # + the eye
    by_user = {r["key"]: r["count"] for r in report["breakdowns"]["user"]}
    assert by_user == Counter(s[1] for s in sessions) + Counter({"postgres": 1})

    candidates = {r["pid"] for r in report["candidates"]["sessions"]} - {eye_pid}
    assert candidates == {
        s[0] for s in sessions if s[3] in ("idle", "idle in transaction") and s[4] >= IDLE_AGE
    }
    statement = report["candidates"]["statement"]
    assert all(str(pid) in statement for pid in candidates)

    # What the lock holder blocks, and the long-running queries.
    (holder,) = report["idle_in_transaction"]
    reader = truth(eye, "SELECT pid FROM pg_stat_activity WHERE application_name = 'reader'")
    assert holder["pid"] == locker_pid and holder["blocks"] == [reader[0][0]]
    assert {r["application"] for r in report["long_running"]} == {"etl", "reader"}
    sections = {r["section"] for r in report["recommendations"]}
    assert {"Immediate Recovery", "Best Practices", "Diagnose the Root Cause"} <= sections


def test_text_report_names_the_holders_and_prints_the_statement(full_server) -> None:
    cluster, _eye, _locker, _filler = full_server
    result = diagnose("--dsn", cluster.dsn(password="not-this-one"), "--idle-age", "1s")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "who may still get in: ordinary roles: 0" in out
    assert "pg_terminate_backend(pid)" in out and "filler" in out
    assert "[Immediate Recovery]" in out
    assert "not-this-one" not in out + result.stderr


def test_diagnose_gets_in_through_a_reserved_slot_on_18() -> None:
    cluster = new_cluster(
        "18", max_connections=8, superuser_reserved_connections=1, reserved_connections=2
    )
    try:
        cluster.execute(
            "CREATE ROLE app LOGIN",
            "CREATE ROLE monitor LOGIN",
            "GRANT pg_monitor, pg_use_reserved_connections TO monitor",
        )
        with Workload(cluster.dsn()) as w:
            assert fill(w, "app", "web") == 5  # 8 - 1 superuser-reserved - 2 reserved
            refused = diagnose("--dsn", cluster.dsn(user="app", host="127.0.0.1"))
            assert refused.returncode == 1
            assert "the server is full for role app (reserved_slots_only)" in refused.stderr
            assert "Traceback" not in refused.stderr

            report = diagnose_json("--dsn", cluster.dsn(user="monitor", host="127.0.0.1"))
            assert report["server"]["role_class"] == "reserved"
            slots = report["slots"]
            assert slots["used"] == 6 and slots["reserved_connections"] == 2
            assert [r["slots"] for r in slots["may_get_in"]] == [0, 1, 2]
            assert report["holders"] == [
                {
                    "user": "app",
                    "application": "web",
                    "database": "postgres",
                    "count": 5,
                    "states": {"idle": 5},
                    "longest_in_state_seconds": report["holders"][0]["longest_in_state_seconds"],
                }
            ]
    finally:
        cluster.stop()


def test_terminate_ends_exactly_the_listed_sessions(full_server) -> None:
    cluster, eye, locker_pid, _filler = full_server
    before = client_sessions(eye)
    web_idle = {s[0] for s in before if s[2] == "web" and s[3] == "idle"}
    assert len(web_idle) == 4
    args = ["--dsn", cluster.dsn(), "--idle-age", "1s", "--application", "web", "--user", "app",
            "--state", "idle"]  # fmt: skip

    # Without --yes and without a terminal: refused, nothing ended.
    refused = diagnose(*args, "--terminate", stdin="")
    assert refused.returncode == 1
    assert "without confirmation: stdin is not a terminal" in refused.stderr
    assert {s[0] for s in client_sessions(eye)} == {s[0] for s in before}

    report = diagnose_json(*args)
    listed = {r["pid"] for r in report["candidates"]["sessions"]}
    assert listed == web_idle

    # The printed statement ends the listed sessions and no others, even one that has come to
    # match the criteria since (a new idle web session).
    filler_pid = next(s[0] for s in before if s[2] == "filler")
    eye.execute("SELECT pg_terminate_backend(%s)", (filler_pid,))
    wait_until(lambda: filler_pid not in {s[0] for s in client_sessions(eye)}, what="a free slot")
    late = psycopg.connect(cluster.dsn(user="app", application_name="web"), autocommit=True)
    late_pid = late.info.backend_pid
    try:
        time.sleep(IDLE_AGE + 0.2)
        rows = eye.execute(report["candidates"]["statement"].encode()).fetchall()
        assert {r[0] for r in rows if r[4]} == listed
        expected = ({s[0] for s in before} - listed - {filler_pid}) | {late_pid}
        wait_until(lambda: {s[0] for s in client_sessions(eye)} == expected, what="the listed gone")

        # --terminate runs its own report's statement: now only the late session matches.
        done = diagnose_json(*args, "--terminate", "--yes")
        ended = [r["pid"] for r in done["terminated"]["ended"]]
        assert ended == [late_pid] and done["terminated"]["left"] == []
    finally:
        late.close()
    after = {s[0] for s in client_sessions(eye)}
    assert after == expected - {late_pid}
    assert locker_pid in after

    # Narrowed to the lock holder's state: only it goes, and the waiting reader gets its lock.
    done = diagnose_json(
        "--dsn", cluster.dsn(), "--idle-age", "1s", "--state", "idle in transaction",
        "--terminate", "--yes",
    )  # fmt: skip
    assert [r["pid"] for r in done["terminated"]["ended"]] == [locker_pid]
    assert {s[0] for s in client_sessions(eye)} == after - {locker_pid}


def _session(pid: int, **kw: Any) -> Session:
    base: dict[str, Any] = {
        "pid": pid,
        "backend_type": "client backend",
        "database": "postgres",
        "user": "app",
        "application": "web",
        "client": "local",
        "state": "idle",
        "state_seconds": 3600.0,
        "xact_seconds": None,
        "query_seconds": 3600.0,
        "backend_seconds": 3600.0,
        "wait_event_type": None,
        "wait_event": None,
        "blocked_by": (),
        "query": None,
        "own": False,
        "client_backend": True,
    }
    return Session(**{**base, **kw})


def test_candidates_never_include_own_or_exporter_sessions_or_background_workers() -> None:
    facts = Facts(
        server_version="18.1",
        role="monitor",
        superuser=False,
        reserved_member=True,
        sees_all=True,
        settings={"max_connections": ("10", None), "superuser_reserved_connections": ("3", None)},
        sessions=(
            _session(1),
            _session(2, own=True),
            _session(3, backend_type="background worker", client_backend=False, user=None),
            _session(4, state="active"),
            _session(5, state_seconds=10.0),
            _session(6, application="it's"),
            _session(7, application="pg-connections-exporter"),
        ),
        database_limits={},
        role_limits={},
    )
    report = analyze(facts, Criteria(idle_seconds=60))
    assert [r["pid"] for r in report.candidates["sessions"]] == [1, 6]
    assert report.slots["used"] == 6 and report.slots["other_backends"] == {"background worker": 1}
    statement = terminate_statement([facts.sessions[5]], Criteria(applications=("it's",)))
    assert "application_name IN ('it''s')" in statement  # quoted, not injected
    assert "pid <> pg_backend_pid()" in statement and "'client backend'" in statement
    assert "application_name NOT LIKE 'pg-connections-exporter%'" in statement


def test_bad_input_is_one_clear_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": [{"name": "main", "dsn": "host=/nowhere"}]}))
    cases = [
        (["--config.file", str(config), "--target", "nope"], 2, "no such target"),
        (["--dsn", "host=127.0.0.1 dbname=x user=y", "--idle-age", "soon"], 2, "--idle-age"),
        (["--dsn", "not a dsn"], 2, "not a valid libpq connection string"),
        ([], 2, "no server"),
        (
            ["--dsn", f"host=127.0.0.1 port={free_port()} user=u password=hunter2 dbname=d"],
            1,
            "cannot connect to u@127.0.0.1",
        ),
        (["--config.file", str(config)], 1, "unreachable"),
    ]
    for args, code, message in cases:
        result = diagnose(*args)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr + result.stdout
        assert result.stderr.count("\n") == 1, result.stderr


def test_full_server_for_the_role_on_15(tmp_path: Path) -> None:
    cluster: LocalCluster = new_cluster("15", max_connections=6, superuser_reserved_connections=3)
    try:
        cluster.execute("CREATE ROLE app LOGIN")
        with Workload(cluster.dsn()) as w:
            fill(w, "app", "web")
            result = diagnose("--dsn", cluster.dsn(user="app"))
            assert result.returncode == 1
            assert "the server is full for role app (reserved_slots_only)" in result.stderr
            assert "/sessions page" in result.stderr and "Traceback" not in result.stderr
    finally:
        cluster.stop()


def test_terminate_asks_on_a_terminal_and_only_yes_ends(pg: LocalCluster) -> None:
    """On a terminal --terminate asks first: "n" (or anything but y/yes) ends nothing."""
    app = f"pty-victim-{pg.port}"
    args = ["--dsn", pg.dsn(), "--idle-age", "1s", "--application", app, "--terminate"]
    with Workload(pg.dsn()) as w:
        victims = {w.open(SessionSpec("idle", application_name=app)).info.backend_pid
                   for _ in range(2)}  # fmt: skip
        time.sleep(IDLE_AGE + 0.2)

        def on_terminal(answer: str) -> subprocess.CompletedProcess[str]:
            primary, secondary = os.openpty()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "exporter", "diagnose", *args],
                    stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, cwd=REPO,
                )  # fmt: skip
                os.write(primary, answer.encode() + b"\n")
                out, err = proc.communicate(timeout=60)
            finally:
                os.close(primary)
                os.close(secondary)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

        def alive() -> set[int]:
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
                ).fetchall()
            return {r[0] for r in rows}

        declined = on_terminal("n")
        assert declined.returncode == 1
        assert "End these 2 session(s)? [y/N]" in declined.stderr
        assert "not confirmed: nothing was ended" in declined.stderr
        assert alive() == victims
        accepted = on_terminal("yes")
        assert accepted.returncode == 0, accepted.stderr
        assert f"ended 2 session(s): {' '.join(map(str, sorted(victims)))}" in accepted.stdout
        assert alive() == set()


def test_diagnose_a_target_of_the_config_with_its_password_file(tmp_path: Path) -> None:
    cluster = new_cluster("18", max_connections=20)
    try:
        cluster.execute(
            "CREATE ROLE monitor LOGIN PASSWORD 'mon-pw-123'", "GRANT pg_monitor TO monitor"
        )
        cluster.hba_prepend("host all monitor 127.0.0.1/32 scram-sha-256")
        (tmp_path / "pw").write_text("mon-pw-123\n")
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "targets": [
                        {"name": "other", "dsn": "host=/nowhere"},
                        {
                            "name": "main",
                            "dsn": cluster.dsn(user="monitor", host="127.0.0.1"),
                            "password_file": str(tmp_path / "pw"),
                        },
                    ],
                    "settings": {"query_timeout": "3s"},
                }
            )
        )
        result = diagnose("--config.file", str(config), "--target", "main")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("pg-connections-exporter diagnose: main (PostgreSQL 18")
        assert "as monitor, ordinary" in result.stdout
        assert "mon-pw-123" not in result.stdout + result.stderr
        ambiguous = diagnose("--config.file", str(config))
        assert ambiguous.returncode == 2 and "--target is needed" in ambiguous.stderr
        wrong = tmp_path / "wrong.yaml"
        wrong.write_text(config.read_text().replace(str(tmp_path / "pw"), str(tmp_path / "none")))
        result = diagnose("--config.file", str(wrong), "--target", "main")
        assert result.returncode == 2 and "password_file: cannot read" in result.stderr
    finally:
        cluster.stop()


def test_query_texts_never_show_a_password(pg: LocalCluster) -> None:
    role = f"leaky_{pg.port}"
    app = f"leaky-{pg.port}"
    with Workload(pg.dsn()) as w:
        conn = w.connect(SessionSpec(application_name=app))
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'leak-me-1'".encode())
        try:
            report = diagnose_json("--dsn", pg.dsn(), "--idle-age", "1ms", "--application", app)
            (row,) = report["candidates"]["sessions"]
            assert row["query"] == f"CREATE ROLE {role} LOGIN PASSWORD '***'"
            text = diagnose("--dsn", pg.dsn(), "--idle-age", "1ms", "--application", app)
            assert "PASSWORD '***'" in text.stdout and "leak-me-1" not in text.stdout
            hidden = diagnose_json(
                "--dsn", pg.dsn(), "--idle-age", "1ms", "--application", app, "--no-query-text"
            )
            assert hidden["candidates"]["sessions"][0]["query"] is None
        finally:
            conn.execute(f"DROP ROLE {role}".encode())


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("ALTER ROLE a PASSWORD 'x y''z' VALID UNTIL 'x'",
         "ALTER ROLE a PASSWORD '***' VALID UNTIL 'x'"),
        ("create role b password 'cut short by trunc", "create role b password '***'"),
        ("SELECT dblink('password=s3 user=u')", "SELECT dblink('password=*** user=u')"),
        ("SELECT 'password'", "SELECT 'password'"),
    ],
)  # fmt: skip
def test_redact_query(query: str, shown: str) -> None:
    assert redact_query(query) == shown


AGES = ("state_seconds", "xact_seconds", "query_seconds", "backend_seconds")


def _steady(facts: Facts, diagnosers: set[int]) -> Facts:
    """`facts` without what differs between two looks a moment apart: every age, and what
    the two diagnosing sessions were doing (each is the active `own` one in its own look)."""
    sessions = []
    for s in facts.sessions:
        s = dataclasses.replace(s, **dict.fromkeys(AGES))
        if s.pid in diagnosers:
            s = dataclasses.replace(
                s, state=None, wait_event_type=None, wait_event=None, query=None, own=False
            )
        sessions.append(s)
    return dataclasses.replace(facts, sessions=tuple(sorted(sessions, key=lambda s: s.pid)))


def test_gather_and_gather_async_find_the_same_facts(pg: LocalCluster) -> None:
    """The sync and the asyncio driver run one set of statements and row handling: on the
    same sessions they find the same facts (query texts cut alike), ages apart."""
    app, role, db, table = (f"{name}_{pg.port}" for name in ("same", "capped", "capped", "locked"))
    pg.execute(
        f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 7",
        f"CREATE DATABASE {db} CONNECTION LIMIT 5",
        f"CREATE TABLE {table} (id int)",
    )
    try:
        with Workload(pg.dsn()) as w:
            states = ("idle", "active", "idle in transaction", "idle in transaction (aborted)")
            for state in states:
                w.open(SessionSpec(state, user=role, dbname=db, application_name=app))
            holder = w.hold_lock(table, SessionSpec(application_name=app)).info.backend_pid
            waiter = w.wait_for_lock(table, SessionSpec(application_name=app)).info.backend_pid
            wait_until(
                lambda: truth(
                    w.sessions[0], f"SELECT 1 FROM pg_locks WHERE pid = {waiter} AND NOT granted"
                ),
                what="the waiter queued behind the lock",
            )
            sync_conn = w.connect(SessionSpec(application_name=f"{app}-sync"), autocommit=False)
            sync_pid = sync_conn.info.backend_pid

            async def both_looks() -> tuple[Facts, Facts, int, float]:
                aconn = await psycopg.AsyncConnection.connect(pg.dsn(application_name=app))
                async with aconn:
                    start = time.monotonic()
                    by_sync = gather(sync_conn, query_text=True, query_chars=12)
                    by_async = await gather_async(aconn, query_text=True, query_chars=12)
                    return by_sync, by_async, aconn.info.backend_pid, time.monotonic() - start

            def same_backends() -> tuple[Facts, Facts, int, float] | None:
                # A background worker may start or end between the looks: look again.
                looks = asyncio.run(both_looks())
                pids = [{s.pid for s in facts.sessions} for facts in looks[:2]]
                return looks if pids[0] == pids[1] else None

            by_sync, by_async, async_pid, elapsed = wait_until(
                same_backends, what="both looks on the same backends"
            )
        own_sync, own_async = (next(s for s in f.sessions if s.own) for f in (by_sync, by_async))
        assert (own_sync.pid, own_sync.state) == (sync_pid, "active")
        assert (own_async.pid, own_async.state) == (async_pid, "active")
        # Each look's own statement (the backends query), cut alike.
        assert own_async.query == own_sync.query and len(own_async.query or "") == 12
        # The workload's sessions and the async look's own (application `app` too).
        ours = {s.pid: s for s in by_async.sessions if s.application == app}
        assert sorted(s.state or "" for s in ours.values()) == sorted(
            [*states, "idle in transaction", "active", "active"]
        )
        assert ours[waiter].blocked_by == (holder,)
        assert {s.query for s in ours.values() if s.state == "active"} == {
            "SELECT pg_sl",
            "SELECT count",
            own_async.query,
        }
        assert by_async.role_limits[role] == 7 and by_async.database_limits[db] == 5
        # Each age grew by the time between the two looks, no more.
        before = {s.pid: s for s in by_sync.sessions}
        for s in by_async.sessions:
            for age in AGES:
                then, now = getattr(before[s.pid], age), getattr(s, age)
                if s.pid not in (sync_pid, async_pid) and then is not None:
                    assert -0.01 <= now - then <= elapsed + 0.01, (s, age, then, now)
        diagnosers = {sync_pid, async_pid}
        assert _steady(by_sync, diagnosers) == _steady(by_async, diagnosers)
    finally:
        pg.execute(f"DROP TABLE {table}", f"DROP DATABASE {db} WITH (FORCE)", f"DROP ROLE {role}")


@pytest.mark.parametrize("driver", ["gather", "gather_async"])
def test_the_budget_bounds_gather_behind_a_locked_catalog(pg: LocalCluster, driver: str) -> None:
    """Behind a held lock, the whole diagnosis stops at its budget though the session would
    wait 20s; the connection comes back out of the transaction, its own timeout untouched."""
    dsn = pg.dsn(options="-c lock_timeout=20s -c statement_timeout=20s")

    async def behind_a_lock() -> None:
        if driver == "gather":
            conn: Any = psycopg.connect(dsn)

            async def look(budget: float) -> Facts:
                return gather(conn, budget=budget)

            async def show_timeout() -> Any:
                return conn.execute("SHOW statement_timeout").fetchone()
        else:
            conn = await psycopg.AsyncConnection.connect(dsn)

            async def look(budget: float) -> Facts:
                return await gather_async(conn, budget=budget)

            async def show_timeout() -> Any:
                return await (await conn.execute("SHOW statement_timeout")).fetchone()

        try:
            with Workload(pg.dsn()) as w:
                w.hold_lock("pg_catalog.pg_authid")  # pg_roles: gather's second statement
                start = time.monotonic()
                with pytest.raises(psycopg.errors.QueryCanceled):
                    await look(0.5)
                elapsed = time.monotonic() - start
            assert 0.4 <= elapsed < 3, elapsed
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert await show_timeout() == ("20s",)
            assert (await look(0.5)).role == "postgres"  # the lock gone, within the budget
        finally:
            if driver == "gather":
                conn.close()
            else:
                await conn.close()

    asyncio.run(behind_a_lock())
