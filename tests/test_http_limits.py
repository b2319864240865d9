"""HTTP limits, against the real exporter process: a socket that sends nothing (or its headers
a byte at a time) is dropped after the header timeout, a keep-alive scrape connection survives
between scrapes and is closed after the idle timeout, the connection cap answers 503 at once,
oversized headers get 431, and idle sockets cost no threads."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.app import Exporter
from exporter.config.model import parse_config
from exporter.web.httpserver import HTTPLimits
from exporter.web.webconfig import WatchedWebConfig
from harness.localpg import LocalCluster
from tests.conftest import new_cluster
from tests.helpers import Samples, wait_until
from tests.test_webconfig import pki  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = new_cluster("18", max_connections=20)
    try:
        yield c
    finally:
        c.stop()


def _start(exporter_process, cluster: LocalCluster, *flags: str):
    proc = exporter_process("--dsn", cluster.dsn(), *flags)
    proc.wait_ready()
    return proc


def _connect(proc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proc.port), timeout=30)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)
    return data == b"" or data.startswith(b"HTTP/1.1 408")


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_silent_and_slow_sockets_are_dropped_after_the_header_timeout(
    cluster: LocalCluster, exporter_process
) -> None:
    proc = _start(exporter_process, cluster, "--web.read-header-timeout", "2s")
    silent = _connect(proc)
    slow = _connect(proc)
    opened = time.monotonic()
    slow.sendall(b"GET /metrics HTTP/1.1\r\n")
    assert not _closed_by_peer(silent) and not _closed_by_peer(slow)
    # The slow one keeps sending, a byte at a time: that does not extend its time.
    while not _closed_by_peer(slow):
        assert time.monotonic() - opened < 20, "a slow client kept its socket"
        try:
            slow.send(b"X")
        except OSError:
            break
        time.sleep(0.2)
    assert time.monotonic() - opened >= 2.0
    wait_until(lambda: _closed_by_peer(silent), 20, what="the silent socket to be closed")
    assert proc.scrape().value("pg_up", target="default") == 1
    silent.close()
    slow.close()


def test_keep_alive_scrapes_keep_their_connection_until_the_idle_timeout(
    cluster: LocalCluster, exporter_process
) -> None:
    proc = _start(
        exporter_process,
        cluster,
        "--web.read-header-timeout",
        "1s",
        "--web.idle-timeout",
        "4s",
    )
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
    conn.request("GET", "/metrics")
    first = conn.getresponse()
    assert first.status == 200 and Samples(first.read().decode()).value("pg_up") == 1
    sock = conn.sock
    # Longer than the header timeout, shorter than the idle timeout: the next scrape comes.
    time.sleep(2.0)
    conn.request("GET", "/metrics")
    second = conn.getresponse()
    assert second.status == 200 and Samples(second.read().decode()).value("pg_up") == 1
    assert conn.sock is sock, "the keep-alive connection was not kept"
    # Then nothing more: after the idle timeout the exporter closes it.
    assert sock is not None
    wait_until(lambda: _closed_by_peer(sock), 20, what="the idle connection to be closed")
    conn.close()


def test_connection_cap_refuses_at_once(cluster: LocalCluster, exporter_process) -> None:
    proc = _start(
        exporter_process, cluster, "--web.max-connections", "5", "--web.read-header-timeout", "60s"
    )
    held = [_connect(proc) for _ in range(5)]

    # The server may take a moment to accept the five: poll until the sixth is refused.
    def refused() -> bool:
        with _connect(proc) as extra:
            extra.settimeout(5)
            try:
                return extra.recv(4096).startswith(b"HTTP/1.1 503")
            except TimeoutError:
                raise AssertionError("the sixth connection got no answer: it waits") from None

    wait_until(refused, 20, what="a connection beyond the cap to be refused with 503")
    for sock in held:
        sock.close()
    wait_until(lambda: proc.scrape().value("pg_up") == 1, 20, what="scrapes once below the cap")


def test_oversized_headers_get_431(cluster: LocalCluster, exporter_process) -> None:
    proc = _start(exporter_process, cluster)
    with _connect(proc) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        try:
            for _ in range(200):
                sock.sendall(b"X-Padding: " + b"x" * 1000 + b"\r\n")
        except OSError:
            pass  # closed by the server mid-way: the answer is waiting
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_idle_sockets_cost_no_threads(cluster: LocalCluster, exporter_process) -> None:
    proc = _start(exporter_process, cluster, "--web.read-header-timeout", "60s")
    assert proc.scrape().value("pg_up") == 1
    before = _threads(proc.proc.pid)
    idle = [_connect(proc) for _ in range(300)]
    try:
        # Each with a request begun, as a slow client's would be.
        for sock in idle[::2]:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        s = proc.scrape()
        assert s.value("pg_up") == 1
        assert _threads(proc.proc.pid) <= before + 8, "idle sockets made threads"
    finally:
        for sock in idle:
            sock.close()


def test_tls_silent_clients_dropped_and_keep_alive_kept(
    cluster: LocalCluster,
    pki: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """Over TLS the handshake is part of the header time, done without a thread."""
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
    )
    config = parse_config({"targets": [{"name": "pg", "dsn": cluster.dsn()}]}, "test config")
    limits = HTTPLimits(header_timeout=1.0, idle_timeout=30.0)
    exporter = Exporter(
        config, "127.0.0.1", 0, web_config=WatchedWebConfig(str(web)), http_limits=limits
    )
    exporter.start()
    try:
        silent = socket.create_connection(("127.0.0.1", exporter.port), timeout=30)
        trusted = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", exporter.port, timeout=30, context=trusted)
        for _ in range(2):
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"ok\n")
            sock = conn.sock
            time.sleep(1.5)  # past the header timeout: a kept connection is idle, not timed out
        assert conn.sock is sock
        wait_until(lambda: _closed_by_peer(silent), 20, what="the silent TLS client dropped")
        conn.close()
        silent.close()
    finally:
        exporter.stop()


def test_tls_handshakes_count_toward_the_connection_cap(
    cluster: LocalCluster,
    pki: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """Clients that connect over TLS and never say hello hold connections too: beyond the
    cap, a new one is closed at once (over TLS no 503 can be written before a handshake)."""
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
    )
    config = parse_config({"targets": [{"name": "pg", "dsn": cluster.dsn()}]}, "test config")
    limits = HTTPLimits(max_connections=3, header_timeout=60.0)
    exporter = Exporter(
        config, "127.0.0.1", 0, web_config=WatchedWebConfig(str(web)), http_limits=limits
    )
    exporter.start()
    try:
        silent = [socket.create_connection(("127.0.0.1", exporter.port), timeout=30) for _ in "abc"]
        wait_until(lambda: exporter.server.open_connections == 3, 20, what="three held")
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=30) as extra:
            extra.settimeout(5)
            started = time.monotonic()
            try:
                assert extra.recv(4096) == b"", "beyond the cap: closed without an answer"
            except ConnectionResetError:
                pass
            except TimeoutError:
                raise AssertionError("the fourth connection was kept waiting") from None
            assert time.monotonic() - started < 5
        for sock in silent:
            sock.close()
        wait_until(lambda: exporter.server.open_connections == 0, 20, what="all released")
        trusted = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", exporter.port, timeout=30, context=trusted)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        exporter.stop()
