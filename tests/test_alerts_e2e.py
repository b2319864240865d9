"""End to end: PostgreSQL -> exporter -> Prometheus (the rules of alerts/) -> Alertmanager
(the routing of alerts/alertmanager.example.yml) -> a webhook receiver inside the test.

Filling a real server (max_connections=12) with ordinary-role sessions until it refuses the
next one must page PostgresConnectionsExhausted with the right labels; closing them must send
the resolved notification.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import yaml

from exporter.localpg import free_port
from exporter.workload import SessionSpec, Workload
from tests.conftest import new_cluster, require_program
from tests.helpers import REPO, http_get, wait_until

ALERT = "PostgresConnectionsExhausted"
TARGET = "e2e"


def load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_alerts", REPO / "scripts" / "render_alerts.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Webhook:
    """A tiny Alertmanager webhook receiver: every POSTed notification, in arrival order."""

    server: ThreadingHTTPServer
    received: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def notifications(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received)

    def find(self, status: str) -> dict[str, Any] | None:
        """The first (notification, alert) pair of our alert with the given alert status."""
        for note in self.notifications():
            for alert in note.get("alerts", []):
                if alert["labels"].get("alertname") == ALERT and alert["status"] == status:
                    return {"notification": note, "alert": alert}
        return None


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Webhook]:
    hook: Webhook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            payload = json.loads(body)
            payload["_path"] = self.path
            with hook.lock:
                hook.received.append(payload)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook = Webhook(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Program:
    """A server program as a plain subprocess on 127.0.0.1, its output in a log file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, port: int) -> None:
        self.name = name
        self.port = port
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"
            return http_get(f"{self.url}/-/ready", timeout=2)[0] == 200

        wait_until(ready, timeout, 0.1, f"{self.name} to be ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to this pid only
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def e2e_rules(path: Path) -> str:
    """The production rules, except for the alert under test, whose durations are shortened:
    in production it needs utilization >= 1 in every 1m window for 2m, which would make this
    test last minutes. Here: in every 5s window (5 scrapes at 1s) for 3s. Everything else
    (expression, labels, annotations) is what ships, rendered by the same generator."""
    renderer = load_renderer()
    thresholds = renderer.load_thresholds()
    thresholds["alerts"][ALERT].update({"window": "5s", "for": "3s"})
    groups = renderer.render_groups(thresholds)
    path.write_text(renderer.dump({"groups": groups}))
    return thresholds["job"]


def alertmanager_config(path: Path, hook: Webhook) -> None:
    """The example config with each receiver pointed at the test's webhook (path = receiver
    name) and the timings shortened to seconds; routes and inhibitions are the example's."""
    config = yaml.safe_load((REPO / "alerts" / "alertmanager.example.yml").read_text())
    config["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": f"{hook.url}/{r['name']}"}]}
        for r in config["receivers"]
    ]

    route = config["route"]
    route.update(group_wait="0s", group_interval="1s", repeat_interval="1h")
    for child in route.get("routes", []):  # children inherit the root's timings
        for key in ("group_wait", "group_interval", "repeat_interval"):
            child.pop(key, None)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def fill_with_ordinary_sessions(workload: Workload, limit: int = 30) -> str:
    """Open `app` sessions until the server refuses one; the refusal's message."""
    for _ in range(limit):
        try:
            workload.open(SessionSpec("idle", user="app"))
        except psycopg.OperationalError as exc:
            return str(exc)
    raise AssertionError(f"the server accepted {limit} sessions of an ordinary role")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_exhausted_pages_and_resolves_through_alertmanager(tmp_path: Path, exporter_for) -> None:
    prometheus_bin = require_program("prometheus")
    alertmanager_bin = require_program("prometheus-alertmanager")
    cluster = new_cluster("18", max_connections=12)
    programs: list[Program] = []
    try:
        cluster.execute("CREATE ROLE app LOGIN")
        running = exporter_for({"targets": [{"name": TARGET, "dsn": cluster.dsn()}]})
        running.scrape_until(lambda s: s.get("pg_up", target=TARGET) == 1, what="pg_up 1")
        exporter_address = f"127.0.0.1:{running.exporter.port}"

        with webhook_receiver() as hook:
            am_dir = tmp_path / "alertmanager"
            am_dir.mkdir()
            alertmanager_config(am_dir / "alertmanager.yml", hook)
            am_port = free_port()
            am = Program(
                "alertmanager",
                [
                    alertmanager_bin,
                    f"--config.file={am_dir / 'alertmanager.yml'}",
                    f"--storage.path={am_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                am_dir,
                am_port,
            )
            programs.append(am)

            prom_dir = tmp_path / "prometheus"
            prom_dir.mkdir()
            job = e2e_rules(prom_dir / "rules.yml")
            (prom_dir / "prometheus.yml").write_text(
                yaml.safe_dump(
                    {
                        "global": {
                            "scrape_interval": "1s",
                            "scrape_timeout": "1s",
                            "evaluation_interval": "1s",
                        },
                        "rule_files": [str(prom_dir / "rules.yml")],
                        "alerting": {
                            "alertmanagers": [
                                {"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}
                            ]
                        },
                        "scrape_configs": [
                            {"job_name": job, "static_configs": [{"targets": [exporter_address]}]}
                        ],
                    }
                )
            )
            prom_port = free_port()
            prom = Program(
                "prometheus",
                [
                    prometheus_bin,
                    f"--config.file={prom_dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={prom_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--rules.alert.resend-delay=1s",
                ],
                prom_dir,
                prom_port,
            )
            programs.append(prom)
            am.wait_ready()
            prom.wait_ready()

            def scraped_with_rules() -> bool:
                _, body, _ = http_get(
                    f"{prom.url}/api/v1/query?query=pg_connections_utilization_ratio", timeout=2
                )
                series = json.loads(body)["data"]["result"]
                _, rules, _ = http_get(f"{prom.url}/api/v1/rules?type=alert", timeout=2)
                return bool(series) and f'"name":"{ALERT}"' in rules

            wait_until(scraped_with_rules, 30, 0.2, "Prometheus to scrape the exporter")
            assert hook.find("firing") is None

            with Workload(cluster.dsn()) as workload:
                refusal = fill_with_ordinary_sessions(workload)
                assert "reserved" in refusal or "too many clients" in refusal, refusal
                running.scrape_until(
                    lambda s: s.get("pg_connections_available", target=TARGET) == 0,
                    what="no slot left for ordinary roles",
                )
                fired = wait_until(lambda: hook.find("firing"), 45, 0.1, f"{ALERT} at the webhook")
                labels = fired["alert"]["labels"]
                assert labels["alertname"] == ALERT
                assert labels["severity"] == "critical"
                assert labels["target"] == TARGET
                assert labels["job"] == job
                assert labels["instance"] == exporter_address
                assert fired["notification"]["receiver"] == "pager"  # critical pages
                assert fired["notification"]["_path"] == "/pager"
                annotations = fired["alert"]["annotations"]
                assert annotations["runbook_url"].endswith(f"/docs/runbooks/{ALERT}.md")
                assert f"{TARGET} ({exporter_address})" in annotations["description"]

            # The sessions are closed: the alert resolves.
            resolved = wait_until(
                lambda: hook.find("resolved"), 45, 0.1, f"{ALERT} resolved at the webhook"
            )
            assert resolved["alert"]["labels"]["target"] == TARGET
            assert resolved["notification"]["status"] == "resolved"
            assert resolved["notification"]["receiver"] == "pager"
    except BaseException:
        for program in programs:
            print(f"--- {program.name} log ---\n{program.log()}")
        raise
    finally:
        for program in programs:
            program.stop()
        cluster.stop()
