"""End to end: PostgreSQL -> exporter -> Prometheus (the rules of alerts/) -> Alertmanager
(the routing of alerts/alertmanager.example.yml) -> a webhook receiver inside the test.

Filling a real server (max_connections=12) with ordinary-role sessions until it refuses the
next one must page PostgresConnectionsExhausted with the right labels; closing them must send
the resolved notification.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from exporter.app import Exporter
from exporter.config.model import load_config
from exporter.web.webconfig import WatchedWebConfig
from harness.workload import SessionSpec, Workload
from tests.conftest import new_cluster, require_program
from tests.helpers import REPO, RunningExporter, http_get, load_render_alerts, wait_until
from tests.prometheus_server import AlertmanagerServer, PrometheusServer, ServerProcess

ALERT = "PostgresConnectionsExhausted"
TARGET = "e2e"


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


def e2e_rules(path: Path, alert: str = ALERT, **shortened: str) -> str:
    """The production rules, except for the alert under test, whose durations are shortened:
    in production Exhausted needs utilization >= 1 in every 1m window for 2m, which would make
    this test last minutes. Here: in every 5s window (5 scrapes at 1s) for 3s. Everything else
    (expression, labels, annotations) is what ships, rendered by the same generator."""
    renderer = load_render_alerts()
    thresholds = renderer.load_thresholds()
    thresholds["alerts"][alert].update(shortened or {"window": "5s", "for": "3s"})
    groups = renderer.render_groups(thresholds)
    path.write_text(renderer.dump({"groups": groups}))
    return thresholds["job"]


def alertmanager_config(hook: Webhook) -> dict[str, Any]:
    """The example config with each receiver pointed at the test's webhook (path = receiver
    name) and the timings shortened to seconds; routes and inhibitions are the example's."""
    config = yaml.safe_load((REPO / "alerts" / "alertmanager.example.yml").read_text())
    # The notification templates, found where the example sits (paths are relative to it).
    config["templates"] = [str(REPO / "alerts" / t) for t in config.get("templates", [])]
    config["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": f"{hook.url}/{r['name']}"}]}
        for r in config["receivers"]
    ]

    route = config["route"]
    route.update(group_wait="0s", group_interval="1s", repeat_interval="1h")
    for child in route.get("routes", []):  # children inherit the root's timings
        for key in ("group_wait", "group_interval", "repeat_interval"):
            child.pop(key, None)
    return config


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
    servers: list[ServerProcess] = []
    try:
        cluster.execute("CREATE ROLE app LOGIN")
        running = exporter_for({"targets": [{"name": TARGET, "dsn": cluster.dsn()}]})
        running.scrape_until(lambda s: s.get("pg_up", target=TARGET) == 1, what="pg_up 1")
        exporter_address = f"127.0.0.1:{running.exporter.port}"

        with webhook_receiver() as hook:
            am = AlertmanagerServer(alertmanager_bin, alertmanager_config(hook))
            servers.append(am)
            am.start()
            job = e2e_rules(tmp_path / "rules.yml")
            prom = PrometheusServer(
                prometheus_bin,
                [exporter_address],
                job=job,
                rule_files=[tmp_path / "rules.yml"],
                alertmanager=f"127.0.0.1:{am.port}",
            )
            servers.append(prom)
            prom.start()

            def scraped_with_rules() -> bool:
                rules = prom.api("rules", type="alert")["data"]["groups"]
                names = {r["name"] for g in rules for r in g["rules"]}
                return bool(prom.vector("pg_connections_utilization_ratio")) and ALERT in names

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
        for server in servers:
            print(f"--- {server.name} log ---\n{server.log_tail(60)}")
        raise
    finally:
        for server in servers:
            server.stop()
        cluster.stop()


