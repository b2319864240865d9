"""The HTTP side: /metrics (or the configured path), a landing page, /healthz, /-/reload.

The scrape deadline comes from Prometheus's X-Prometheus-Scrape-Timeout-Seconds header when it
sends one, so that the exporter answers before Prometheus gives up on it. With a web config,
every path is behind TLS and basic auth alike.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from prometheus_client.registry import Collector, CollectorRegistry

from exporter import __version__
from exporter.metrics.collector import scrape_timeout, scraped
from exporter.metrics.exposition import choose_encoder, encode
from exporter.scrape.target import TargetResult
from exporter.web.gcpause import ANSWERS
from exporter.web.httpserver import BoundedHTTPServer, HTTPLimits, client_address
from exporter.web.probe import ProbeRefused
from exporter.web.webconfig import NO_WEB_CONFIG, WatchedWebConfig, WebConfig

log = logging.getLogger(__name__)

SERVER = f"pg-connections-exporter/{__version__}"

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
        scrape: Callable[[], Future[list[TargetResult]]] | None = None,
        scrape_on_loop: Callable[[], Awaitable[list[TargetResult]]] | None = None,
    ) -> None:
        """`scrape` starts the scrape the telemetry path renders from a worker
        (ExporterCollector.begin), `scrape_on_loop` on the loop (ExporterCollector.results):
        either way the scrape is awaited on the loop, not on a worker."""
        self.scrape = scrape
        self.scrape_on_loop = scrape_on_loop
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
    limits = limits or HTTPLimits()
    workers = ThreadPoolExecutor(limits.workers, thread_name_prefix="http-worker")
    answers = _Answers(app, workers, limits.io_timeout)
    tls = app.web_config.ssl_context is not None  # a change that turns TLS off is refused
    return BoundedHTTPServer(
        (host, port),
        answers.handle,
        limits,
        (lambda: app.web_config.ssl_context) if tls else None,
        (lambda peer: app.web_config.refuses_peer(peer)) if tls else None,
        on_close=answers.close,
    )


def serve_in_thread(
    server: BoundedHTTPServer,
    on_start: Callable[[asyncio.AbstractEventLoop], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> threading.Thread:
    """Serve on an event loop thread of its own (tests, embedding); see serve_forever."""
    thread = threading.Thread(
        target=server.serve_forever, args=(on_start, on_stop), name="http", daemon=True
    )
    thread.start()
    server.wait_started()
    return thread


@dataclass(frozen=True)
class _Request:
    """What an answer is made from: the method, the target, the headers."""

    method: str
    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class _Answer:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Deferred:
    """A /probe whose run has begun: its answer is rendered once `due` is done (by its
    deadline), without holding a worker meanwhile."""

    due: Future[Any]
    render: Callable[[], _Answer]


_TEXT = "text/plain; charset=utf-8"


class _Answers:
    """The endpoints. The event loop reads requests; the answers that block (a scrape, a
    page, a reload, bcrypt) are made on the bounded workers."""

    def __init__(self, web: WebApp, workers: ThreadPoolExecutor, io_timeout: float) -> None:
        self.web = web
        self._workers = workers
        self._io_timeout = io_timeout

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            keep = await self._discard_body(request)
        except TimeoutError:
            timed_out = web.Response(
                status=408,
                body=b"request timeout\n",
                headers={"Server": SERVER, "Content-Type": _TEXT},
            )
            timed_out.force_close()
            return timed_out
        req = _Request(request.method, request.raw_path, request.headers)
        loop = asyncio.get_running_loop()
        outcome: _Answer | _Deferred | None = await self._on_loop(req)
        if outcome is None:
            outcome = await loop.run_in_executor(self._workers, self.answer, req)
        if isinstance(outcome, _Deferred):
            await asyncio.wrap_future(outcome.due)
            outcome = await loop.run_in_executor(self._workers, outcome.render)
        headers = {
            "Server": SERVER,
            "Content-Type": outcome.content_type,
            **self.web.web_config.headers,
            **outcome.headers,
        }
        response = web.Response(status=outcome.status, body=outcome.body, headers=headers)
        if not keep:
            response.force_close()
        log.debug(
            "http request",
            extra={"client": client_address(request), "request": f"{req.method} {req.path}"},
        )
        return response

    async def _on_loop(self, request: _Request) -> _Answer | None:
        """A /metrics scrape without basic auth, taken on the loop: the scrape awaited there,
        one hand-off to a worker for the rendering (each thread crossing costs a scrape of
        one target CPU: docs/benchmarks.md). None for everything else (admitted on a worker:
        bcrypt blocks)."""
        scrape = self.web.scrape_on_loop
        if (
            scrape is None
            or request.method not in ("GET", "HEAD")
            or urlsplit(request.path).path != self.web.telemetry_path
            or self.web.web_config.auth is not None
        ):
            return None
        refused = self._admitted(request)  # the rate limit alone: no bcrypt without auth
        if refused is not None:
            return refused
        header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        token = scrape_timeout.set(_prometheus_timeout(header))
        try:
            results = await scrape()
        finally:
            scrape_timeout.reset(token)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._workers, lambda: self._metrics(request, results=results)
        )

    async def _discard_body(self, request: web.BaseRequest) -> bool:
        """Read and drop a request body (none is expected) within the I/O timeout (else
        asyncio.TimeoutError); a large or unreadable one ends the connection after the answer
        instead (False)."""
        try:
            length = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            return False
        if 0 < length <= 1 << 16:
            await asyncio.wait_for(request.read(), self._io_timeout)  # TimeoutError: a 408
        return 0 <= length <= 1 << 16

    def answer(self, request: _Request) -> _Answer | _Deferred:
        if request.method not in ("GET", "HEAD", "POST"):
            return _Answer(501, _TEXT, b"unsupported method\n")
        refused = self._admitted(request)
        if refused is not None:
            return refused
        url = urlsplit(request.path)
        path = url.path
        if request.method == "POST":
            return self._post(path)
        if path == self.web.telemetry_path:
            return self._telemetry(request)
        if (page := self.web.pages.get(path)) is not None:
            status, content_type, body, headers = page(url.query)
            return _Answer(status, content_type, body, headers)
        if path == "/probe" and self.web.probe is not None:
            return self._probe(request, url.query)
        if path == "/healthz":
            return _Answer(200, _TEXT, b"ok\n")
        if path == "/-/reload":
            return _Answer(405, _TEXT, b"use POST to reload\n", {"Allow": "POST"})
        return _Answer(404, _TEXT, b"not found\n")

    def _post(self, path: str) -> _Answer:
        if path != "/-/reload" or self.web.reload is None:
            return _Answer(404, _TEXT, b"not found\n")
        problems = self.web.reload()
        if problems:
            body = "configuration refused, the previous one keeps running:\n" + "".join(
                f"  {p}\n" for p in problems
            )
            return _Answer(500, _TEXT, body.encode())
        return _Answer(200, _TEXT, b"configuration reloaded\n")

    def _admitted(self, request: _Request) -> _Answer | None:
        """The web config's rate limit (429), then its basic auth (401), as exporter-toolkit
        orders them; None when admitted."""
        limiter = self.web.web_config.limiter
        if limiter is not None and not limiter.allow():
            return _Answer(429, _TEXT, b"Too Many Requests\n")
        return self._authorized(request)

    def _authorized(self, request: _Request) -> _Answer | None:
        """Basic auth, when the web config asks for it; the 401 when refused."""
        auth = self.web.web_config.auth
        if auth is None:
            return None
        scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, sep, password = (
                    base64.b64decode(encoded, validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if sep and auth.check(user, password):
                return None
        return _Answer(
            401,
            _TEXT,
            b"unauthorized\n",
            {"WWW-Authenticate": 'Basic realm="pg-connections-exporter"'},
        )

    def _probe(self, request: _Request, query: str) -> _Answer | _Deferred:
        assert self.web.probe is not None
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            params = {"": [""]}  # unparsable: reported as an unknown parameter
        try:
            collector = self.web.probe(params)
        except ProbeRefused as refused:
            return _Answer(refused.status, _TEXT, f"{refused.message}\n".encode())
        begin = getattr(collector, "begin", None)
        if begin is None:
            return self._metrics(request, collector)
        # The target's run starts on the scrape pool; no worker waits for its answer (due by
        # the deadline): slow probes cannot take every worker.
        header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        token = scrape_timeout.set(_prometheus_timeout(header))
        try:
            due = begin()
        finally:
            scrape_timeout.reset(token)
        return _Deferred(due, lambda: self._metrics(request, collector))

    def _telemetry(self, request: _Request) -> _Answer | _Deferred:
        """The scrape started on the loop; the answer rendered once it has its results."""
        if self.web.scrape is None:
            return self._metrics(request)
        header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        token = scrape_timeout.set(_prometheus_timeout(header))
        try:
            due = self.web.scrape()
        finally:
            scrape_timeout.reset(token)
        return _Deferred(due, lambda: self._metrics(request, results=due.result()))

    def _metrics(
        self,
        request: _Request,
        source: Collector | None = None,
        results: list[TargetResult] | None = None,
    ) -> _Answer:
        header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        token = scrape_timeout.set(_prometheus_timeout(header))
        given = scraped.set(results)
        try:
            encoder, content_type = choose_encoder(request.headers.get("Accept"))
            gzipped = "gzip" in (request.headers.get("Accept-Encoding") or "")
            # The scrape, its families and the encoding make no reference cycles (gcpause.py).
            with ANSWERS.during():
                body = encode(encoder, self.web.registry if source is None else source, gzipped)
        finally:
            scraped.reset(given)
            scrape_timeout.reset(token)
        return _Answer(200, content_type, body, {"Content-Encoding": "gzip"} if gzipped else {})


def _prometheus_timeout(header: str | None) -> float | None:
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return max(seconds - SCRAPE_TIMEOUT_MARGIN, 0.1) if seconds > 0 else None
