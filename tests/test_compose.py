"""The compose stack (docker-compose.yml), checked without a Docker engine.

The file is validated against the Compose specification's JSON schema (shipped in the
check-jsonschema package); every bind mount must exist; each service's mounts are laid out in a
temporary directory at their container paths, so promtool and amtool check exactly the files
the containers would read. The stack's own pieces (its monitoring role, the exporter's config,
the load generator) then run against a real PostgreSQL with password authentication, as the
postgres image sets it up.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import psycopg.conninfo
import pytest
import yaml

from exporter.cli import DEFAULT_PORT
from harness.localpg import LocalCluster
from tests.conftest import new_cluster, require_program
from tests.helpers import REPO, wait_until

COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def schema_errors(document: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount of a service (short or long syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE_FILE.parent / source).resolve(), target))
    return mounts


def materialize(service: str, root: Path) -> Path:
    """Copy a service's bind mounts under `root` at their container paths."""
    for source, target in bind_mounts(SERVICES[service]):
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(source, dest)
    return root


def flag(service: str, name: str) -> str:
    """The value of `--name=value` in a service's command."""
    for arg in SERVICES[service].get("command", []):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"service {service} has no --{name}")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def alert_job() -> str:
    return yaml.safe_load((REPO / "alerts" / "thresholds.yaml").read_text())["job"]


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    assert schema_errors(COMPOSE) == []


def test_the_schema_check_rejects_a_broken_file() -> None:
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["exporter"]["restart_policy"] = "always"  # not a service key
    broken["services"]["prometheus"]["ports"] = "9090"  # must be a list
    errors = schema_errors(broken)
    assert any("restart_policy" in e for e in errors), errors
    assert any(e.startswith("services/prometheus/ports") for e in errors), errors


def test_the_stack_has_its_services_with_pinned_images() -> None:
    assert {"postgres", "exporter", "prometheus", "alertmanager", "grafana", "loadgen"} <= set(
        SERVICES
    )
    for name, service in SERVICES.items():
        if "build" in service:
            context = COMPOSE_FILE.parent / service["build"]
            assert (context / "Dockerfile").is_file(), name
        else:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"


def test_every_mounted_path_exists_in_the_repository() -> None:
    checked = 0
    for name, service in SERVICES.items():
        for source, _target in bind_mounts(service):
            assert source.exists(), f"service {name} mounts {source}, which does not exist"
            assert source.is_relative_to(REPO), f"service {name} mounts {source} outside the repo"
            checked += 1
    assert checked >= 8


