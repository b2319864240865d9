"""The HTTP server's connection handling: bounded in threads, connections, time and bytes.

A thread per connection (http.server's ThreadingHTTPServer) lets a client that connects and
sends nothing hold a thread forever, and a few thousand such clients exhaust the process. Here,
as in Go's net/http, one thread waits on every connection at once (a selector) until a request's
headers have arrived whole, and only then hands the request to a small fixed pool of workers,
which run the usual `BaseHTTPRequestHandler` on it. So:
- a connection costs a descriptor and a buffer while it waits, never a thread;
- its request headers must arrive within `header_timeout` of the connection (or of the first
  byte after an idle keep-alive pause), TLS handshake included, and be at most
  `max_header_bytes` (431 beyond);
- between requests a keep-alive connection may idle for `idle_timeout`, longer than any sane
  scrape interval, so that Prometheus's scrapes keep their connection;
- beyond `max_connections` open connections a new one is answered 503 (plain HTTP) or closed
  (TLS) at once, never left waiting;
- a worker reads a request body and writes the answer with `io_timeout` on the socket.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HTTPLimits:
    """What one exporter's HTTP server allows (README: "HTTP limits")."""

    max_connections: int = 4096
    header_timeout: float = 10.0
    idle_timeout: float = 360.0
    io_timeout: float = 30.0
    max_header_bytes: int = 64 << 10
    workers: int = 8


_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8"
    b"\r\nContent-Length: 29\r\nConnection: close\r\n\r\nrequest headers are too large\n"
)
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 16\r\nConnection: close\r\n\r\nrequest timeout\n"
)


