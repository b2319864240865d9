"""A real PgBouncer in front of a throwaway PostgreSQL, for the tests.

It runs in its own temporary directory on a free 127.0.0.1 port, as the cluster's service user
when we are root (PgBouncer refuses to run as root), is waited for by polling its admin
console with a deadline, and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo

from harness.localpg import LocalCluster, free_port
from harness.processes import log_tail, stop_process
from tests.helpers import wait_until

ADMIN_USER = "pgb_admin"
STATS_USER = "pgb_monitor"


# The default [databases] section: one database, `app`, onto the cluster's postgres database
# as the postgres role (one pool, whoever the client is).
DEFAULT_DATABASES = {"app": "dbname=postgres user=postgres"}


class PgBouncer:
    """PgBouncer in front of `cluster`: `databases` maps each pooled database to its connect
    string beyond host and port (by default `app`, onto the postgres database); `users` are the
    client roles its auth file lets in besides postgres and the admin and stats users."""

    def __init__(
        self,
        binary: str,
        cluster: LocalCluster,
        databases: dict[str, str] | None = None,
        users: tuple[str, ...] = (),
        **settings: Any,
    ) -> None:
        self.binary = binary
        self.cluster = cluster
        self.databases = dict(databases or DEFAULT_DATABASES)
        self.users = users
        self.settings = {
            "pool_mode": "transaction",
            "default_pool_size": 2,
            "max_client_conn": 50,
            **settings,
        }
        self.user = cluster.user
        self.dir = Path(tempfile.mkdtemp(prefix="pgce-pgbouncer-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        if self.user:
            shutil.chown(self.dir, self.user)
            self.dir.chmod(0o755)

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def dsn(self, user: str = STATS_USER, dbname: str = "pgbouncer", **params: Any) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, user=user, dbname=dbname, **params
        )

    def _write_config(self) -> Path:
        users = self.dir / "userlist.txt"
        roles = ("postgres", ADMIN_USER, STATS_USER, *self.users)
        users.write_text("".join(f'"{u}" ""\n' for u in roles))
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": users,
            "admin_users": ADMIN_USER,
            "stats_users": STATS_USER,
            "logfile": self.log_path,
            "pidfile": self.dir / "pgbouncer.pid",
            **self.settings,
        }
        ini = self.dir / "pgbouncer.ini"
        upstream = f"host={self.cluster.socket_dir} port={self.cluster.port}"
        ini.write_text(
            "[databases]\n"
            + "".join(f"{name} = {upstream} {rest}\n" for name, rest in self.databases.items())
            + "\n[pgbouncer]\n"
            + "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        for path in (users, ini):
            if self.user:
                shutil.chown(path, self.user)
        return ini

    def start(self, timeout: float = 20.0) -> PgBouncer:
        self.port = free_port()
        ini = self._write_config()
        self.process = subprocess.Popen(
            [self.binary, str(ini)],
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
            start_new_session=True,
        )

        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, (
                f"pgbouncer exited:\n{self.log_tail()}"
            )
            try:
                with psycopg.connect(
                    self.dsn(ADMIN_USER), autocommit=True, cursor_factory=psycopg.ClientCursor
                ) as conn:
                    conn.execute("SHOW VERSION")
            except psycopg.OperationalError:
                return False
            return True

        wait_until(ready, timeout, 0.05, "pgbouncer to accept connections")
        return self

    def reload(self, databases: dict[str, str] | None = None, **settings: Any) -> None:
        """Rewrite the config with these databases and settings changed, and RELOAD it."""
        if databases is not None:
            self.databases = dict(databases)
        self.settings.update(settings)
        self._write_config()
        self.admin("RELOAD")

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Rows of a SHOW command, read as the admin user: the truth to compare with."""
        with psycopg.connect(
            self.dsn(ADMIN_USER), autocommit=True, cursor_factory=psycopg.ClientCursor
        ) as conn:
            cur = conn.execute(command)
            if cur.description is None:
                return []
            names = [c.name for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def pause_process(self) -> None:
        """SIGSTOP: PgBouncer stops answering, as when it hangs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume_process(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        try:
            if self.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGCONT)  # a paused one cannot exit
                stop_process(self.process, timeout=10)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
