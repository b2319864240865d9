"""The HTTP side: /metrics (or the configured path), a landing page and /healthz.

The scrape deadline comes from Prometheus's X-Prometheus-Scrape-Timeout-Seconds header when it
sends one, so that the exporter answers before Prometheus gives up on it.
"""

from __future__ import annotations

import gzip
import html
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.collector import scrape_timeout

log = logging.getLogger(__name__)

# Part of Prometheus's scrape timeout kept for encoding and the network.
SCRAPE_TIMEOUT_MARGIN = 0.5


class WebApp:
    """What the handler needs: the registry to expose and the state for the landing page."""

    def __init__(
        self,
        registry: CollectorRegistry,
        telemetry_path: str,
        status: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.registry = registry
        self.telemetry_path = telemetry_path
        self.status = status


def make_server(app: WebApp, host: str, port: int) -> ThreadingHTTPServer:
    """A threading HTTP server bound to host:port serving `app`."""

    class Handler(_Handler):
        web = app

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
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

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == self.web.telemetry_path:
            self._metrics()
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", self._landing().encode())
        elif path == "/healthz":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _metrics(self) -> None:
        timeout = _prometheus_timeout(self.headers.get("X-Prometheus-Scrape-Timeout-Seconds"))
        token = scrape_timeout.set(timeout)
        try:
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            body = encoder(self.registry)
        finally:
            scrape_timeout.reset(token)
        gzipped = "gzip" in (self.headers.get("Accept-Encoding") or "")
        if gzipped:
            body = gzip.compress(body, compresslevel=5)
        self._send(200, content_type, body, {"Content-Encoding": "gzip"} if gzipped else None)

    @property
    def registry(self) -> CollectorRegistry:
        return self.web.registry

    def _landing(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(t['name'])}</td>"
            f"<td>{html.escape(t['state'])}</td><td>{html.escape(t['detail'])}</td></tr>"
            for t in self.web.status()
        )
        path = html.escape(self.web.telemetry_path)
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            "<title>pg-connections-exporter</title></head><body>"
            f"<h1>pg-connections-exporter {html.escape(__version__)}</h1>"
            "<p>PostgreSQL connection saturation for Prometheus.</p>"
            f"<p><a href='{path}'>Metrics</a> &middot; <a href='/healthz'>Health</a></p>"
            "<h2>Targets</h2><table border='1' cellpadding='4'>"
            "<tr><th>Target</th><th>State</th><th>Detail</th></tr>"
            f"{rows}</table></body></html>"
        )

    def _send(
        self, code: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
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
