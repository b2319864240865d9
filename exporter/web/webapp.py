"""The HTTP side: /metrics (or the configured path), a landing page, /healthz, /-/reload.

The scrape deadline comes from Prometheus's X-Prometheus-Scrape-Timeout-Seconds header when it
sends one, so that the exporter answers before Prometheus gives up on it. With a web config,
every path is behind TLS and basic auth alike.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.registry import Collector, CollectorRegistry

from exporter import __version__
from exporter.metrics.collector import scrape_timeout
from exporter.metrics.exposition import choose_encoder, encode
from exporter.web.gcpause import ANSWERS
from exporter.web.httpserver import BoundedHTTPServer, HTTPLimits
from exporter.web.probe import ProbeRefused
from exporter.web.webconfig import NO_WEB_CONFIG, WatchedWebConfig, WebConfig

log = logging.getLogger(__name__)

# Part of Prometheus's scrape timeout kept for encoding and the network.
SCRAPE_TIMEOUT_MARGIN = 0.5

# Reloads the configuration; returns the problems that made it refuse one (empty: reloaded).
Reload = Callable[[], list[str]]
# A page served at a path (the landing page, /sessions): given the query string, returns
# status, content type, body and extra headers.
Page = Callable[[str], tuple[int, str, bytes, dict[str, str]]]
# What /probe renders for its query parameters; raises ProbeRefused (a 4xx) instead.
Probe = Callable[[dict[str, list[str]]], Collector]


class WebApp:
    """What the handler needs: the registry, the landing page's state, reload, web config."""

    def __init__(
        self,
        registry: CollectorRegistry,
        telemetry_path: str,
        status: Callable[[], list[dict[str, Any]]],
        reload: Reload | None = None,
        web_config: WatchedWebConfig | None = None,
        pages: Mapping[str, Page] | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.registry = registry
        self.pages = dict(pages or {})
        self.telemetry_path = telemetry_path
        self.status = status
        self.reload = reload
        self._web_config = web_config
        self.probe = probe

    @property
    def web_config(self) -> WebConfig:
        """The web config in force: the file's latest good version, or none at all."""
        return self._web_config.get() if self._web_config is not None else NO_WEB_CONFIG


def make_server(
    app: WebApp, host: str, port: int, limits: HTTPLimits | None = None
) -> BoundedHTTPServer:
    """An HTTP(S) server bound to host:port serving `app`, within `limits`
    (exporter.web.httpserver: no thread per connection, header and idle timeouts, a cap)."""

    class Handler(_Handler):
        web = app

    tls = app.web_config.ssl_context is not None  # a change that turns TLS off is refused
    return BoundedHTTPServer(
        (host, port),
        Handler,
        limits or HTTPLimits(),
        (lambda: app.web_config.ssl_context) if tls else None,
        (lambda sock: app.web_config.refuses_peer(sock)) if tls else None,
    )


def serve_in_thread(server: BoundedHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return thread


class _Handler(BaseHTTPRequestHandler):
    web: WebApp
    server_version = f"pg-connections-exporter/{__version__}"
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and body go out as two writes; with Nagle, the body waits for the
    # client's delayed ACK of the headers, which added ~40 ms to every keep-alive scrape.
    disable_nagle_algorithm = True
    # Buffered: the headers and a gzipped body leave in one write (handle_one_request flushes
    # after each request), one system call and one packet instead of two.
    wbufsize = 1 << 14

    def do_GET(self) -> None:
        if not self._admitted():
            return
        url = urlsplit(self.path)
        path = url.path
        if path == self.web.telemetry_path:
            self._metrics()
        elif (page := self.web.pages.get(path)) is not None:
            self._send(*page(url.query))
        elif path == "/probe" and self.web.probe is not None:
            self._probe()
        elif path == "/healthz":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/-/reload":
            self._send(405, "text/plain; charset=utf-8", b"use POST to reload\n", {"Allow": "POST"})
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def do_POST(self) -> None:
        self._discard_body()
        if not self._admitted():
            return
        if urlsplit(self.path).path != "/-/reload" or self.web.reload is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        problems = self.web.reload()
        if problems:
            body = "configuration refused, the previous one keeps running:\n" + "".join(
                f"  {p}\n" for p in problems
            )
            self._send(500, "text/plain; charset=utf-8", body.encode())
        else:
            self._send(200, "text/plain; charset=utf-8", b"configuration reloaded\n")

    def _discard_body(self) -> None:
        """Read and drop a request body (none is expected); a large or unreadable one ends the
        connection after the answer instead."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if 0 < length <= 1 << 16:
            self.rfile.read(length)
        elif length != 0:
            self.close_connection = True

    def _admitted(self) -> bool:
        """The web config's rate limit (429), then its basic auth (401), as exporter-toolkit
        orders them; the answer has been sent when False."""
        limiter = self.web.web_config.limiter
        if limiter is not None and not limiter.allow():
            self._send(429, "text/plain; charset=utf-8", b"Too Many Requests\n")
            return False
        return self._authorized()

    def _authorized(self) -> bool:
        """Basic auth, when the web config asks for it; a 401 has been sent when False."""
        auth = self.web.web_config.auth
        if auth is None:
            return True
        scheme, _, encoded = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, sep, password = (
                    base64.b64decode(encoded, validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if sep and auth.check(user, password):
                return True
        self._send(
            401,
            "text/plain; charset=utf-8",
            b"unauthorized\n",
            {"WWW-Authenticate": 'Basic realm="pg-connections-exporter"'},
        )
        return False

    def _probe(self) -> None:
        assert self.web.probe is not None
        query = urlsplit(self.path).query
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            params = {"": [""]}  # unparsable: reported as an unknown parameter
        try:
            collector = self.web.probe(params)
        except ProbeRefused as refused:
            self._send(refused.status, "text/plain; charset=utf-8", f"{refused.message}\n".encode())
            return
        begin = getattr(collector, "begin", None)
        defer = getattr(self.server, "defer", None)
        if begin is None or defer is None:
            self._metrics(collector)
            return
        # The target's run starts on the scrape pool; this worker is free until its answer
        # (due by the deadline) is there: slow probes cannot take every worker.
        header = self.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        token = scrape_timeout.set(_prometheus_timeout(header))
        try:
            answer = begin()
        finally:
            scrape_timeout.reset(token)
        defer(self, answer, lambda: self._metrics(collector))

    def _metrics(self, source: Collector | None = None) -> None:
        timeout = _prometheus_timeout(self.headers.get("X-Prometheus-Scrape-Timeout-Seconds"))
        token = scrape_timeout.set(timeout)
        try:
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            gzipped = "gzip" in (self.headers.get("Accept-Encoding") or "")
            # The scrape, its families and the encoding make no reference cycles (gcpause.py).
            with ANSWERS.during():
                body = encode(encoder, self.registry if source is None else source, gzipped)
        finally:
            scrape_timeout.reset(token)
        self._send(200, content_type, body, {"Content-Encoding": "gzip"} if gzipped else None)

    @property
    def registry(self) -> CollectorRegistry:
        return self.web.registry

    def _send(
        self, code: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**self.web.web_config.headers, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(
            "http request", extra={"client": self.client_address[0], "request": format % args}
        )


def _prometheus_timeout(header: str | None) -> float | None:
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return max(seconds - SCRAPE_TIMEOUT_MARGIN, 0.1) if seconds > 0 else None
