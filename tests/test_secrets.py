"""Passwords never appear in logs, metrics, error messages or pages, whatever goes wrong."""

from __future__ import annotations

import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import psycopg.conninfo
import pytest
import yaml

from harness.localpg import LocalCluster, free_port
from tests.conftest import new_cluster
from tests.helpers import REPO, http_get, wait_until


@pytest.fixture
def password_cluster() -> Iterator[LocalCluster]:
    cluster = new_cluster("18", max_connections=30)
    try:
        cluster.hba_prepend("host all all 127.0.0.1/32 scram-sha-256")
        yield cluster
    finally:
        cluster.stop()


def test_passwords_never_leak(password_cluster: LocalCluster, exporter_process, tmp_path) -> None:
    cluster = password_cluster
    good, wrong, login = (f"pw-{secrets.token_hex(8)}" for _ in range(3))
    cluster.execute(
        f"CREATE ROLE monitor LOGIN PASSWORD '{good}'",
        f"CREATE ROLE app LOGIN PASSWORD '{login}' CONNECTION LIMIT 0",
        "GRANT pg_monitor TO monitor",
    )
    (tmp_path / "pw").write_text(good + "\n")
    tcp = {"host": "127.0.0.1", "port": cluster.port, "dbname": "postgres"}
    config = {
        "targets": [
            {
                "name": "inline",
                "dsn": f"postgresql://monitor:{good}@127.0.0.1:{cluster.port}/postgres",
                "login_check": {
                    "interval": "100ms",
                    "dsn": psycopg.conninfo.make_conninfo(user="app", password=login, **tcp),
                },
            },
            {
                "name": "file",
                "dsn": psycopg.conninfo.make_conninfo(user="monitor", **tcp),
                "password_file": str(tmp_path / "pw"),
            },
            {
                "name": "wrong",
                "dsn": psycopg.conninfo.make_conninfo(user="monitor", password=wrong, **tcp),
                "connect_timeout": 1,
            },
            {
                "name": "down",
                "dsn": f"postgresql://monitor:{good}@127.0.0.1:{free_port()}/postgres",
                "connect_timeout": 1,
            },
        ]
    }
    config_file = tmp_path / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    proc = exporter_process("--config.file", str(config_file), "--log.level", "debug")
    proc.wait_ready()
    failures = "pg_connections_exporter_connect_failures_total"
    s = wait_until(
        lambda: (
            (s := proc.scrape()).value(failures, target="wrong", reason="authentication") >= 1
            and s.value(failures, target="down", reason="unreachable") >= 1
            and s.value("pg_connections_login_check_failures_total", reason="role_limit") >= 1
            and s
        ),
        what="every kind of failure to have happened",
    )
    assert s.value("pg_up", target="inline") == 1 and s.value("pg_up", target="file") == 1
    seen = {"metrics": proc.scrape().text, "log": ""}
    for path in ("/", "/healthz", "/nonexistent"):
        seen[path] = http_get(proc.url + path)[1]

    # A reload with a broken DSN that carries a password: refused, and said without it.
    broken = dict(config)
    broken["targets"] = [
        {"name": "bad", "dsn": f"postgresql://monitor:{good}@127.0.0.1:notaport/x"},
        {"name": "dup", "dsn": f"host=127.0.0.1 password={good} nonsense_key=1"},
    ]
    config_file.write_text(yaml.safe_dump(broken))
    request = urllib.request.Request(proc.url + "/-/reload", data=b"", method="POST")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("the broken config was accepted")
    except urllib.error.HTTPError as err:
        assert err.code == 500
        seen["reload"] = err.read().decode()
    assert "targets[1].dsn: not a valid libpq connection string" in seen["reload"]
    check = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(config_file), "--check-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert check.returncode == 2
    seen["check-config"] = check.stdout + check.stderr
    assert proc.stop() == 0
    seen["log"] = proc.output()
    assert "authentication" in seen["log"] and "role_limit" in seen["log"]

    for where, text in seen.items():
        for secret in (good, wrong, login):
            assert secret not in text, f"a password appears in {where}"
