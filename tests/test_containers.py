"""The official PostgreSQL container images (13, 14, 16, 17), beside the local servers.

Runs only where a Docker engine answers; without one it skips cleanly. CI here has no engine;
every major 12-18 is tested there on local servers (tests/conftest.py, pg_any_major).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

IMAGES = ["postgres:13-alpine", "postgres:14-alpine", "postgres:16-alpine", "postgres:17-alpine"]


def docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="module", params=IMAGES)
def container_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    if not docker_engine_answers():
        pytest.skip("no Docker engine answers: container-based PostgreSQL versions not tested")
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer(request.param, driver=None) as pg:
        yield (
            f"host={pg.get_container_host_ip()} port={pg.get_exposed_port(5432)} "
            f"user={pg.username} password={pg.password} dbname={pg.dbname}"
        )


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
