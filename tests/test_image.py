"""The image of the real Dockerfile, run as users run it, through testcontainers.

The image is built here without a registry (tests/images.py: the Dockerfile on a local Debian
base with Python) and run by podman behind its Docker-compatible API
(tests/container_fixtures.py). The containers share the host's network, so the `pg` servers on
127.0.0.1 are reached as from any container, and each exporter serves on a free port of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from harness.localpg import LocalCluster, free_port
from tests import images
from tests.conftest import new_cluster
from tests.helpers import REPO, Samples, http_get, wait_until
from tests.podman import Podman
from tests.test_exporter import exporter_backends

CONFIG_PATH = "/etc/pg-connections-exporter/config.yaml"


@dataclass
class Running:
    """A container of the image, serving on `port` of the host's network."""

    container: Any  # testcontainers' DockerContainer
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def id(self) -> str:
        return str(self.container.get_wrapped_container().id)

    def scrape(self, path: str = "/metrics") -> Samples:
        status, body, _ = http_get(f"{self.url}{path}")
        assert status == 200, body
        return Samples(body)

    def exec(self, *command: str) -> tuple[int, str]:
        result = self.container.exec(list(command))
        return result.exit_code, result.output.decode(errors="replace")

    def logs(self) -> str:
        out, err = self.container.get_logs()
        return (out + err).decode(errors="replace")


@contextlib.contextmanager
def run_image(
    image: str,
    *args: str,
    env: dict[str, str] | None = None,
    volumes: tuple[tuple[Path, str], ...] = (),
    wait: bool = True,
    **kwargs: Any,
) -> Iterator[Running]:
    """The image with `args`, listening on `:PORT` (every address, the default's form) and its
    HEALTHCHECK pointed there; removed at the end."""
    from testcontainers.core.container import DockerContainer

    port = free_port()
    container = (
        DockerContainer(image)
        .with_kwargs(network_mode="host", **kwargs)
        .with_command([*args, f"--web.listen-address=:{port}"])
        .with_env("PGCE_HEALTHCHECK_URL", f"http://127.0.0.1:{port}/healthz")
    )
    for key, value in (env or {}).items():
        container.with_env(key, value)
    for host, path in volumes:
        container.with_volume_mapping(str(host), path, "ro")
    with container:
        running = Running(container, port)
        if wait:

            def ready() -> bool:
                container.reload()
                if container.status != "running":
                    raise RuntimeError(f"the container exited:\n{running.logs()}")
                return http_get(f"{running.url}/healthz", timeout=2)[0] == 200

            wait_until(ready, 60, 0.1, "the exporter in its container to answer /healthz")
        yield running


def tcp_dsn(cluster: LocalCluster, **params: Any) -> str:
    return cluster.dsn(host="127.0.0.1", **params)


def test_data_source_name(pg: LocalCluster, exporter_image: str, docker_host: str) -> None:
    with run_image(exporter_image, env={"DATA_SOURCE_NAME": tcp_dsn(pg)}) as running:
        s = running.scrape()
        assert s.value("pg_up", target="default") == 1
        assert s.value("pg_connections_max", target="default") == 120
        assert s.value("pg_connections_used", target="default") >= 1
        wait_until(lambda: exporter_backends(pg) == 1, 10, what="the container's one backend")
        # The default listen address (no host) answers on IPv6 as well.
        assert http_get(f"http://[::1]:{running.port}/healthz")[0] == 200


