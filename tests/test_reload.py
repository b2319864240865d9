"""Reload: SIGHUP and POST /-/reload switch to a new config, keep held connections, and refuse a
bad config while the old one keeps running."""

from __future__ import annotations

import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from exporter.db.connection import APPLICATION_NAME
from harness.localpg import LocalCluster
from tests.conftest import new_cluster
from tests.helpers import Samples, wait_until

RELOAD_OK = "pg_connections_exporter_config_last_reload_successful"
RELOAD_AT = "pg_connections_exporter_config_last_reload_success_timestamp_seconds"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = new_cluster("18", max_connections=30)
    try:
        yield c
    finally:
        c.stop()


def _backends(cluster: LocalCluster) -> dict[int, str]:
    """The exporter's backends on the server: pid -> client address kind (socket or tcp)."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, coalesce(host(client_addr), 'socket') FROM pg_stat_activity "
            "WHERE application_name = %s",
            (APPLICATION_NAME,),
        ).fetchall()
    return {pid: kind for pid, kind in rows}


def _post(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _write(path: Path, config: dict) -> None:
    path.write_text(yaml.safe_dump(config))


def test_sighup_and_post_reload(cluster: LocalCluster, exporter_process, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yml"
    one = {"targets": [{"name": "a", "dsn": cluster.dsn()}]}
    _write(config_file, one)
    proc = exporter_process("--config.file", str(config_file))
    proc.wait_ready()
    s = proc.scrape()
    assert s.value("pg_up", target="a") == 1
    assert s.value(RELOAD_OK) == 1
    started_at = s.value(RELOAD_AT)
    held = _backends(cluster)
    assert list(held.values()) == ["socket"]

    # SIGHUP with a second target: it appears; the first keeps its very connection.
    two = {
        "targets": [
            {"name": "a", "dsn": cluster.dsn()},
            {"name": "b", "dsn": cluster.dsn(host="127.0.0.1"), "labels": {"env": "test"}},
        ]
    }
    _write(config_file, two)
    proc.proc.send_signal(signal.SIGHUP)

    def reloaded() -> Samples | None:
        s = proc.scrape()
        return s if s.get("pg_up", target="b") == 1 else None

    s = wait_until(reloaded, what="target b after SIGHUP")
    assert s.value("pg_connections_max", target="b", env="test") == 30
    assert s.value(RELOAD_OK) == 1
    assert s.value(RELOAD_AT) > started_at
    after = _backends(cluster)
    assert set(held) <= set(after), "reload replaced a connection whose settings did not change"
    assert sorted(after.values()) == ["127.0.0.1", "socket"]

    # A broken config: refused, named in the log, the running config stays.
    config_file.write_text("targets:\n  - name: a\n    dsn: x\n    colour: blue\n")
    proc.proc.send_signal(signal.SIGHUP)
    s = wait_until(
        lambda: (s := proc.scrape()).value(RELOAD_OK) == 0 and s, what="the reload to be refused"
    )
    assert s.value("pg_up", target="a") == 1 and s.value("pg_up", target="b") == 1
    wait_until(lambda: "colour" in proc.output(), what="the refusal in the log")
    assert f"{config_file}: targets[0].colour" in proc.output()

    # POST /-/reload says why, with a 500, and then succeeds once the file is fixed.
    status, body = _post(f"{proc.url}/-/reload")
    assert status == 500
    assert f"{config_file}: targets[0].colour: Extra inputs are not permitted" in body
    _write(config_file, one)
    status, body = _post(f"{proc.url}/-/reload")
    assert (status, body) == (200, "configuration reloaded\n")
    s = proc.scrape()
    assert s.value(RELOAD_OK) == 1
    assert s.get("pg_up", target="b") is None
    # The dropped target's connection is closed; the kept one is still the same.
    wait_until(lambda: set(_backends(cluster)) == set(held), what="b's connection to close")
    assert proc.stop() == 0


def test_reload_while_a_scrape_waits_on_a_replaced_connection(
    cluster: LocalCluster, exporter_for
) -> None:
    """Found by the soak: closing a replaced target's pool under a waiting scrape made the whole
    scrape fail. The old pool now closes when its run has ended."""
    from exporter.config.model import parse_config
    from harness.localpg import free_port

    def config(connect_timeout: float) -> dict:
        return {
            "targets": [
                {"name": "a", "dsn": cluster.dsn()},
                {
                    "name": "down",
                    "dsn": f"host=127.0.0.1 port={free_port()} user=x dbname=x",
                    "connect_timeout": connect_timeout,
                },
            ]
        }

    running = exporter_for(config(2))
    results: list[Samples | BaseException] = []

    def scrape() -> None:
        try:
            results.append(running.scrape())
        except BaseException as exc:
            results.append(exc)

    waiting = threading.Thread(target=scrape)
    waiting.start()  # waits up to 2 s for "down"
    scraper = running.exporter.scraper
    down = next(t for t in scraper.targets if t.target.name == "down")
    wait_until(lambda: scraper.busy(down), what="the scrape to be waiting on the down target")
    scraper.call(scraper.reload(parse_config(config(1), "reloaded")))
    waiting.join(30)
    assert len(results) == 1 and isinstance(results[0], Samples), results
    assert results[0].value("pg_up", target="a") == 1
    assert results[0].value("pg_up", target="down") == 0
    after = running.scrape()
    assert after.value("pg_up", target="a") == 1 and after.value("pg_up", target="down") == 0
