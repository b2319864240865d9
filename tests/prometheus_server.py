"""Real Prometheus and Alertmanager servers for end-to-end tests.

Each runs as a plain subprocess in its own temporary directory on a free 127.0.0.1 port, is
waited for on /-/ready with a deadline, and is stopped by its pid; the directory goes with it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from harness.localpg import free_port
from harness.processes import log_tail, stop_process
from tests.helpers import http_get, wait_until


class ServerProcess:
    """A Prometheus-ecosystem server: started by start(), stopped by stop() (in a finally)."""

    name = "server"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix=f"pgce-{self.name}-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    def args(self) -> list[str]:
        """The command-line flags, given self.dir and self.port."""
        raise NotImplementedError

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.port = free_port()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, *self.args()],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
            )

        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, (
                f"{self.name} exited:\n{self.log_tail()}"
            )
            return http_get(f"{self.url}/-/ready", timeout=2)[0] == 200

        wait_until(ready, timeout, 0.1, f"{self.name} to be ready")
        return self

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        try:
            if self.process is not None:
                stop_process(self.process)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class PrometheusServer(ServerProcess):
    """`prometheus` scraping `scrape_targets` (host:port) under job `job`, with optional rules
    (a rule-file dict, or rule files already written) and an optional Alertmanager."""

    name = "prometheus"

    def __init__(
        self,
        binary: str,
        scrape_targets: list[str],
        job: str = "pg-connections",
        rules: dict[str, Any] | None = None,
        interval: str = "1s",
        rule_files: list[Path] | None = None,
        alertmanager: str | None = None,
    ) -> None:
        super().__init__(binary)
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": scrape_targets}],
                }
            ],
        }
        files = [str(f) for f in rule_files or []]
        if rules is not None:
            (self.dir / "rules.yml").write_text(yaml.safe_dump(rules))
            files.append(str(self.dir / "rules.yml"))
        if files:
            config["rule_files"] = files
        if alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]
            }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def args(self) -> list[str]:
        return [
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--rules.alert.resend-delay=1s",
        ]

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; the decoded body (status success or error)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, body, _ = http_get(url, timeout=30)
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"HTTP {status} from {url}: {body[:500]}") from exc

    def query(self, expr: str, time: float | None = None) -> dict[str, Any]:
        params = {"query": expr}
        if time is not None:
            params["time"] = f"{time:.3f}"
        return self.api("query", **params)

    def vector(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's samples as (labels, value); fails unless status is success."""
        answer = self.query(expr)
        assert answer.get("status") == "success", f"{expr}: {answer}"
        data = answer["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]


class AlertmanagerServer(ServerProcess):
    """`prometheus-alertmanager` with the given configuration, clustering off."""

    name = "alertmanager"

    def __init__(self, binary: str, config: dict[str, Any]) -> None:
        super().__init__(binary)
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    def args(self) -> list[str]:
        return [
            f"--config.file={self.dir / 'alertmanager.yml'}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]
