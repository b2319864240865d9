"""The HTTP server's limits on a real loopback socket, with small limits so that each one is
reached in well under a second: the connection cap (503 at once), the header timeout (408, or
closed when nothing came), the header size cap (431), keep-alive until the idle timeout, and
idle connections costing no thread."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web

from exporter.web.httpserver import BoundedHTTPServer, HTTPLimits, client_address
from tests.unit.fakes import wait_for


async def hello(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=f"hello {threading.current_thread().name}\n".encode())


LIMITS = HTTPLimits(
    max_connections=3, header_timeout=0.4, idle_timeout=0.8, max_header_bytes=2048, workers=2
)


@pytest.fixture
def server() -> Iterator[BoundedHTTPServer]:
    srv = BoundedHTTPServer(("127.0.0.1", 0), hello, LIMITS)
    thread = threading.Thread(target=srv.serve_forever, name="http", daemon=True)
    thread.start()
    srv.wait_started()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def connect(server: BoundedHTTPServer) -> socket.socket:
    sock = socket.create_connection(server.server_address[:2], timeout=5)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_is_answered_and_kept_alive(server: BoundedHTTPServer) -> None:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
    for _ in range(3):
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"hello http\n", "answered on the event loop's thread"
    assert server.open_connections == 1, "three requests, one connection"
    conn.close()


def test_beyond_the_cap_a_connection_gets_503_at_once(server: BoundedHTTPServer) -> None:
    held = [connect(server) for _ in range(LIMITS.max_connections)]
    wait_for(lambda: server.open_connections == LIMITS.max_connections)
    extra = connect(server)
    started = time.monotonic()
    answer = read_all(extra)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert time.monotonic() - started < LIMITS.header_timeout, "refused at once, not timed out"
    for sock in [*held, extra]:
        sock.close()


def test_silent_and_slow_clients_are_dropped_after_the_header_timeout(
    server: BoundedHTTPServer,
) -> None:
    silent, slow = connect(server), connect(server)
    slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    started = time.monotonic()
    assert read_all(silent) == b"", "nothing sent: closed without an answer"
    assert read_all(slow).startswith(b"HTTP/1.1 408")
    elapsed = time.monotonic() - started
    assert LIMITS.header_timeout * 0.9 <= elapsed < 5, elapsed
    wait_for(lambda: server.open_connections == 0)


def test_oversized_headers_get_431(server: BoundedHTTPServer) -> None:
    sock = connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (LIMITS.max_header_bytes + 10))
    assert read_all(sock).startswith(b"HTTP/1.1 431")


def test_a_keep_alive_connection_is_closed_after_the_idle_timeout(
    server: BoundedHTTPServer,
) -> None:
    sock = connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    # Past the header timeout, still within the idle timeout: the connection is kept.
    time.sleep(LIMITS.header_timeout + 0.1)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert read_all(sock) == b""
    assert LIMITS.idle_timeout * 0.9 <= time.monotonic() - started < 5


def test_idle_connections_hold_no_worker(server: BoundedHTTPServer) -> None:
    """Both workers' worth of silent connections, and a request still gets through, on the
    event loop's one thread."""
    idle = [connect(server) for _ in range(LIMITS.workers)]
    wait_for(lambda: server.open_connections == LIMITS.workers)
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=2)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    conn.close()
    for sock in idle:
        sock.close()


def test_a_request_body_that_stops_coming_gets_408_within_the_io_timeout() -> None:
    """POST /-/reload announcing a body it never sends: answered 408 and closed after the I/O
    timeout, and the reload does not run."""
    from prometheus_client import CollectorRegistry

    from exporter.web.webapp import WebApp, make_server, serve_in_thread

    reloads: list[int] = []

    def reload() -> list[str]:
        reloads.append(1)
        return []

    app = WebApp(CollectorRegistry(), "/metrics", lambda: [], reload=reload)
    srv = make_server(app, "127.0.0.1", 0, HTTPLimits(io_timeout=0.5, header_timeout=5))
    serve_in_thread(srv)
    try:
        sock = connect(srv)
        sock.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        assert read_all(sock).startswith(b"HTTP/1.1 408")
        assert 0.45 <= time.monotonic() - started < 5
        assert reloads == []
        sock = connect(srv)  # a whole body: reloaded
        sock.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert reloads == [1]
        sock.close()
    finally:
        srv.shutdown()
        srv.server_close()


async def peer(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=(client_address(request) or "").encode())


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback (::1)")
def test_an_empty_host_listens_on_ipv6_and_ipv4() -> None:
    """`:PORT` (the default --web.listen-address) is every address of both families, and an
    IPv4 client is named by its IPv4 address, not the dual-stack socket's ::ffff: form."""
    srv = BoundedHTTPServer(("", 0), peer, LIMITS)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.wait_started()
    try:
        port = srv.server_address[1]
        for host, address in (("::1", b"::1"), ("127.0.0.1", b"127.0.0.1")):
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/")
            assert conn.getresponse().read() == address
            conn.close()
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_a_named_host_listens_on_that_address_only(server: BoundedHTTPServer) -> None:
    port = server.server_address[1]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("::1", port), timeout=5).close()
