"""Test helpers: running the exporter, reading /metrics, polling with a deadline."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config.model import parse_config
from exporter.web.webconfig import WatchedWebConfig
from harness.localpg import free_port
from harness.processes import stop_process

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def load_script(name: str) -> ModuleType:
    """scripts/NAME.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_render_alerts() -> ModuleType:
    """scripts/render_alerts.py as a module."""
    return load_script("render_alerts")


def wait_until(
    check: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Samples:
    """Parsed exposition text: value lookups by metric name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.rows: list[tuple[str, dict[str, str], float]] = []
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.rows.append((s.name, dict(s.labels), s.value))

    def get(self, name: str, **labels: str) -> float | None:
        found = [v for n, ls, v in self.rows if n == name and _contains(ls, labels)]
        if len(found) > 1:
            raise AssertionError(f"{name}{labels} matches {len(found)} series")
        return found[0] if found else None

    def value(self, name: str, **labels: str) -> float:
        v = self.get(name, **labels)
        if v is None:
            raise AssertionError(f"no series {name}{labels}")
        return v

    def series(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(ls, v) for n, ls, v in self.rows if n == name and _contains(ls, labels)]

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """{label value: value} for the series of `name` matching `labels`."""
        return {ls[label]: v for ls, v in self.series(name, **labels)}


def _contains(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, str, Mapping[str, str]]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


@dataclass
class RunningExporter:
    exporter: Exporter

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.exporter.port}"

    def scrape(self, headers: Mapping[str, str] | None = None) -> Samples:
        status, body, _ = http_get(f"{self.url}/metrics", headers)
        assert status == 200, body
        return Samples(body)

    def scrape_until(
        self, check: Callable[[Samples], bool], timeout: float = 20.0, what: str = "metrics"
    ) -> Samples:
        def attempt() -> Samples | None:
            s = self.scrape()
            return s if check(s) else None

        return wait_until(attempt, timeout, 0.1, what)

    def stop(self) -> None:
        self.exporter.stop()


def start_exporter(
    config: dict[str, Any], web_config: WatchedWebConfig | None = None
) -> RunningExporter:
    exporter = Exporter(parse_config(config, "test config"), "127.0.0.1", 0, web_config=web_config)
    exporter.start()
    return RunningExporter(exporter)


class ExporterProcess:
    """The console script in a subprocess on a free port, logs captured to a file."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, listen_host: str = "127.0.0.1"
    ) -> None:
        """`listen_host` "" is the default --web.listen-address's host: every address."""
        self.port = free_port()
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgce-exporter-{self.port}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                *args,
                "--web.listen-address",
                f"{listen_host}:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"exporter exited: {self.output()}"
            return http_get(f"{self.url}/healthz", timeout=2)[0] == 200

        wait_until(ready, timeout, 0.1, "the exporter to answer /healthz")

    def scrape(self) -> Samples:
        status, body, _ = http_get(f"{self.url}/metrics")
        assert status == 200, body
        return Samples(body)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = 15, timeout: float = 15.0) -> int | None:
        code = stop_process(self.proc, sig, timeout)
        self.log.close()
        return code


def refuse_at_once(dsn: str, times: int) -> list[str]:
    """`times` connection attempts to `dsn` at once, each on a thread; the messages of those
    refused. Give a TCP DSN for a storm: a Unix socket whose small listen backlog is full
    answers EAGAIN at once (the attempt never reaches the server, which logs nothing), where
    TCP retries the SYN."""
    refused: list[str] = []

    def attempt() -> None:
        try:
            psycopg.connect(dsn, connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=attempt) for _ in range(times)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return refused
