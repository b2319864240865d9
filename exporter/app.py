"""The running exporter: a configuration's scraper, its registry and the web server."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from prometheus_client.registry import CollectorRegistry

from exporter.collector import ExporterCollector
from exporter.config import Config
from exporter.http import WebApp, make_server, serve_in_thread
from exporter.scrape import Scraper

log = logging.getLogger(__name__)


class Exporter:
    """Owns everything one exporter process runs; `run()` serves until SIGTERM or SIGINT."""

    def __init__(
        self, config: Config, listen_host: str, listen_port: int, telemetry_path: str = "/metrics"
    ) -> None:
        self.config = config
        self.scraper = Scraper(config)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ExporterCollector(self.scraper))
        self.web = WebApp(self.registry, telemetry_path, self.status)
        self.server = make_server(self.web, listen_host, listen_port)
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.scraper.open()
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
        self.scraper.close()
        self._stopped.set()

    def run(self) -> None:
        """Serve until a signal asks to stop, then close every connection."""
        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        stop.wait()
        self.stop()

    def status(self) -> list[dict[str, Any]]:
        """Per-target state for the landing page: no DSN, no password."""
        out = []
        for t in self.scraper.targets:
            last = t.last_result
            if last is None:
                state, detail = "not scraped yet", ""
            elif last.up:
                version = last.server_version or 0
                state, detail = "up", f"server {version // 10000}.{version % 10000}"
            else:
                state, detail = "down", last.error or ""
            out.append({"name": t.target.name, "state": state, "detail": detail})
        return out


def _address(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
