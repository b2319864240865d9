"""The exporter's threads do not grow with its targets, and a bounded scrape pool keeps each
target's isolation: targets whose servers never answer delay no other, and every scrape
answers by its deadline. Against a real exporter process, a real PostgreSQL and servers that
accept a connection and then say nothing."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.localpg import LocalCluster
from tests.conftest import new_cluster
from tests.helpers import Samples, http_get, wait_until

LIVE = 20
SILENT = 12


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = new_cluster("18", max_connections=LIVE + 20)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake but whose program never answers: a
    connect attempt waits for its whole connect_timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_threads_bounded_and_silent_targets_delay_no_other(
    cluster: LocalCluster, silent_server: int, exporter_process, tmp_path: Path
) -> None:
    # The silent targets first: they are the first handed to the scrape pool.
    targets = [
        {
            "name": f"silent{i}",
            "dsn": f"host=127.0.0.1 port={silent_server} user=x dbname=x",
            "connect_timeout": 10,
            "login_check": True,
        }
        for i in range(SILENT)
    ]
    targets += [{"name": f"live{i}", "dsn": cluster.dsn()} for i in range(LIVE)]
    config = tmp_path / "config.yml"
    settings = {"scrape_concurrency": 4}
    # Each live target's scrape takes 0.1 s: 20 of them fill 4 threads for 0.5 s of the 2.5 s a
    # scrape has (room for a loaded machine), while one thread held by a silent server's 10 s
    # connect attempt would leave 3 threads and the 12 silent ones would hold all 4.
    slow = {
        "name": "slow",
        "sql": "SELECT 1 AS v FROM pg_sleep(0.1)",
        "metrics": [{"name": "pgce_test_slow", "help": "h", "value": "v"}],
    }
    config.write_text(yaml.safe_dump({"targets": targets, "settings": settings, "queries": [slow]}))
    proc = exporter_process("--config.file", str(config))
    proc.wait_ready()
    live = [f"live{i}" for i in range(LIVE)]

    def all_live_up() -> Samples | None:
        s = proc.scrape()
        success = "pg_connections_exporter_query_success"
        return s if all(s.value(success, target=t, query="slow") == 1 for t in live) else None

    wait_until(all_live_up, 60, 0.5, "every live target up")
    # Rounds of scrapes as Prometheus would make them, with a 3 s scrape timeout: the
    # silent targets' connect attempts (each 10 s, again and again) never cost a live target
    # its round, and each answer comes by its deadline.
    for _ in range(5):
        start = time.monotonic()
        status, body, _ = http_get(
            f"{proc.url}/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "3"}, timeout=30
        )
        took = time.monotonic() - start
        assert status == 200
        s = Samples(body)
        assert [t for t in live if s.value("pg_up", target=t) != 1] == []
        # Up, and its queries ran (a run started too late is up with every query failed).
        success = "pg_connections_exporter_query_success"
        assert [t for t in live if s.value(success, target=t, query="slow") != 1] == []
        assert all(s.value("pg_up", target=f"silent{i}") == 0 for i in range(SILENT))
        assert took < 3.0, f"a scrape answered after its deadline: {took:.2f}s"
    # 32 targets, 12 of them with a login check, yet a fixed number of threads: the main
    # thread's event loop (every connection, scrape, connect attempt and login check), its 2
    # executor threads (DNS lookups, reloads) and the 4 HTTP workers that render answers
    # (before the event loop: 27 at most; before the shared pools, ~3 a target: over 150).
    assert _threads(proc.proc.pid) <= 1 + 2 + 4


def test_targets_wait_for_their_servers_at_once(
    cluster: LocalCluster, exporter_process, tmp_path: Path
) -> None:
    """A target run waiting for its server lets the others run (each waits on the event loop):
    eight targets whose query takes 0.6 s answer together in about 0.6 s, not one after another
    (4.8 s)."""
    targets = [{"name": f"sleepy{i}", "dsn": cluster.dsn()} for i in range(8)]
    sleepy = {
        "name": "sleepy",
        "sql": "SELECT 1 AS v FROM pg_sleep(0.6)",
        "metrics": [{"name": "pgce_test_sleepy", "help": "h", "value": "v"}],
    }
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"targets": targets, "queries": [sleepy]}))
    proc = exporter_process("--config.file", str(config))
    proc.wait_ready()
    names = [t["name"] for t in targets]
    success = "pg_connections_exporter_query_success"

    def all_ran() -> Samples | None:
        s = proc.scrape()
        return s if all(s.value(success, target=t, query="sleepy") == 1 for t in names) else None

    wait_until(all_ran, 60, 0.5, "every target's query ran")
    took = []
    for _ in range(3):
        start = time.monotonic()
        status, body, _ = http_get(f"{proc.url}/metrics", timeout=30)
        took.append(time.monotonic() - start)
        assert status == 200
        s = Samples(body)
        assert [t for t in names if s.value(success, target=t, query="sleepy") != 1] == []
    # Half of the serial time, with room for a loaded machine.
    assert min(took) < 2.4, f"the targets' waits did not overlap: {took}"
