"""The container engine of the image tests: podman, as root, configured for these machines.

The machine's own podman defaults do not run here: crun fails on a mixed cgroup v1/v2
hierarchy, the default rlimits exceed the hard limits, there is no iptables (so host
networking) and no systemd (so health checks are run by hand). Every podman command here runs
with a containers.conf of its own (CONTAINERS_CONF: runc, cgroupfs, a file event log,
netavark, rlimits capped) and its own --root/--runroot under a cache directory that outlives
the run, so that an image built once is found again (tests/images.py says when it is rebuilt).
`Podman.service()` serves the Docker-compatible API that testcontainers drives.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

# What the engine needs from apt (scripts/install-system-deps.sh installs them for `make test`).
APT_PACKAGES = ("podman", "runc", "netavark", "mmdebstrap")
NPROC_CAP = 32768


class EngineUnavailable(RuntimeError):
    """No container can run on this machine; the message says why (the tests skip with it)."""


class PodmanError(RuntimeError):
    """A podman command failed; the message holds the command and the end of its stderr."""


def cache_root() -> Path:
    """$PGCE_PODMAN_CACHE, else beside the npm PostgreSQL cache (harness/pgmajors.py)."""
    if os.environ.get("PGCE_PODMAN_CACHE"):
        return Path(os.environ["PGCE_PODMAN_CACHE"])
    return Path("/var/cache/pg-connections-exporter/podman")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Held by one process at a time (pytest-xdist workers, other checkouts' runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _missing_programs() -> list[str]:
    return [p for p in ("podman", "runc", "mmdebstrap") if shutil.which(p) is None]


def install_programs() -> None:
    """apt-get install what is missing when root with apt (as scripts/install-system-deps.sh
    does), once per machine whatever the number of workers; else EngineUnavailable."""
    if not _missing_programs():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailable(
            f"programs {', '.join(_missing_programs())} are missing (not root with apt-get:"
            f" install {' '.join(APT_PACKAGES)})"
        )
    with file_lock(cache_root() / "apt.lock"):
        if not _missing_programs():
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
            result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
            if result.returncode:
                raise EngineUnavailable(
                    f"apt-get install {' '.join(APT_PACKAGES)} failed: "
                    + result.stderr.strip()[-500:]
                )


def _capped_ulimits() -> list[str]:
    """podman's default rlimits, capped at this process's hard limits (podman refuses to start
    a container asking for more than the hard limit)."""
    limits = []
    for name, which, cap in (
        ("nofile", resource.RLIMIT_NOFILE, 1 << 20),
        ("nproc", resource.RLIMIT_NPROC, NPROC_CAP),
    ):
        hard = resource.getrlimit(which)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        limits.append(f"{name}={value}:{value}")
    return limits


def containers_conf(runroot: Path) -> str:
    ulimits = ", ".join(f'"{u}"' for u in _capped_ulimits())
    return f"""# Written by tests/podman.py: podman as these machines can run it.
[containers]
default_ulimits = [{ulimits}]
log_driver = "k8s-file"
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{runroot}/events.log"
tmp_dir = "{runroot}/libpod"

[network]
network_backend = "netavark"
"""


@dataclass(frozen=True)
class Podman:
    """podman commands on storage of their own under `state`."""

    state: Path

    @property
    def root(self) -> Path:
        return self.state / "storage"

    @property
    def runroot(self) -> Path:
        return self.state / "run"

    @property
    def conf(self) -> Path:
        return self.state / "containers.conf"

    @classmethod
    def here(cls) -> Podman:
        """The machine's engine, ready to run; EngineUnavailable says why not."""
        if os.geteuid() != 0:
            raise EngineUnavailable("podman runs here as root only (no subuid setup for rootless)")
        install_programs()
        engine = cls(cache_root())
        engine._write_conf()
        result = engine.run("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
        if result.returncode:
            raise EngineUnavailable(f"podman info fails: {result.stderr.strip()[-500:]}")
        return engine

    def _write_conf(self) -> None:
        self.runroot.mkdir(parents=True, exist_ok=True)
        text = containers_conf(self.runroot)
        if self.conf.exists() and self.conf.read_text() == text:
            return
        partial = self.conf.with_name(f".{self.conf.name}.{os.getpid()}")
        partial.write_text(text)
        partial.replace(self.conf)

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def command(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot), *args]

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, cwd: Path = REPO
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args),
            env=self.env(),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode:
            raise PodmanError(
                f"podman {' '.join(args)} exited {result.returncode}:\n"
                + result.stderr.strip()[-2000:]
            )
        return result

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "exists", ref, check=False).returncode == 0

    @contextlib.contextmanager
    def service(self, directory: Path) -> Iterator[str]:
        """`podman system service` on a socket in `directory`, for as long as the block runs;
        yields its DOCKER_HOST (unix://...)."""
        sock = directory / "podman.sock"
        log = (directory / "podman-service.log").open("wb")
        proc = subprocess.Popen(
            self.command("system", "service", "--time=0", f"unix://{sock}"),
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not _answers_ping(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise PodmanError(
                        "podman system service did not answer: "
                        + (directory / "podman-service.log").read_text()[-2000:]
                    )
                time.sleep(0.1)
            yield f"unix://{sock}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=2)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2)
        self.sock.connect(str(self._path))


def _answers_ping(sock: Path) -> bool:
    if not sock.exists():
        return False
    conn = _UnixConnection(sock)
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