# The errors of a host without IPv6 (kernel without it, or disabled): IPv4 alone then.
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port. An empty host is every address, IPv6 and IPv4 on one
    dual-stack socket where the host has IPv6 (as Go's `:9832`), else IPv4's alone."""
    if host == "":
        if socket.has_ipv6:
            try:
                return _listen(socket.AF_INET6, ("::", port), dual_stack=True)
            except OSError as exc:
                if exc.errno not in _NO_IPV6:
                    raise
        return _listen(socket.AF_INET, ("", port))
    return _listen(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))


def _listen(family: int, address: tuple[str, int], dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def _unmapped(address: Any) -> Any:
    """An IPv4 client of a dual-stack socket (::ffff:192.0.2.1) as its IPv4 address."""
    if isinstance(address, tuple) and str(address[0]).startswith("::ffff:") and "." in address[0]:
        return (address[0][7:], address[1])
    return address


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    address: Any
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)
    handshaking: bool = False
    idle: bool = False  # between requests: the idle timeout applies until a byte arrives


@dataclass(frozen=True)
class _Deferred:
    """A request whose answer waits for `answer`; `finish` writes it and says whether the
    connection is kept."""

    answer: Future[Any]
    finish: Callable[[], bool]


class _Reader:
    """The `rfile` a handler reads: the bytes already received, then the socket."""

    def __init__(self, sock: socket.socket, buffer: bytearray, max_bytes: int) -> None:
        self._sock = sock
        self._buffer = buffer
        self._max = max_bytes

    def _fill(self) -> bool:
        chunk = self._sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 and (limit < 0 or end < limit):
                return self._take(end + 1)
            if 0 <= limit <= len(self._buffer):
                return self._take(limit)
            if not self._fill():
                return self._take(len(self._buffer))

    def read(self, n: int = -1) -> bytes:
        want = self._max if n < 0 else n
        while len(self._buffer) < want and self._fill():
            pass
        return self._take(min(want, len(self._buffer)))

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def remaining(self) -> bytearray:
        """What was received beyond the request (a pipelined next one)."""
        return self._buffer

    def close(self) -> None:
        pass


class BoundedHTTPServer:
    """An HTTP(S) server with the interface app.py uses (serve_forever, shutdown,
    server_close, server_address), bounded as the module says."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        limits: HTTPLimits,
        ssl_context: Callable[[], ssl.SSLContext | None] | None = None,
        refuses_peer: Callable[[ssl.SSLSocket], str | None] | None = None,
    ) -> None:
        """`ssl_context` gives the context for each new connection (None: plain HTTP), so a
        rotated certificate applies from the next handshake; `refuses_peer` says why a client
        that completed its handshake is turned away (its certificate's SANs), or None."""
        self.handler = handler
        self.limits = limits
        self.max_connections = _connection_cap(limits.max_connections)
        self._ssl_context = ssl_context
        self._refuses_peer = refuses_peer
        self.socket = listening_socket(*address)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conns: set[_Conn] = set()
        self._timeouts: list[tuple[float, int, _Conn]] = []
        self._order = itertools.count()
        # Connections handed back by workers: (connection, keep it open).
        self._returned: list[tuple[_Conn, bool]] = []
        self._returned_lock = threading.Lock()
        self._workers = ThreadPoolExecutor(limits.workers, thread_name_prefix="http-worker")
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    # --- the interface of socketserver that app.py uses ---------------------------------------

    def serve_forever(self) -> None:
        self._stopped.clear()
        self._selector.register(self.socket, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                self._once()
        finally:
            for conn in list(self._conns):
                self._close(conn)
            self._selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)
        self.socket.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # --- the selector loop ---------------------------------------------------------------------

    def _once(self) -> None:
        timeout = None
        while self._timeouts:
            at, _, conn = self._timeouts[0]
            if conn in self._conns and conn.deadline == at:
                timeout = max(0.0, at - time.monotonic())
                break
            heapq.heappop(self._timeouts)
        for key, events in self._selector.select(timeout):
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            else:
                self._readable(key.data, events)
        self._take_returned()
        self._expire()

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
                address = _unmapped(address)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and the like: the listener stays readable, so pause a little rather
                # than spin, then try again.
                log.warning("cannot accept a connection", extra={"error": exc.strerror})
                time.sleep(0.05)
                return
            if len(self._conns) >= self.max_connections:
                self._refuse(sock)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, address, time.monotonic() + self.limits.header_timeout)
            context = self._ssl_context() if self._ssl_context is not None else None
            if context is not None:
                conn.sock = context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                conn.handshaking = True
            self._conns.add(conn)
            self._watch(conn, selectors.EVENT_READ)
            self._schedule(conn)

    def _refuse(self, sock: socket.socket) -> None:
        """Beyond the connection cap: an answer at once, never a wait."""
        log.debug("connection refused: too many connections", extra={"limit": self.max_connections})
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            if self._ssl_context is None or self._ssl_context() is None:
                sock.send(_REFUSED)
        sock.close()

    def _readable(self, conn: _Conn, events: int) -> None:
        if conn.handshaking:
            self._handshake(conn)
            return
        try:
            while True:
                chunk = conn.sock.recv(65536)
                if not chunk:
                    self._close(conn)
                    return
                if conn.idle:  # the first byte of the next request: its headers are timed now
                    conn.idle = False
                    conn.deadline = time.monotonic() + self.limits.header_timeout
                    self._schedule(conn)
                conn.buffer += chunk
                if not isinstance(conn.sock, ssl.SSLSocket) or not conn.sock.pending():
                    break
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError:
            self._close(conn)
            return
        self._maybe_dispatch(conn)

    def _maybe_dispatch(self, conn: _Conn) -> None:
        if _head_complete(conn.buffer):
            self._selector.unregister(conn.sock)
            conn.deadline = float("inf")  # a worker has it
            try:
                self._workers.submit(self._serve, conn)
            except RuntimeError:  # stopping: the workers are gone
                self._close(conn)
        elif len(conn.buffer) > self.limits.max_header_bytes:
            self._answer_and_close(conn, _TOO_LARGE)

    def _handshake(self, conn: _Conn) -> None:
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        except (ssl.SSLError, OSError) as exc:
            log.debug("tls handshake failed", extra={"client": conn.address[0], "error": exc})
            self._close(conn)
            return
        conn.handshaking = False
        refused = self._refuses_peer(conn.sock) if self._refuses_peer is not None else None
        if refused is not None:
            log.debug("tls client refused", extra={"client": conn.address[0], "reason": refused})
            self._close(conn)
            return
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        self._readable(conn, selectors.EVENT_READ)  # data may already wait in the TLS buffer

    def _expire(self) -> None:
        now = time.monotonic()
        while self._timeouts and self._timeouts[0][0] <= now:
            at, _, conn = heapq.heappop(self._timeouts)
            if conn in self._conns and conn.deadline == at:
                if conn.idle or conn.handshaking or not conn.buffer:
                    self._close(conn)
                else:
                    self._answer_and_close(conn, _TIMED_OUT)

    def _answer_and_close(self, conn: _Conn, response: bytes) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.sock.send(response)  # non-blocking: whatever fits, then close
        self._close(conn)

    # --- workers -------------------------------------------------------------------------------

    def _serve(self, conn: _Conn) -> None:
        """One request on a worker: the handler reads it, answers (or defers its answer), and
        says whether the connection is kept."""
        keep = False
        try:
            conn.sock.settimeout(self.limits.io_timeout)
            outcome = self._handle(conn)
            if isinstance(outcome, _Deferred):
                outcome.answer.add_done_callback(lambda _: self._resume(conn, outcome))
                return  # the worker is free; the answer comes from another when it is due
            keep = outcome
        except Exception:
            log.exception("http request failed", extra={"client": conn.address[0]})
        self._hand_back(conn, keep)

    def defer(self, handler: BaseHTTPRequestHandler, answer: Future[Any], finish: Any) -> None:
        """Called by a handler in its request: answer later, by calling `finish` on a worker
        once `answer` is done, instead of holding this worker while it waits (a /probe of a
        slow server). `answer` must be done by a deadline of its own."""
        handler._deferred = (answer, finish)  # type: ignore[attr-defined]  # read by _handle

    def _resume(self, conn: _Conn, deferred: _Deferred) -> None:
        try:
            self._workers.submit(self._finish_deferred, conn, deferred)
        except RuntimeError:  # stopping: the workers are gone
            self._close_from_worker(conn)

    def _finish_deferred(self, conn: _Conn, deferred: _Deferred) -> None:
        keep = False
        try:
            keep = deferred.finish()
        except Exception:
            log.exception("http request failed", extra={"client": conn.address[0]})
        self._hand_back(conn, keep)

    def _hand_back(self, conn: _Conn, keep: bool) -> None:
        if keep:
            with self._returned_lock:
                self._returned.append((conn, True))
            self._wake()
        else:
            self._close_from_worker(conn)

    def _handle(self, conn: _Conn) -> bool | _Deferred:
        handler = self.handler.__new__(self.handler)
        reader = _Reader(conn.sock, conn.buffer, 1 << 20)
        handler.request = handler.connection = conn.sock
        handler.client_address = conn.address
        handler.server = self  # type: ignore[assignment]  # the handler's server, not socketserver's
        handler.rfile = reader  # type: ignore[assignment]  # a bounded reader, read as a file
        handler.wfile = conn.sock.makefile("wb", getattr(handler, "wbufsize", -1) or -1)  # type: ignore[assignment]  # buffered unless wbufsize 0
        handler.close_connection = True
        handler._deferred = None  # type: ignore[attr-defined]  # the server's slot for defer()

        def end(write: Callable[[], None]) -> bool:
            try:
                write()
                handler.wfile.flush()
            except (OSError, ssl.SSLError) as exc:
                log.debug("http connection ended", extra={"client": conn.address[0], "error": exc})
                return False
            finally:
                with contextlib.suppress(OSError, ssl.SSLError):
                    handler.wfile.close()
            conn.buffer = reader.remaining()
            return not handler.close_connection

        try:
            handler.handle_one_request()
        except (OSError, ssl.SSLError) as exc:
            log.debug("http connection ended", extra={"client": conn.address[0], "error": exc})
            with contextlib.suppress(OSError, ssl.SSLError):
                handler.wfile.close()
            return False
        deferred = handler._deferred  # type: ignore[attr-defined]  # set by _handle, defer()
        if deferred is not None:
            answer, finish = deferred
            return _Deferred(answer, lambda: end(finish))
        return end(lambda: None)

    def _take_returned(self) -> None:
        with self._returned_lock:
            returned, self._returned = self._returned, []
        for conn, keep in returned:
            if not keep:
                self._conns.discard(conn)
                continue
            try:
                conn.sock.setblocking(False)
            except OSError:
                self._close(conn)
                continue
            now = time.monotonic()
            if conn.buffer:  # a pipelined request already began
                conn.idle, conn.deadline = False, now + self.limits.header_timeout
            else:
                conn.idle, conn.deadline = True, now + self.limits.idle_timeout
            self._watch(conn, selectors.EVENT_READ)
            self._schedule(conn)
            self._maybe_dispatch(conn)

    # --- bookkeeping ---------------------------------------------------------------------------

    def _watch(self, conn: _Conn, events: int) -> None:
        try:
            self._selector.register(conn.sock, events, conn)
        except (ValueError, KeyError, OSError):
            self._close(conn)

    def _schedule(self, conn: _Conn) -> None:
        heapq.heappush(self._timeouts, (conn.deadline, next(self._order), conn))

    def _close(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _close_from_worker(self, conn: _Conn) -> None:
        """The loop owns the set of connections: a worker closes the socket and tells it."""
        with contextlib.suppress(OSError):
            conn.sock.close()
        with self._returned_lock:
            self._returned.append((conn, False))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")


def _head_complete(buffer: bytearray) -> bool:
    return b"\r\n\r\n" in buffer or b"\n\n" in buffer


def _connection_cap(wanted: int) -> int:
    """`wanted`, within what the process may open: the soft descriptor limit is raised to the
    hard one (as Go does), and at most half of it goes to HTTP connections (the targets'
    connections and the files need the rest)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    cap = max(1, min(wanted, soft // 2))
    if cap < wanted:
        log.warning(
            "fewer HTTP connections allowed than asked: the descriptor limit is low",
            extra={"asked": wanted, "allowed": cap, "nofile": soft},
        )
    return cap