def test_mounted_config_file(pg: LocalCluster, exporter_image: str, docker_host, tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": [{"name": "main", "dsn": tcp_dsn(pg)}]}))
    config.chmod(0o644)
    with run_image(
        exporter_image, f"--config.file={CONFIG_PATH}", volumes=((config, CONFIG_PATH),)
    ) as running:
        s = running.scrape()
        assert s.value("pg_up", target="main") == 1
        assert s.value("pg_connections_max", target="main") == 120
        assert s.value("pg_connections_exporter_query_success", query="connections") == 1


def unreachable_dsn() -> str:
    return f"host=127.0.0.1 port={free_port()} user=nobody dbname=postgres connect_timeout=1"


def test_healthcheck_is_healthy_and_unhealthy_when_the_exporter_cannot_serve(
    exporter_image: str, docker_host: str, podman: Podman
) -> None:
    """The image's HEALTHCHECK as podman runs it (no systemd here: by hand). A frozen
    exporter (SIGSTOP) accepts no request: the check times out, unhealthy."""
    with run_image(exporter_image, env={"DATA_SOURCE_NAME": unreachable_dsn()}) as running:
        healthy = podman.run("healthcheck", "run", running.id, check=False)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        running.container.get_wrapped_container().kill(signal="SIGSTOP")
        try:
            sick = podman.run("healthcheck", "run", running.id, check=False, timeout=30)
        finally:
            running.container.get_wrapped_container().kill(signal="SIGCONT")
        assert (sick.returncode, sick.stdout.strip()) == (1, "unhealthy")


def test_runs_as_uid_and_gid_10001_with_their_entries(
    exporter_image: str, docker_host: str
) -> None:
    with run_image(exporter_image, env={"DATA_SOURCE_NAME": unreachable_dsn()}) as running:
        assert running.exec("id") == (
            0,
            "uid=10001(exporter) gid=10001(exporter) groups=10001(exporter)\n",
        )
        assert running.exec("true")[0] == 0
        _, status = running.exec("cat", "/proc/1/status")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split() == ["10001"] * 4
        assert fields["Gid"].split() == ["10001"] * 4
        assert running.exec("getent", "group", "10001") == (0, "exporter:x:10001:\n")


def kubernetes_deployment() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy/kubernetes/deployment.yaml").read_text())


def kubernetes_config(host_allowed: str, username: str) -> dict[str, Any]:
    """deploy/kubernetes/configmap.yaml's config, allowing `host_allowed` and logging in as
    `username` (the test server's superuser) instead of the cluster's."""
    configmap = yaml.safe_load((REPO / "deploy/kubernetes/configmap.yaml").read_text())
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    config["probe"]["allowed_hosts"] = [host_allowed]
    for module in config["auth_modules"].values():
        module["userpass"]["username"] = username
    return config


def secret_volume(directory: Path, pod: dict[str, Any], files: dict[str, str]) -> Path:
    """The pod's secret volume as the kubelet writes it: each file owned by root, its group
    the pod's fsGroup if it has one (else root's), with the volume's defaultMode."""
    (volume,) = (v["secret"] for v in pod["volumes"] if "secret" in v)
    group = pod["securityContext"].get("fsGroup", 0)
    directory.mkdir()
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        os.chown(path, 0, group)
        path.chmod(volume.get("defaultMode", 0o644))
    return directory


def test_runs_with_the_kubernetes_manifests_settings_and_probe_works_from_inside(
    pg: LocalCluster, exporter_image: str, docker_host: str, tmp_path: Path
) -> None:
    """deploy/kubernetes as podman can apply it: the pod's user and group, a read-only root
    filesystem, every capability dropped, no privilege escalation, the manifest's args, the
    ConfigMap's config and the secret's password file; /probe asked from inside the container
    connects to the server with the auth module."""
    pod = kubernetes_deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(kubernetes_config("127.0.0.1/32", "postgres")))
    config.chmod(0o644)
    uid, gid = pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    secret = secret_volume(tmp_path / "secret", pod, {"password": "unused-with-trust\n"})
    with run_image(
        exporter_image,
        *container["args"],
        volumes=((config, mounts["config"]), (secret, mounts["secret"])),
        user=f"{uid}:{gid}",
        read_only=security["readOnlyRootFilesystem"],
        cap_drop=security["capabilities"]["drop"],
        security_opt=["no-new-privileges"],
    ) as running:
        assert running.exec("true")[0] == 0
        _, status = running.exec("cat", "/proc/1/status")
        fields = {k: v.strip() for k, v in (line.split(":", 1) for line in status.splitlines())}
        assert fields["CapEff"] == fields["CapBnd"] == "0000000000000000"
        assert fields["NoNewPrivs"] == "1"
        code, out = running.exec("touch", "/opt/pg-connections-exporter/written")
        assert code != 0 and "Read-only file system" in out
        target = f"127.0.0.1:{pg.port}"
        probe = (
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{running.port}/probe?target={target}&auth_module=monitoring'"
            ", timeout=30).read().decode())"
        )
        code, body = running.exec("python", "-c", probe)
        assert code == 0, body
        s = Samples(body)
        assert s.value("pg_up") == 1
        assert s.value("pg_connections_max") == 120
        # --log.format=json, from the manifest's args: every line is a JSON object.
        lines = [line for line in running.logs().splitlines() if line.strip()]
        assert lines and all(isinstance(json.loads(line), dict) for line in lines)


