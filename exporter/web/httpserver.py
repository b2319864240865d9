"""The HTTP server on an asyncio event loop (aiohttp), bounded in connections, time and bytes.

aiohttp parses requests and keeps connections alive; it has no time limit on a request's
headers and no cap on connections, which this module adds around its protocol:
- a connection costs a descriptor and a buffer while it waits, never a thread;
- its request headers must arrive within `header_timeout` of the connection (or of the first
  byte after an idle keep-alive pause), TLS handshake included, and be at most
  `max_header_bytes` (431 beyond; 408 when they do not come, or closed when nothing came);
- between requests a keep-alive connection may idle for `idle_timeout` (aiohttp's keep-alive
  timeout), longer than any sane scrape interval, so that Prometheus's scrapes keep their
  connection;
- beyond `max_connections` open connections (TLS handshakes included) a new one is answered
  503 (plain HTTP) or closed (TLS) at once, never left waiting;
- a request body is read, and the answer written, within `io_timeout` (else the connection is
  closed).
TLS is started per connection (`loop.start_tls`) with the context in force at accept time, so
a rotated certificate or a changed client-certificate policy applies from the next handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web, web_protocol

log = logging.getLogger(__name__)

# What answers a request: aiohttp's low-level handler.
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


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


def client_address(request: web.BaseRequest) -> str | None:
    """The client's address; an IPv4 client of a dual-stack socket (::ffff:192.0.2.1) as its
    IPv4 address."""
    remote = request.remote
    if remote is not None and remote.startswith("::ffff:") and "." in remote:
        return remote[7:]
    return remote


@dataclass(frozen=True)
class HTTPLimits:
    """What one exporter's HTTP server allows (README: "HTTP limits"). `workers` bounds the
    threads that make the answers which block (rendering a scrape's results, a page,
    bcrypt, a reload); no worker waits for a scrape (it is awaited on the loop)."""

    max_connections: int = 4096
    header_timeout: float = 10.0
    idle_timeout: float = 360.0
    io_timeout: float = 30.0
    max_header_bytes: int = 64 << 10
    workers: int = 4


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


class _Bounded(web_protocol.RequestHandler):
    """aiohttp's protocol with a header deadline and a header size cap. While a request's
    head is awaited, the bytes are looked at (up to the blank line) before aiohttp parses
    them; `request_done` (called by the server's handler wrapper) starts the wait for the
    next head at its first byte."""

    def __init__(self, server: BoundedHTTPServer, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._bounded = server
        self._head = bytearray()
        self._awaiting_head = True
        self._head_timer: asyncio.TimerHandle | None = None

    def start_head_timer(self, delay: float) -> None:
        self._cancel_head_timer()
        self._head_timer = asyncio.get_running_loop().call_later(delay, self._head_expired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def request_done(self) -> None:
        """The answer is made: the next request's head is timed from its first byte (until
        then the idle timeout applies)."""
        self._awaiting_head = True
        self._head.clear()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            if not self._head and self._head_timer is None:  # the first byte after idling
                self.start_head_timer(self._bounded.limits.header_timeout)
            self._head += data
            if _head_complete(self._head):
                self._awaiting_head = False
                self._head.clear()
                self._cancel_head_timer()
            elif len(self._head) > self._bounded.limits.max_header_bytes:
                self._answer_and_close(_TOO_LARGE)
                return
        super().data_received(data)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._awaiting_head:
            self._answer_and_close(_TIMED_OUT if self._head else None)

    def _answer_and_close(self, answer: bytes | None) -> None:
        self._cancel_head_timer()
        transport = self.transport
        if transport is not None:
            if answer is not None:
                with contextlib.suppress(Exception):
                    transport.write(answer)
            transport.close()
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        self._bounded.release()
        super().connection_lost(exc)


class _Refused(asyncio.Protocol):
    """Beyond the connection cap: an answer at once (plain HTTP), never a wait."""

    def __init__(self, answer: bytes | None) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._answer is not None:
            with contextlib.suppress(Exception):
                transport.write(self._answer)
        transport.close()


class _TLSAccept(asyncio.Protocol):
    """A TLS connection until its handshake is done (within the header timeout), with the
    context in force now; then its client's certificate is checked and aiohttp's protocol
    takes over."""

    def __init__(self, server: BoundedHTTPServer, context: ssl.SSLContext) -> None:
        self._server = server
        self._context = context
        self._task: asyncio.Task[None] | None = None
        self._handed_over = False
        self._early = bytearray()  # what came after the handshake, before the hand-over

    def data_received(self, data: bytes) -> None:
        self._early += data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello is for start_tls to read
        self._task = asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout = self._server.limits.header_timeout
        try:
            tls = await loop.start_tls(
                transport, self, self._context, server_side=True, ssl_handshake_timeout=timeout
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            log.debug("tls handshake failed %r", exc, extra={"error": repr(exc)})
            transport.close()
            self._lost()
            return
        if tls is None or tls.is_closing() or self._handed_over:  # gone meanwhile
            self._lost()
            return
        ssl_object = tls.get_extra_info("ssl_object")
        refused = self._server.refuses_peer(ssl_object) if ssl_object is not None else None
        if refused is not None:
            log.debug("tls client refused", extra={"reason": refused})
            tls.close()
            self._lost()
            return
        protocol = self._server.new_protocol()
        self._handed_over = True
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        protocol.start_head_timer(max(0.0, timeout - (loop.time() - started)))
        if self._early:
            protocol.data_received(bytes(self._early))
            self._early.clear()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._handed_over:
            if self._task is not None:
                self._task.cancel()
            self._lost()

    def _lost(self) -> None:
        if not self._handed_over:
            self._handed_over = True  # counted once
            self._server.release()


class BoundedHTTPServer:
    """An HTTP(S) server on its own event loop thread (serve_forever, shutdown, server_close,
    server_address), bounded as the module says."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: Handler,
        limits: HTTPLimits,
        ssl_context: Callable[[], ssl.SSLContext | None] | None = None,
        refuses_peer: Callable[[ssl.SSLObject], str | None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """`ssl_context` gives the context for each new connection (None: plain HTTP), so a
        rotated certificate applies from the next handshake; `refuses_peer` says why a client
        that completed its handshake is turned away (its certificate's SANs), or None."""
        self.limits = limits
        self.max_connections = _connection_cap(limits.max_connections)
        self._handler = handler
        self._ssl_context = ssl_context
        self._refuses_peer = refuses_peer
        self._on_close = on_close
        self.socket = listening_socket(*address)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._manager: web.Server | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def open_connections(self) -> int:
        return self._open

    def release(self) -> None:
        self._open -= 1

    def refuses_peer(self, ssl_object: ssl.SSLObject) -> str | None:
        return self._refuses_peer(ssl_object) if self._refuses_peer is not None else None

    def new_protocol(self) -> _Bounded:
        assert self._manager is not None
        limit = self.limits.max_header_bytes
        return _Bounded(
            self,
            self._manager,
            loop=self._loop,
            keepalive_timeout=self.limits.idle_timeout,
            max_line_size=limit,
            max_field_size=limit,
            max_headers=limit // 4,  # the byte cap decides
            access_log=None,
        )

    def _accept(self) -> asyncio.Protocol:
        """A protocol for each accepted connection: refused beyond the cap, else counted."""
        context = self._ssl_context() if self._ssl_context is not None else None
        if self._open >= self.max_connections:
            log.debug(
                "connection refused: too many connections", extra={"limit": self.max_connections}
            )
            return _Refused(None if context is not None else _REFUSED)
        self._open += 1
        if context is not None:
            return _TLSAccept(self, context)
        protocol = self.new_protocol()
        protocol.start_head_timer(self.limits.header_timeout)
        return protocol

    async def _request(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            response = await self._handler(request)
            # Sent here, within io_timeout (aiohttp would wait for a client that never reads
            # for ever); aiohttp finds it sent.
            try:
                await asyncio.wait_for(_send(request, response), self.limits.io_timeout)
            except TimeoutError:
                log.debug(
                    "http answer not taken in time", extra={"client": client_address(request)}
                )
                if request.transport is not None:
                    request.transport.abort()
            if not response.keep_alive and isinstance(request.protocol, _Bounded):
                request.protocol.force_close()  # at once: no lingering for an unread body
            return response
        finally:
            protocol = request.protocol
            if isinstance(protocol, _Bounded):
                protocol.request_done()

    def serve_forever(
        self,
        on_start: Callable[[asyncio.AbstractEventLoop], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Serve on a new event loop in this thread until shutdown() or stop_soon();
        `on_start` is awaited on the loop before it serves (the app's connections, tasks,
        signal handlers), `on_stop` once it has stopped serving, before the loop ends."""
        self._stopped.clear()
        try:
            asyncio.run(self._serve(on_start, on_stop))
        finally:
            self._stopped.set()

    async def _serve(
        self,
        on_start: Callable[[asyncio.AbstractEventLoop], Awaitable[None]] | None,
        on_stop: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        # What the loop hands off because it blocks (a reload from SIGHUP or the target files).
        self._loop.set_default_executor(ThreadPoolExecutor(2, thread_name_prefix="loop"))
        self._stop = asyncio.Event()
        self._manager = web.Server(self._request, access_log=None)
        server: asyncio.AbstractServer | None = None
        try:
            if on_start is not None:
                await on_start(self._loop)
            # Accepting only once what the answers need is open.
            server = await self._loop.create_server(self._accept, sock=self.socket)
            self._started.set()
            await self._stop.wait()
        finally:
            self._started.set()  # a failed start is not waited for
            if server is not None:
                server.close()
            with contextlib.suppress(Exception):
                await self._manager.shutdown(1.0)
            for conn in list(self._manager.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            if on_stop is not None:
                try:
                    await on_stop()
                except Exception:
                    log.exception("stopping failed")

    def stop_soon(self) -> None:
        """On the loop (a signal handler): stop serving; serve_forever returns."""
        if self._stop is not None:
            self._stop.set()

    def shutdown(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        if self._on_close is not None:
            self._on_close()

    def wait_started(self, timeout: float = 10.0) -> None:
        self._started.wait(timeout)


async def _send(request: web.BaseRequest, response: web.StreamResponse) -> None:
    await response.prepare(request)
    await response.write_eof()


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
