"""PostgreSQL servers in containers (13, 14, 16, 17), driven through testcontainers.

The images are local (tests/images.py: the test base plus each major's npm server binaries),
served to testcontainers by podman's Docker-compatible API (tests/container_fixtures.py); the
containers share the host's network, each server on a free port of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from harness.localpg import free_port
from tests.helpers import wait_until

MAJORS = ["13", "14", "16", "17"]
PASSWORD = "container-secret"


@pytest.fixture(scope="module", params=MAJORS, ids=lambda major: f"pg{major}")
def container_dsn(
    request: pytest.FixtureRequest, docker_host: str, postgres_image: Callable[[str], str]
) -> Iterator[str]:
    from testcontainers.core.container import DockerContainer

    port = free_port()
    container = (
        DockerContainer(postgres_image(request.param))
        .with_kwargs(network_mode="host")
        .with_env("PGPORT", str(port))
        .with_env("POSTGRES_PASSWORD", PASSWORD)
    )
    with container:
        dsn = f"host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname=postgres"

        def accepts() -> bool:
            try:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    return conn.info.server_version // 10000 == int(request.param)
            except psycopg.OperationalError:
                return False

        try:
            wait_until(accepts, 60, 0.2, f"PostgreSQL {request.param} in its container")
        except AssertionError as exc:
            out, err = container.get_logs()
            raise AssertionError(f"{exc}\n{(out + err).decode(errors='replace')}") from None
        yield dsn


def test_saturation_metrics_on_other_versions(container_dsn: str, exporter_for) -> None:
    running = exporter_for({"targets": [{"name": "c", "dsn": container_dsn}]})
    s = running.scrape()
    assert s.value("pg_up", target="c") == 1
    assert s.value("pg_connections_max", target="c") == 100
    usable = 100 - s.value("pg_connections_superuser_reserved") - s.value("pg_connections_reserved")
    used = s.value("pg_connections_used")
    assert used >= 1
    assert s.value("pg_connections_utilization_ratio") == pytest.approx(used / usable)
    assert s.value("pg_connections_exporter_query_success", query="connections") == 1


def test_a_wrong_password_is_pg_up_0(container_dsn: str, exporter_for) -> None:
    """The servers really ask for the password (SCRAM), so the test above used it."""
    wrong = container_dsn.replace(f"password={PASSWORD}", "password=wrong")
    running = exporter_for({"targets": [{"name": "c", "dsn": wrong}]})
    assert running.scrape().value("pg_up", target="c") == 0