def test_sigterm_stops_it_in_under_2_seconds(
    pg: LocalCluster, exporter_image: str, docker_host: str
) -> None:
    with run_image(exporter_image, env={"DATA_SOURCE_NAME": tcp_dsn(pg)}) as running:
        wait_until(lambda: exporter_backends(pg) == 1, 10, what="the container's backend")
        wrapped = running.container.get_wrapped_container()
        started = time.monotonic()
        wrapped.kill(signal="SIGTERM")
        exit_code = wrapped.wait(timeout=10)["StatusCode"]
        elapsed = time.monotonic() - started
        assert (exit_code, elapsed < 2) == (0, True), (elapsed, running.logs())
        wait_until(lambda: exporter_backends(pg) == 0, 5, what="its connection to close")


def test_the_compose_load_generator_starts_from_the_image(
    exporter_image: str, docker_host: str
) -> None:
    """docker-compose.yml's `loadgen` service (its entrypoint, command and mounted script) on
    the image, against a server of its own: it creates the demo's roles and holds its steady
    sessions."""
    service = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["loadgen"]
    ((source, target),) = (v.removesuffix(":ro").split(":") for v in service["volumes"])
    cluster = new_cluster("15", max_connections=100)
    try:
        dsn = tcp_dsn(cluster, password="postgres")
        from testcontainers.core.container import DockerContainer

        container = (
            DockerContainer(exporter_image)
            .with_kwargs(network_mode="host", entrypoint=service["entrypoint"])
            .with_command(service["command"])
            .with_env("LOADGEN_DSN", dsn)
            .with_volume_mapping(str(REPO / source), target, "ro")
        )
        with container:

            def storefront_sessions() -> int:
                with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE application_name = 'storefront'"
                    ).fetchone()
                assert row is not None
                return int(row[0])

            try:
                wait_until(lambda: storefront_sessions() >= 14, 60, 0.2, "loadgen's sessions")
            except AssertionError as exc:
                out, err = container.get_logs()
                raise AssertionError(f"{exc}\n{(out + err).decode(errors='replace')}") from None
            wrapped = container.get_wrapped_container()
            wrapped.kill(signal="SIGTERM")
            assert wrapped.wait(timeout=30)["StatusCode"] == 0
            wait_until(lambda: storefront_sessions() == 0, 10, what="loadgen's sessions to close")
    finally:
        cluster.stop()


def test_the_image_adds_little_to_its_base(
    exporter_image: str, base_image: str, podman: Podman
) -> None:
    """The final stage is the base plus the virtual environment: no pip cache, no build
    tools, no source tree (README, "Container image": the size on the local base)."""
    added = images.image_size(podman, exporter_image) - images.image_size(podman, base_image)
    assert 0 < added < 75e6, f"{added / 1e6:.0f} MB over the base"
