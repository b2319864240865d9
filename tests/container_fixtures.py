"""Fixtures of the container tests (tests/conftest.py imports them): the engine, the
Docker-compatible API testcontainers drives, and the images.

Each pytest-xdist worker runs its own `podman system service` (a second or so) on the shared
storage; the images are built once per machine and content (tests/images.py, under a file lock).
Where no engine can run the tests skip, saying why; under CI=true they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests import images
from tests.podman import EngineUnavailable, Podman

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def podman() -> Podman:
    try:
        return Podman.here()
    except EngineUnavailable as exc:
        if IN_CI:
            pytest.fail(f"no container engine: {exc} (CI=true: fails instead of skipping)")
        pytest.skip(f"no container engine: {exc}")


@pytest.fixture(scope="session")
def docker_host(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This worker's `podman system service`, as DOCKER_HOST for testcontainers (no Ryuk: the
    tests remove their containers, and Ryuk's image is in no local storage)."""
    saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED")}
    with podman.service(tmp_path_factory.mktemp("podman-service")) as url:
        os.environ["DOCKER_HOST"] = url
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
        from testcontainers.core.config import testcontainers_config

        testcontainers_config.ryuk_disabled = True
        try:
            yield url
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="session")
def base_image(podman: Podman) -> str:
    return images.base_image(podman)


@pytest.fixture(scope="session")
def exporter_image(podman: Podman, base_image: str) -> str:
    """The image of the real Dockerfile, as users build it (on the local base)."""
    return images.exporter_image(podman, base_image)


@pytest.fixture(scope="session")
def postgres_image(podman: Podman, base_image: str) -> Callable[[str], str]:
    """A local PostgreSQL server image of a major (from its npm binaries)."""
    return lambda major: images.postgres_image(podman, base_image, major)