def prometheus_for_alert(
    binary: str, tmp_path: Path, exporter_port: int, alert: str
) -> tuple[PrometheusServer, str]:
    """A Prometheus (not started) scraping one exporter with the shipped rules, `alert`'s
    `for` shortened to 3s; and the job name the rules select."""
    job = e2e_rules(tmp_path / "rules.yml", alert, **{"for": "3s"})
    server = PrometheusServer(
        binary, [f"127.0.0.1:{exporter_port}"], job=job, rule_files=[tmp_path / "rules.yml"]
    )
    return server, job


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_login_check_failing_on_its_own_role_warns_and_does_not_page(
    tmp_path: Path, exporter_for, pg
) -> None:
    """A login check whose role does not exist fails as `authentication`: the warning fires in
    a real Prometheus with the shipped rules, and PostgresConnectionsRejected (a page) stays
    quiet, since the server refuses nobody."""
    prometheus_bin = require_program("prometheus")
    alert = "PostgresConnectionsLoginCheckFailing"
    running = exporter_for(
        {
            "targets": [
                {
                    "name": TARGET,
                    "dsn": pg.dsn(),
                    "login_check": {"interval": "1s", "dsn": pg.dsn(user="no_such_role")},
                }
            ]
        }
    )
    scraped = running.scrape_until(
        lambda s: s.get("pg_connections_login_check_failures_total", reason="authentication"),
        what="a failed login check",
    )
    assert scraped.value("pg_up", target=TARGET) == 1
    assert scraped.value("pg_connections_login_check_success", target=TARGET) == 0
    refusals = ("too_many_clients", "reserved_slots_only", "database_limit", "role_limit")
    for reason in refusals:
        assert scraped.value("pg_connections_login_check_failures_total", reason=reason) == 0
    prom, job = prometheus_for_alert(prometheus_bin, tmp_path, running.exporter.port, alert)
    try:
        prom.start()
        firing = wait_until(
            lambda: prom.vector(f'ALERTS{{alertname="{alert}", alertstate="firing"}}'),
            45,
            0.2,
            f"{alert} firing in Prometheus",
        )
        ((labels, _),) = firing
        assert (labels["target"], labels["severity"], labels["job"]) == (TARGET, "warning", job)
        assert not prom.vector('ALERTS{alertname="PostgresConnectionsRejected"}')
    except BaseException:
        print(f"--- prometheus log ---\n{prom.log_tail(60)}")
        raise
    finally:
        prom.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_refused_config_and_web_config_warn_until_fixed(tmp_path: Path, pg) -> None:
    """A reload of a config with an unknown key, and a web config changed into one with an
    unknown key, are refused: PostgresConnectionsExporterBadConfig fires once for each in a real
    Prometheus with the shipped rules, while the exporter keeps serving the previous ones; when
    both files are good again, the alerts resolve."""
    prometheus_bin = require_program("prometheus")
    alert = "PostgresConnectionsExporterBadConfig"
    config_file, web_file = tmp_path / "config.yml", tmp_path / "web.yml"
    good_config = {"targets": [{"name": TARGET, "dsn": pg.dsn()}]}
    good_web = {"http_server_config": {"headers": {"X-Frame-Options": "deny"}}}
    config_file.write_text(yaml.safe_dump(good_config))
    web_file.write_text(yaml.safe_dump(good_web))
    exporter = Exporter(
        load_config(config_file),
        "127.0.0.1",
        0,
        load_config=lambda: load_config(config_file),
        web_config=WatchedWebConfig(str(web_file)),
    )
    exporter.start()
    running = RunningExporter(exporter)
    prom, job = prometheus_for_alert(prometheus_bin, tmp_path, exporter.port, alert)

    def firing() -> dict[str, dict[str, str]]:
        vector = prom.vector(f'ALERTS{{alertname="{alert}", alertstate="firing"}}')
        return {labels["config"]: labels for labels, _ in vector}

    try:
        prom.start()
        config_file.write_text(yaml.safe_dump({**good_config, "scrape_interval": "1s"}))
        web_file.write_text(yaml.safe_dump({**good_web, "tls_cipher_suites": ["X"]}))
        assert any("scrape_interval" in p for p in exporter.reload())
        running.scrape_until(
            lambda s: (
                s.value("pg_connections_exporter_config_last_reload_successful") == 0
                and s.value("pg_connections_exporter_web_config_last_reload_successful") == 0
            ),
            what="both refusals in the metrics",
        )
        alerts = wait_until(
            lambda: now if len(now := firing()) == 2 else None, 45, 0.2, f"{alert} twice"
        )
        for config, labels in alerts.items():
            assert (labels["severity"], labels["job"]) == ("warning", job), config
        assert sorted(alerts) == ["config", "web config"]
        # The previous ones are still in force: the target is scraped, the header sent.
        scraped = running.scrape()
        assert scraped.value("pg_up", target=TARGET) == 1
        assert http_get(f"{running.url}/healthz")[2].get("X-Frame-Options") == "deny"

        config_file.write_text(yaml.safe_dump(good_config))
        web_file.write_text(yaml.safe_dump(good_web))
        assert exporter.reload() == []
        wait_until(lambda: not firing(), 45, 0.2, f"{alert} resolved")
    except BaseException:
        print(f"--- prometheus log ---\n{prom.log_tail(60)}")
        raise
    finally:
        prom.stop()
        exporter.stop()
