"""The running exporter: a configuration's scraper, its registry and the web server."""

from __future__ import annotations

import logging
import queue
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prometheus_client.registry import CollectorRegistry

from exporter.config.errors import ConfigError
from exporter.config.model import Config
from exporter.config.targetfiles import TargetFilesWatcher
from exporter.metrics.collector import ExporterCollector, ReloadStatus
from exporter.scrape.scraper import Scraper
from exporter.web.httpserver import HTTPLimits
from exporter.web.landing import LandingPage, slot_figures
from exporter.web.probe import Probes, ProbeSelfCollector
from exporter.web.sessions_page import SessionsPage
from exporter.web.webapp import WebApp, make_server, serve_in_thread
from exporter.web.webconfig import WatchedWebConfig

log = logging.getLogger(__name__)


class Exporter:
    """Owns everything one exporter process runs; `run()` serves until SIGTERM or SIGINT and
    reloads its configuration on SIGHUP (or POST /-/reload) through `load_config`."""

    def __init__(
        self,
        config: Config,
        listen_host: str,
        listen_port: int,
        telemetry_path: str = "/metrics",
        load_config: Callable[[], Config] | None = None,
        web_config: WatchedWebConfig | None = None,
        http_limits: HTTPLimits | None = None,
    ) -> None:
        self.config = config
        self.scraper = Scraper(config)
        self._load_config = load_config
        self._reload_lock = threading.Lock()
        self._reload_status = ReloadStatus(True, time.time())
        self.registry = CollectorRegistry(auto_describe=False)
        self._web_config = web_config
        self.registry.register(ExporterCollector(self.scraper, self._reload_status_now))
        self.probes = Probes(self.scraper)
        self.registry.register(ProbeSelfCollector(self.probes))
        self.target_files = TargetFilesWatcher(
            lambda: self.config.target_files,
            lambda: self.config.settings.target_files_refresh,
            self.reload,
        )
        self.web = WebApp(
            self.registry,
            telemetry_path,
            self.status,
            self.reload if load_config else None,
            web_config,
            probe=self.probes.collector,
            pages={
                "/": LandingPage(
                    lambda: self.config, self.status, telemetry_path, self.probes.summary
                ),
                "/sessions": SessionsPage(lambda: self.config, lambda: self.scraper.targets),
            },
        )
        self.server = make_server(self.web, listen_host, listen_port, http_limits)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.scraper.open()
        self.probes.start()
        if self._load_config is not None:
            self.target_files.start()
        serve_in_thread(self.server)
        log.info(
            "listening",
            extra={
                "address": _address(self.server.server_address),
                "targets": len(self.config.targets),
            },
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.target_files.stop()
        self.probes.close()
        self.scraper.close()

    def _reload_status_now(self) -> ReloadStatus:
        """The config's reload status, and the web config file's when there is one."""
        if self._web_config is None:
            return self._reload_status
        return replace(self._reload_status, web_config_loaded=self._web_config.last_change_loaded)

    def reload(self) -> list[str]:
        """Load the configuration again and switch to it; a config with problems is refused
        (problems logged and returned) and the running one stays."""
        if self._load_config is None:
            return ["nothing to reload: the exporter was not started from a configuration"]
        with self._reload_lock:
            try:
                config = self._load_config()
            except ConfigError as exc:
                return self._refuse(exc.problems)
            except Exception as exc:
                # A bug in reading a config must cost the reload, never the running exporter.
                log.exception("reading the configuration failed")
                return self._refuse([f"internal error reading the configuration: {exc!r}"])
            self.scraper.reload(config)
            self.config = config
            self._reload_status = ReloadStatus(True, time.time())
        log.info("configuration reloaded", extra={"targets": len(config.targets)})
        return []

    def _refuse(self, problems: list[str]) -> list[str]:
        self._reload_status = ReloadStatus(False, self._reload_status.last_success_at)
        log.error(
            "configuration refused, the previous one keeps running",
            extra={"problems": "; ".join(problems)},
        )
        return problems

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, reloading on SIGHUP, then close every connection."""
        signals = _SignalInbox((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        self.start()
        try:
            while (signum := signals.next()) == signal.SIGHUP:
                self.reload()
        finally:
            signals.close()
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        self.stop()

    def status(self) -> list[dict[str, Any]]:
        """Per-target state for the landing page: no DSN, no password."""
        out = []
        for t in self.scraper.targets:
            last = t.last_result
            if last is None:
                state, detail = "not scraped yet", ""
            elif last.up:
                version = t.kind.format_version(last.server_version or 0)
                state, detail = "up", f"server {version}"
            else:
                state, detail = "down", last.error or ""
            figures = slot_figures(last)
            out.append(
                {
                    "name": t.target.name,
                    "kind": t.target.kind,
                    "sessions": t.kind.policy.offers_sessions,
                    "state": state,
                    "detail": detail,
                    "used": figures.get("pg_connections_used"),
                    "max": figures.get("pg_connections_max"),
                    "utilization": figures.get("pg_connections_utilization_ratio"),
                }
            )
        return out + self.probes.status()


class _SignalInbox:
    """Signals for the main thread to act on, outside the handler.

    The handler only puts the signal on a SimpleQueue (reentrant, unlike an Event, which could
    deadlock if the signal interrupts the main thread inside it). The kernel may deliver a
    signal to any thread, and then a main thread blocked in a lock would not wake up to run the
    Python handler: a wakeup fd, written by the C-level handler whichever thread it runs on,
    wakes it instead.
    """

    def __init__(self, signums: tuple[signal.Signals, ...]) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, lambda n, _frame: self._queue.put(n))

    def next(self) -> int:
        """Wait for the next signal."""
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                # Wakes when a signal arrives (the Python handler then runs before the next
                # get_nowait); the timeout only bounds a wakeup that raced the handler.
                if select.select([self._wake_r], [], [], 1.0)[0]:
                    self._wake_r.recv(4096)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        self._wake_r.close()
        self._wake_w.close()


def _address(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
