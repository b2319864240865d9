"""The running exporter: a configuration's scraper, its registry and the web server."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prometheus_client.registry import CollectorRegistry

from exporter.config.errors import ConfigError
from exporter.config.model import Config
from exporter.config.targetfiles import TargetFilesWatcher
from exporter.db.connection import TargetConnection
from exporter.metrics.collector import ExporterCollector, ReloadStatus
from exporter.scrape.logfeed import LogFeeds
from exporter.scrape.samplers import Samplers
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
        collector = ExporterCollector(self.scraper, self._reload_status_now)
        self.registry.register(collector)
        # Between scrapes (exporter/scrape/samplers.py): a task per target, totals kept over
        # reloads; the configured targets' families on /metrics, a /probe target's in its answer.
        self.samplers = Samplers(
            config.sampler,
            lambda: self.scraper.targets,
            lambda: [h.scraper for h in self.probes.dynamic.held()],
        )
        self.registry.register(self.samplers)
        self.probes = Probes(self.scraper, self.samplers.families)
        self.registry.register(ProbeSelfCollector(self.probes))
        # The targets' logs (exporter/scrape/logfeed.py): tasks on the loop, kept over reloads.
        self.log_feeds = LogFeeds(config.targets, self._connection_of)
        self.registry.register(self.log_feeds)
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
            scrape=collector.begin,
            scrape_on_loop=collector.results,
            pages={
                "/": LandingPage(
                    lambda: self.config, self.status, telemetry_path, self.probes.summary
                ),
                "/sessions": SessionsPage(
                    lambda: self.config, lambda: self.scraper.targets, self.scraper.call
                ),
            },
        )
        self.server = make_server(self.web, listen_host, listen_port, http_limits)
        self._tasks: list[asyncio.Task[None]] = []

    def _connection_of(self, name: str) -> TargetConnection | None:
        """A configured target's held connection now (for its log feed, on the loop)."""
        return next((t.connection for t in self.scraper.targets if t.target.name == name), None)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Serve on an event loop thread of its own (tests, embedding); `run()` serves on the
        main thread."""
        serve_in_thread(self.server, self._on_loop, self._closing)
        self._listening()

    async def _on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the event loop, before it serves: every target starts connecting; the
        exporter's tasks, which the loop ends when it stops."""
        await self.scraper.open()
        self._tasks = [loop.create_task(self.probes.dynamic.sweep_forever())]
        if self._load_config is not None:
            self._tasks.append(loop.create_task(self.target_files.watch()))
        self.log_feeds.start(loop)
        self.samplers.start(loop)

    async def _closing(self) -> None:
        """On the event loop, once it stops serving: its tasks end, every connection and log
        file closes."""
        for task in self._tasks:
            task.cancel()
        await self.samplers.close()
        await self.probes.close()
        await self.scraper.close()
        self.log_feeds.close()

    def _listening(self) -> None:
        log.info(
            "listening",
            extra={
                "address": _address(self.server.server_address),
                "targets": len(self.config.targets),
            },
        )

    def stop(self) -> None:
        """Stop serving and close every connection (on the loop, before it ends)."""
        self.server.shutdown()
        self.server.server_close()

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
            self.scraper.call(self.scraper.reload(config))
            self.scraper.call(self._resample(config))
            self.log_feeds.update(config.targets)
            self.config = config
            self._reload_status = ReloadStatus(True, time.time())
        log.info("configuration reloaded", extra={"targets": len(config.targets)})
        return []

    async def _resample(self, config: Config) -> None:
        self.samplers.update(config.sampler)

    def _refuse(self, problems: list[str]) -> list[str]:
        self._reload_status = ReloadStatus(False, self._reload_status.last_success_at)
        log.error(
            "configuration refused, the previous one keeps running",
            extra={"problems": "; ".join(problems)},
        )
        return problems

    def run(self) -> None:
        """Serve on the main thread's event loop until SIGTERM or SIGINT, reloading on SIGHUP
        (on the loop's executor), then close every connection."""
        received: list[int] = []

        def stop_on(signum: int) -> None:
            received.append(signum)
            self.server.stop_soon()

        async def on_loop(loop: asyncio.AbstractEventLoop) -> None:
            await self._on_loop(loop)
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, self.reload))
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop_on, signum)
            self._listening()

        self.server.serve_forever(on_loop, self._closing)
        name = signal.Signals(received[0]).name if received else "none"
        log.info("stopping", extra={"signal": name})
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


def _address(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
