"""/probe against a real PostgreSQL: configured targets by name, servers from discovery through
auth modules (one held connection however many probes, closed when idle, capped), the host
allow-list (refused with nothing connecting), and bad parameters answered with a 4xx."""

from __future__ import annotations

import logging
import secrets
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import yaml

from exporter.config.model import parse_config
from exporter.db.connection import APPLICATION_NAME
from harness.localpg import LocalCluster
from tests.conftest import new_cluster
from tests.helpers import Samples, http_get, wait_until

PASSWORD = f"pw-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = new_cluster("18", max_connections=60)
    try:
        c.hba_prepend("host all probe_mon 127.0.0.1/32 scram-sha-256")
        c.execute(
            f"CREATE ROLE probe_mon LOGIN PASSWORD '{PASSWORD}'",
            "CREATE ROLE probe_login LOGIN",
            # Its rights only after SET ROLE (the auth module's role).
            "GRANT pg_monitor TO probe_login WITH INHERIT FALSE",
            "CREATE DATABASE shop",
        )
        yield c
    finally:
        c.stop()


def _backends(cluster: LocalCluster, **where: str) -> list[tuple[str, str]]:
    """The exporter's sessions on the server: (usename, datname)."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT usename, datname FROM pg_stat_activity WHERE application_name = %s",
            (APPLICATION_NAME,),
        ).fetchall()
    return sorted(
        (u, d)
        for u, d in rows
        if all({"usename": u, "datname": d}[k] == v for k, v in where.items())
    )


def _probe(url: str, **params: str) -> tuple[int, str]:
    status, body, _ = http_get(f"{url}/probe?{urllib.parse.urlencode(params)}")
    return status, body


def _config(cluster: LocalCluster, tmp_path: Path, **probe: object) -> dict:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    return {
        "targets": [{"name": "main", "dsn": cluster.dsn(), "labels": {"env": "test"}}],
        "auth_modules": {
            "mon": {
                "type": "userpass",
                "userpass": {"username": "probe_mon"},
                "password_file": str(tmp_path / "pw"),
                "options": {"sslmode": "disable"},
            },
            "wrong": {
                "type": "userpass",
                "userpass": {"username": "probe_mon", "password": "not-the-password"},
            },
            "as_monitor": {"userpass": {"username": "probe_login"}, "role": "pg_monitor"},
            "no_role": {"userpass": {"username": "probe_login"}},
        },
        "probe": {"allowed_hosts": ["127.0.0.0/8", "localhost"], **probe},
    }


def _series(samples: Samples, **labels: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (name, tuple(sorted(ls.items())))
        for name, ls, _ in samples.rows
        if all(ls.get(k) == v for k, v in labels.items())
    }


def _shapes(samples: Samples, **labels: str) -> set[tuple[str, tuple[str, ...]]]:
    return {(name, tuple(k for k, _ in ls)) for name, ls in _series(samples, **labels)}


def test_probe_of_a_configured_target_is_its_part_of_metrics(
    cluster: LocalCluster, exporter_for, tmp_path: Path
) -> None:
    config = _config(cluster, tmp_path)
    config["targets"].append({"name": "other", "dsn": cluster.dsn(host="127.0.0.1")})
    running = exporter_for(config)
    running.scrape_until(lambda s: s.get("pg_up", target="main") == 1, what="main up")
    status, body = _probe(running.url, target="main")
    assert status == 200, body
    probed = Samples(body)
    assert probed.value("pg_up", target="main") == 1
    assert not _series(probed, target="other"), "a probe serves only its target"
    everything = running.scrape()
    # The same metrics (names and label names) as /metrics has for that target (label values
    # follow the sessions of the moment, and so do the series that exist only while a session
    # qualifies, such as the other target's scrape transaction, idle in transaction for a
    # moment); the exporter-wide ones stay on /metrics.
    sparse = {
        "pg_connections_idle_in_transaction_oldest_seconds",
        "pg_connections_reclaimable_by_application",
        "pg_connections_reclaimable_by_user",
        "pg_connections_reclaimable_by_client",
        "pg_connections_blockers_by_application",
        "pg_connections_blocked_by_application",
    }

    def steady(samples: Samples) -> set[tuple[str, tuple[str, ...]]]:
        return {s for s in _shapes(samples, target="main") if s[0] not in sparse}

    assert steady(probed) == steady(everything)
    assert len(_shapes(probed, target="main")) > 20
    self_metrics = {"pg_up", "pg_connections_exporter_query_success"}
    assert {x for x in _series(probed, target="main") if x[0] in self_metrics} == {
        x for x in _series(everything, target="main") if x[0] in self_metrics
    }
    assert probed.value("pg_connections_max", target="main", env="test") == 60
    # Still the one held connection per configured target.
    assert len(_backends(cluster, usename="postgres")) == 2


@pytest.mark.parametrize(
    ("query", "status", "reason"),
    [
        ({"target": "nope"}, 404, "no configured target named 'nope'"),
        ({}, 400, "give one target="),
        ({"target": "main", "modul": "x"}, 400, "unknown parameter(s) modul"),
        ({"target": "main", "module": "x", "auth_module": "y"}, 400, "at most one auth_module"),
        ({"target": "127.0.0.1:5432", "auth_module": "ghost"}, 404, "auth_module 'ghost'"),
        ({"target": "127.0.0.1:99999", "auth_module": "mon"}, 400, "port"),
        ({"target": "a b", "auth_module": "mon"}, 400, "spaces or control characters"),
        ({"target": "u:pw@127.0.0.1", "auth_module": "mon"}, 400, "credentials"),
        ({"target": "127.0.0.1/db?host=evil", "auth_module": "mon"}, 400, "options"),
        ({"target": "127.1", "auth_module": "mon"}, 400, "neither a name nor a dotted"),
        ({"target": "http://127.0.0.1", "auth_module": "mon"}, 400, "scheme"),
        ({"target": "10.1.2.3", "auth_module": "mon"}, 403, "matches no entry"),
        ({"target": "db1.example.com", "auth_module": "mon"}, 403, "host name db1.example.com"),
    ],
)
def test_bad_probes_get_a_4xx_with_the_reason(
    cluster: LocalCluster, exporter_for, tmp_path: Path, query, status, reason
) -> None:
    running = exporter_for(_config(cluster, tmp_path))
    got, body = _probe(running.url, **query)
    assert (got, reason in body) == (status, True), body


def test_dsn_as_target_is_refused_without_echoing_it(
    cluster: LocalCluster, exporter_for, tmp_path: Path
) -> None:
    running = exporter_for(_config(cluster, tmp_path))
    status, body = _probe(running.url, target="postgresql://u:s3cret-pw@db1/postgres")
    assert status == 404 and "auth_module=NAME" in body
    assert "s3cret-pw" not in body


def test_dynamic_target_one_connection_for_50_concurrent_probes(
    cluster: LocalCluster, exporter_for, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    running = exporter_for(_config(cluster, tmp_path))
    target = f"127.0.0.1:{cluster.port}/shop"
    with ThreadPoolExecutor(50) as pool:
        answers = list(
            pool.map(lambda _: _probe(running.url, target=target, auth_module="mon"), range(50))
        )
    assert [status for status, _ in answers] == [200] * 50, answers[0][1]
    ups = [Samples(body).value("pg_up", target=target) for _, body in answers]
    assert sum(ups) >= 1
    assert _backends(cluster, usename="probe_mon") == [("probe_mon", "shop")]
    # Up on every later probe, still through that one connection.
    _status, body = _probe(running.url, target=target, auth_module="mon")
    s = Samples(body)
    assert s.value("pg_up", target=target) == 1
    assert s.value("pg_connections_max", target=target) == 60
    assert _backends(cluster, usename="probe_mon") == [("probe_mon", "shop")]
    metrics = running.scrape()
    assert metrics.value("pg_connections_exporter_probe_targets") == 1
    assert not _series(metrics, target=target), "probe targets are served by /probe only"
    _, page, _ = http_get(running.url + "/")
    assert target in page and "auth_module mon" in page
    # The password went to the server, nowhere else.
    for text in [*(b for _, b in answers), metrics.text, page, caplog.text]:
        assert PASSWORD not in text


def test_auth_module_role_and_wrong_password(
    cluster: LocalCluster, exporter_for, tmp_path: Path
) -> None:
    running = exporter_for(_config(cluster, tmp_path))
    target = f"127.0.0.1:{cluster.port}"
    # A client of another role for the monitoring role to see (or not).
    with psycopg.connect(cluster.dsn(dbname="shop"), autocommit=True):

        def hidden(module: str) -> float | None:
            s = Samples(_probe(running.url, target=target, auth_module=module)[1])
            return s.get("pg_connections_state_hidden", target=f"{target}/postgres")

        # probe_login does not inherit pg_monitor's rights: other roles' sessions are hidden
        # from it, unless the auth module's role makes the session act as pg_monitor.
        assert wait_until(lambda: (hidden("no_role") or 0) >= 1, 20, 0.2, "no_role up")
        assert wait_until(lambda: hidden("as_monitor") == 0, 20, 0.2, "role pg_monitor")
    status, body = _probe(running.url, target=target, auth_module="wrong")
    s = Samples(body)
    assert status == 200 and s.value("pg_up", target=f"{target}/postgres") == 0
    assert "not-the-password" not in body


def test_refused_host_is_never_connected_to(
    cluster: LocalCluster, exporter_for, tmp_path: Path
) -> None:
    # A listener on an address the allow-list does not cover (127.0.0.2 is loopback too).
    with socket.socket() as listener:
        listener.bind(("127.0.0.2", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        config = _config(cluster, tmp_path)
        config["probe"]["allowed_hosts"] = ["127.0.0.1/32", "db-*.example.com"]
        running = exporter_for(config)
        for target in (f"127.0.0.2:{port}", f"localhost:{port}"):
            status, body = _probe(running.url, target=target, auth_module="mon")
            assert status == 403, body
            assert "allowed_hosts" in body and "nothing connected" in body
        assert select.select([listener], [], [], 1.0)[0] == [], "something connected"
        # The same listener, allowed: the probe does connect (the check above can fail).
        config["probe"]["allowed_hosts"] = ["127.0.0.2"]
        allowed = exporter_for(config)
        _probe(allowed.url, target=f"127.0.0.2:{port}", auth_module="mon")
        assert select.select([listener], [], [], 5.0)[0] == [listener]
    metrics = running.scrape()
    assert metrics.value("pg_connections_exporter_probe_refusals_total", reason="not_allowed") == 2
    assert metrics.value("pg_connections_exporter_probe_targets") == 0
    _, page, _ = http_get(running.url + "/")
    assert "Probe targets held: 0 of at most 100" in page and "not_allowed 2" in page


def test_no_dynamic_targets_unless_allowed(
    cluster: LocalCluster, exporter_for, tmp_path: Path
) -> None:
    config = _config(cluster, tmp_path)
    del config["probe"]
    running = exporter_for(config)
    status, body = _probe(running.url, target=f"127.0.0.1:{cluster.port}", auth_module="mon")
    assert status == 403 and "probes of servers are off" in body


def test_cap_and_idle_close(cluster: LocalCluster, exporter_for, tmp_path: Path) -> None:
    running = exporter_for(_config(cluster, tmp_path, max_targets=2, idle_timeout="4s"))
    port = cluster.port
    for db in ("postgres", "shop"):
        status, body = _probe(running.url, target=f"127.0.0.1:{port}/{db}", auth_module="mon")
        assert status == 200, body
    status, body = _probe(running.url, target=f"localhost:{port}/postgres", auth_module="mon")
    assert status == 503 and "probe.max_targets" in body, body
    wait_until(lambda: len(_backends(cluster, usename="probe_mon")) == 2, what="2 held")

    # Keep probing one; the other is closed once idle, on the server too.
    def only_shop_held() -> bool:
        _probe(running.url, target=f"127.0.0.1:{port}/shop", auth_module="mon")
        return _backends(cluster, usename="probe_mon") == [("probe_mon", "shop")]

    wait_until(only_shop_held, 30, 0.3, "the idle target's connection to close")
    metrics = running.scrape()
    assert metrics.value("pg_connections_exporter_probe_evictions_total", reason="idle") == 1
    assert metrics.value("pg_connections_exporter_probe_refusals_total", reason="limit") == 1
    assert metrics.value("pg_connections_exporter_probe_targets_limit") == 2
    # Room again under the cap.
    status, _ = _probe(running.url, target=f"localhost:{port}/postgres", auth_module="mon")
    assert status == 200
    wait_until(lambda: not _backends(cluster, usename="probe_mon"), 15, 0.2, "all closed")


def test_reload_that_disallows_a_host_closes_its_connection(
    cluster: LocalCluster, exporter_for, tmp_path: Path
) -> None:
    config = _config(cluster, tmp_path, idle_timeout="10m")
    running = exporter_for(config)
    target = f"127.0.0.1:{cluster.port}/shop"
    assert _probe(running.url, target=target, auth_module="mon")[0] == 200
    wait_until(lambda: _backends(cluster, usename="probe_mon"), what="held")
    config["probe"]["allowed_hosts"] = ["localhost"]
    scraper = running.exporter.scraper
    scraper.call(scraper.reload(parse_config(config, "reloaded")))
    wait_until(lambda: not _backends(cluster, usename="probe_mon"), 20, 0.2, "closed")
    metrics = running.scrape()
    assert metrics.value("pg_connections_exporter_probe_evictions_total", reason="config") == 1
    status, body = _probe(running.url, target=target, auth_module="mon")
    assert status == 403 and "localhost" in body


def test_junk_query_strings_get_a_4xx(cluster: LocalCluster, exporter_for, tmp_path: Path) -> None:
    running = exporter_for(_config(cluster, tmp_path))
    for query in (
        "target=%ZZ",
        "&&&",
        ";",
        "target=[&auth_module=mon",
        "target=[::1&auth_module=mon",
        "target=%00&auth_module=mon",
        "target=%C3%A9t%C3%A9&auth_module=mon",
        "target=a=b=c",
        "target=" + "x" * 5000 + "&auth_module=mon",
        "target=127.0.0.1:5432&auth_module=mon&auth_module=mon",
        "target=127.0.0.1&auth_module=%FF",
    ):
        status, body, _ = http_get(f"{running.url}/probe?{query}")
        assert 400 <= status < 500, (query, status, body)
        assert body.strip(), query


class _SilentServer:
    """A listening socket that accepts every connection and never says a word: a server
    whose connection attempts hang until their timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                self._held.append(self.sock.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in [self.sock, *self._held]:
            s.close()


def test_probes_of_a_silent_server_hold_no_http_worker(
    cluster: LocalCluster, exporter_process, tmp_path: Path
) -> None:
    """More slow probes than the HTTP server has workers (8), each of a server that accepts
    and never answers: /healthz and a /metrics scrape still answer within a second, and every
    probe answers by its deadline with pg_up 0."""
    silent = _SilentServer()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(cluster, tmp_path)))
    proc = exporter_process("--config.file", str(config))
    try:
        proc.wait_ready()
        proc.scrape()  # warm: the configured target connected
        probes = 12
        timeout = {"X-Prometheus-Scrape-Timeout-Seconds": "6"}

        def probe(i: int) -> tuple[int, str, float]:
            params = {"target": f"127.0.0.1:{silent.port}/db{i}", "auth_module": "mon"}
            start = time.monotonic()
            status, body, _ = http_get(
                f"{proc.url}/probe?{urllib.parse.urlencode(params)}", timeout, timeout=30
            )
            return status, body, time.monotonic() - start

        with ThreadPoolExecutor(probes) as pool:
            running = [pool.submit(probe, i) for i in range(probes)]
            wait_until(lambda: _held_by_exporter(silent) >= 8, 10, what="the probes connecting")
            for path in ("/healthz", "/metrics"):
                start = time.monotonic()
                status, _, _ = http_get(f"{proc.url}{path}", timeout=10)
                took = time.monotonic() - start
                assert status == 200 and took < 1.0, (path, status, took)
            assert not any(r.done() for r in running)  # they were still waiting meanwhile
            for r in running:
                status, body, took = r.result()
                assert status == 200 and took < 6.0, (status, took)
                assert Samples(body).value("pg_up") == 0
    finally:
        silent.close()