def test_prometheus_config_as_mounted_is_valid_and_loads_the_rules(tmp_path: Path) -> None:
    promtool = require_program("promtool")
    root = materialize("prometheus", tmp_path)
    config = root / flag("prometheus", "config.file").lstrip("/")
    result = run(promtool, "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout + result.stderr)
    assert found and int(found.group(1)) >= 10, result.stdout + result.stderr


def test_prometheus_scrapes_the_exporter_under_the_job_the_rules_select() -> None:
    config = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
    exporter_target = f"exporter:{DEFAULT_PORT}"
    jobs = [
        job["job_name"]
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        if exporter_target in static["targets"]
    ]
    assert jobs == [alert_job()]
    rules = (REPO / "alerts" / "pg-connections-exporter.rules.yml").read_text()
    assert f'job="{alert_job()}"' in rules
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert "exporter" in SERVICES and "alertmanager" in SERVICES


def test_alertmanager_config_as_mounted_is_valid(tmp_path: Path) -> None:
    amtool = require_program("amtool")
    root = materialize("alertmanager", tmp_path)
    config = root / flag("alertmanager", "config.file").lstrip("/")
    assert config.read_text() == (REPO / "alerts" / "alertmanager.example.yml").read_text()
    result = run(amtool, "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_grafana_provisions_the_dashboards_and_the_stacks_prometheus(tmp_path: Path) -> None:
    root = materialize("grafana", tmp_path)
    providers_dir = root / "etc/grafana/provisioning/dashboards"
    (provider_file,) = providers_dir.glob("*.yaml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    provisioned = {p.name for p in (root / provider["options"]["path"].lstrip("/")).glob("*.json")}
    assert provisioned == {p.name for p in (REPO / "dashboards").glob("*.json")}
    assert len(provisioned) >= 2
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (root / home.lstrip("/")).is_file()
    sources = [
        ds
        for f in (root / "etc/grafana/provisioning/datasources").glob("*.yaml")
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    prometheus = [ds for ds in sources if ds["type"] == "prometheus"]
    assert [ds["url"] for ds in prometheus] == ["http://prometheus:9090"]
    assert prometheus[0]["isDefault"] is True


def test_exporter_config_as_mounted_passes_check_config(tmp_path: Path) -> None:
    root = materialize("exporter", tmp_path)
    config = root / flag("exporter", "config.file").lstrip("/")
    env = {"PATH": "/usr/bin:/bin", **SERVICES["exporter"]["environment"]}

    def check_config() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exporter", f"--config.file={config}", "--check-config"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = check_config()
    assert result.returncode == 0, result.stderr
    assert "valid: 1 target(s)" in result.stdout
    # Without the password variable the same file is refused, naming it.
    env.pop("PGCE_PASSWORD")
    result = check_config()
    assert result.returncode == 2 and "PGCE_PASSWORD" in result.stderr, result.stderr


def test_loadgen_runs_the_script_the_stack_mounts(tmp_path: Path) -> None:
    service = SERVICES["loadgen"]
    root = materialize("loadgen", tmp_path)
    script = service["entrypoint"][-1]
    assert (root / script.lstrip("/")).read_text() == (REPO / "scripts/loadgen.py").read_text()
    # The image's HEALTHCHECK asks the exporter's port: the load generator has none.
    assert service["healthcheck"] == {"disable": True}


# The stack's pieces on a real PostgreSQL, with the postgres image's password authentication.


def to_local(dsn: str, cluster: LocalCluster) -> str:
    """A compose-network DSN (host=postgres) pointed at the local cluster instead."""
    return psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=cluster.port)


@pytest.fixture
def stack_postgres() -> Iterator[LocalCluster]:
    # 57 slots: the steady load and the churn stay under 60%, only a wave passes 80%.
    cluster = new_cluster("15", max_connections=60)
    try:
        password = SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"]
        cluster.execute(f"ALTER ROLE postgres PASSWORD '{password}'")
        for sql_file in sorted((REPO / "deploy/compose/postgres-init").glob("*.sql")):
            cluster.execute(sql_file.read_text())
        # What the postgres image writes: password authentication for every TCP client.
        cluster.hba_prepend("host all all 127.0.0.1/32 scram-sha-256")
        yield cluster
    finally:
        cluster.stop()


def test_stack_exporter_and_loadgen_on_a_real_server(
    stack_postgres: LocalCluster, exporter_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    loadgen_dsn = to_local(SERVICES["loadgen"]["environment"]["LOADGEN_DSN"], stack_postgres)
    fast_waves = ["--wave-every", "12", "--wave-length", "4", "--wave-utilization", "0.85"]
    loadgen = subprocess.Popen(
        [sys.executable, "scripts/loadgen.py", "--dsn", loadgen_dsn, *fast_waves, "--tick", "0.2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for key, value in SERVICES["exporter"]["environment"].items():
            monkeypatch.setenv(key, value)
        config = yaml.safe_load((REPO / "deploy/compose/exporter.yaml").read_text())
        for target in config["targets"]:
            target["dsn"] = to_local(target["dsn"], stack_postgres)
        exporter = exporter_for(config)

        def loaded(s: Any) -> bool:
            apps = s.by("pg_connections_by_application", "application_name", state="idle")
            return (
                s.value("pg_up") == 1
                and {"storefront", "metabase"} <= set(apps)
                and (s.get("pg_connections_waiting", wait_event_type="Lock") or 0) >= 1
            )

        samples = exporter.scrape_until(loaded, 30, "the load generator's sessions and lock")
        # pg_monitor (granted by the stack's init script) shows every session's state.
        assert samples.value("pg_connections_state_hidden") == 0
        assert samples.value("pg_connections_by_user", usename="batch", state="active") >= 2
        assert samples.value("pg_connections_utilization_ratio") < 0.7
        high = exporter.scrape_until(
            lambda s: s.value("pg_connections_utilization_ratio") >= 0.8,
            30,
            "a wave above 80% of the slots",
        )
        assert high.value("pg_connections_utilization_ratio") <= 0.9
        assert high.by("pg_connections_by_application", "application_name")["report-burst"] >= 10
        exporter.scrape_until(
            lambda s: s.value("pg_connections_utilization_ratio") < 0.8,
            30,
            "the wave to drain",
        )
    finally:
        loadgen.terminate()
        output = loadgen.communicate(timeout=30)[0]
    assert loadgen.returncode == 0, output
    assert "Traceback" not in output, output

    def sessions_left() -> int:
        with psycopg.connect(stack_postgres.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND usename IN ('web', 'batch', 'reporting')"
            ).fetchone()
        assert row is not None
        return row[0]

    wait_until(lambda: sessions_left() == 0, 20, what="the load generator's sessions to close")