def _held_by_exporter(silent: _SilentServer) -> int:
    return len(silent._held)


def test_probes_of_several_servers_run_side_by_side(
    cluster: LocalCluster, exporter_for, tmp_path: Path
) -> None:
    """Four servers from discovery, each scrape taking a second (a slow custom query), probed
    at once by an exporter with one configured target: each answers in about a second, not
    one after the other (their runs share the scrape pool, which must not be sized by the
    configured targets alone)."""
    config = _config(cluster, tmp_path)
    config["queries"] = [
        {
            "name": "slow",
            "sql": "SELECT 1 AS v FROM pg_sleep(1)",
            "metrics": [{"name": "pgce_test_slow", "help": "h", "value": "v"}],
        }
    ]
    running = exporter_for(config)
    targets = [
        f"{host}:{cluster.port}/{db}"
        for host in ("127.0.0.1", "localhost")
        for db in ("postgres", "shop")
    ]
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}

    def probe(target: str) -> tuple[float, Samples]:
        query = urllib.parse.urlencode({"target": target, "auth_module": "mon"})
        start = time.monotonic()
        status, body, _ = http_get(f"{running.url}/probe?{query}", headers)
        assert status == 200, body
        return time.monotonic() - start, Samples(body)

    for target in targets:  # connected, one at a time
        wait_until(lambda t=target: probe(t)[1].value("pg_up", target=t) == 1, 30, what=target)
    with ThreadPoolExecutor(len(targets)) as pool:
        answers = dict(zip(targets, pool.map(probe, targets), strict=True))
    for target, (took, samples) in answers.items():
        assert samples.value("pgce_test_slow", target=target) == 1, target
        assert took < 2.5, f"{target} answered after {took:.2f}s: the probes ran in turn"
