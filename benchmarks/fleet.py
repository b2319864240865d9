"""A fleet on one exporter: 100, 500 and 1,000 targets, and 2,000 idle client sockets.

For each size, one exporter (pg-connections-exporter, then postgres_exporter with the same
targets) is scraped the way Prometheus scrapes it, every `--interval` seconds for `--rounds`
rounds, and the benchmark reports: how long a /metrics scrape takes, the exporter's CPU per
round (over the whole interval, as a share of one core), its threads and RSS, and how many
server connections it holds. Then 2,000 client sockets are opened on pg-connections-exporter
and left silent: scrapes must still answer, its threads stay in their budget, and it closes
the sockets after its header timeout.

Targets are distinct servers to both exporters: PostgreSQL listens on at most 64 addresses,
so the benchmark starts ceil(N / 60) local servers, each on 60 loopback addresses
(postgres_exporter labels series by host:port and cannot take two DSNs of one server).

    python benchmarks/fleet.py                       # 100, 500, 1000; 3 rounds of 15 s
    python benchmarks/fleet.py --sizes 50 --rounds 2 --interval 5 --idle-sockets 200  # quick
    python benchmarks/fleet.py --sizes 1000 --no-peer --idle-sockets 0 --baseline SCRIPT  # A/B
    python benchmarks/fleet.py --sizes 1000 --no-peer --idle-sockets 0 --baseline SCRIPT \
        --baseline-first                             # the same, the baseline first
    python benchmarks/fleet.py --sizes 1,100,1000 --no-peer --idle-sockets 0 --sampler-ab

With --sampler-ab, each size runs pg-connections-exporter twice in the same run, on the same
servers: the sampler at its defaults (issue 26: every target sampled between scrapes), then
`sampler: {enabled: false}`; the difference in CPU per round is the sampler's cost.

Not part of the test suite's pass/fail: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from scrape_cost import (  # noqa: E402
    PEER_BINARY,
    PEER_MULTI_TARGET_FLAGS,
    Process,
    Scraper,
    raise_fd_limit,
    start_ours,
    start_peer,
)

from harness.localpg import LocalCluster, debian_bindir, embedded_bindir  # noqa: E402
from harness.processes import cpu_seconds, proc_status  # noqa: E402

PER_SERVER = 60
OURS_APP = "pg-connections-exporter"


@dataclass
class Row:
    contender: str
    targets: int
    scrape_s: list[float]
    cpu_share: list[float]
    threads: int
    rss_mb: float
    hwm_mb: float
    held: int
    up: int
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average when the rounds began / ended

    def line(self) -> str:
        return (
            f"| {self.contender} | {self.targets} | {self.up} | "
            f"{statistics.median(self.scrape_s):.2f} / {max(self.scrape_s):.2f} | "
            f"{100 * statistics.median(self.cpu_share):.1f} % | {self.threads} | "
            f"{self.rss_mb:.0f} / {self.hwm_mb:.0f} | {self.held} | "
            f"{self.load[0]:.1f} → {self.load[1]:.1f} |"
        )


def address(i: int) -> tuple[int, str]:
    """The i-th target: (server index, its loopback address)."""
    server, k = divmod(i, PER_SERVER)
    return server, f"127.0.{server + 10}.{k + 2}"


def start_servers(count: int) -> list[LocalCluster]:
    bindir = debian_bindir(15) or embedded_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries")
    servers = []
    for s in range(count):
        listen = [f"127.0.{s + 10}.{k + 2}" for k in range(PER_SERVER)]
        settings = {
            "max_connections": 2 * PER_SERVER + 20,
            "listen_addresses": ",".join(listen),
            "shared_buffers": "16MB",
        }
        servers.append(LocalCluster(bindir, settings).start())
        print(f"  server {s + 1}/{count} up", flush=True)
    return servers


def held(servers: Sequence[LocalCluster], application_name: str) -> int:
    total = 0
    for server in servers:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            ).fetchone()
            total += int(row[0]) if row else 0
    return total


def up_count(body: bytes) -> int:
    text = body.decode(errors="replace")
    return sum(
        1
        for line in text.splitlines()
        if line.startswith("pg_up") and float(line.rsplit(" ", 1)[1]) == 1
    )


def measure(
    name: str,
    proc: Process,
    servers: Sequence[LocalCluster],
    n: int,
    app: str,
    args: argparse.Namespace,
) -> Row:
    http = Scraper(proc.port)
    try:
        deadline = time.monotonic() + 120
        while True:  # warm: every target connected
            _, body, encoding = http.get()
            body = _plain(body, encoding)
            up = up_count(body)
            if name != OURS_APP or up >= n or time.monotonic() > deadline:
                break
            time.sleep(1)
        scrapes, shares = [], []
        load_before = os.getloadavg()[0]
        for _ in range(args.rounds):
            start, cpu = time.monotonic(), cpu_seconds(proc.pid)
            took, body, encoding = http.get()
            scrapes.append(took)
            up = up_count(_plain(body, encoding))
            time.sleep(max(0.0, start + args.interval - time.monotonic()))
            shares.append((cpu_seconds(proc.pid) - cpu) / (time.monotonic() - start))
        status = proc_status(proc.pid)
        return Row(
            name,
            n,
            scrapes,
            shares,
            int(status["threads"]),
            status["VmRSS"],
            status["VmHWM"],
            held(servers, app),
            up,
            (load_before, os.getloadavg()[0]),
        )
    finally:
        http.close()


def _plain(body: bytes, encoding: str) -> bytes:
    import gzip

    return gzip.decompress(body) if encoding == "gzip" else body


def idle_sockets(proc: Process, count: int) -> list[str]:
    """Open `count` silent sockets on the exporter; scrape meanwhile; note when the exporter
    has closed them all (watched from another thread while the scrapes run)."""
    socks = [socket.create_connection(("127.0.0.1", proc.port), timeout=10) for _ in range(count)]
    opened = time.monotonic()
    closed_after: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        pending = list(socks)
        while pending and not stop.is_set() and time.monotonic() - opened < 180:
            still = []
            for s in pending:
                try:
                    s.setblocking(False)
                    s.recv(1)
                except BlockingIOError:
                    still.append(s)
                except OSError:
                    pass
            pending = still
            if pending:
                time.sleep(0.5)
        if not pending:
            closed_after.append(time.monotonic() - opened)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    http = Scraper(proc.port)
    latencies = [http.get()[0] for _ in range(5)]
    status = proc_status(proc.pid)
    http.close()
    watcher.join(180)
    stop.set()
    for s in socks:
        s.close()
    closed = (
        f"{closed_after[0]:.1f} s after they were opened (header timeout 10 s)"
        if closed_after
        else "not all within 180 s"
    )
    return [
        f"- {count} silent client sockets held open on pg-connections-exporter: 5 scrapes "
        f"meanwhile took {min(latencies):.3f} to {max(latencies):.3f} s; the exporter had "
        f"{status['threads']:.0f} threads and {status['fds']:.0f} open descriptors; it closed "
        f"every socket {closed}."
    ]


OURS_HEAD = (
    "| Exporter | Targets | Up | Scrape s (median / max) | CPU per round (share of one core) "
    "| Threads | RSS MiB (now / peak) | Server connections | Load average (1 min) |"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,500,1000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--idle-sockets", type=int, default=2000)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument(
        "--baseline",
        help="another build's console script (as scrape_cost.py --baseline): measured after "
        "this one at each size, on the same servers",
    )
    parser.add_argument(
        "--baseline-first",
        action="store_true",
        help="measure the baseline before this build (run once each way: each build first once)",
    )
    parser.add_argument(
        "--sampler-ab",
        action="store_true",
        help="at each size, ours with the sampler at its defaults and then with it off",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    raise_fd_limit(args.idle_sockets + 4096)
    servers = start_servers(math.ceil(max(sizes) / PER_SERVER))
    rows: list[Row] = []
    lines: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pgce-fleet-") as tmp:
            workdir = Path(tmp)
            for n in sizes:
                targets = []
                peer_dsns = []
                for i in range(n):
                    s, host = address(i)
                    dsn = servers[s].dsn(host=host)
                    targets.append({"name": f"t{i:04d}", "dsn": dsn})
                    peer_dsns.append(
                        f"postgresql://postgres@{host}:{servers[s].port}/postgres"
                        "?sslmode=disable&application_name=postgres_exporter"
                    )
                config = workdir / f"fleet-{n}.yaml"
                config.write_text(yaml.safe_dump({"targets": targets}))
                off = workdir / f"fleet-{n}-sampler-off.yaml"
                off.write_text(yaml.safe_dump({"targets": targets, "sampler": {"enabled": False}}))
                # (script, config, label): this build, the baseline, this build's sampler off.
                builds: list[tuple[Path | None, Path, str]] = [(None, config, "")]
                if args.baseline:
                    base = (Path(args.baseline), config, " (baseline)")
                    builds.insert(0 if args.baseline_first else 1, base)
                if args.sampler_ab:
                    builds[0 if builds[0][0] is None else 1] = (None, config, " (sampler on)")
                    builds.append((None, off, " (sampler off)"))
                for script, build_config, label in builds:
                    proc = start_ours(workdir, config=build_config, script=script)
                    try:
                        rows.append(measure(OURS_APP, proc, servers, n, OURS_APP, args))
                        if label:
                            rows[-1].contender = f"{OURS_APP}{label}"
                        print(rows[-1].line(), flush=True)
                        if not label and n == max(sizes) and args.idle_sockets:
                            lines += idle_sockets(proc, args.idle_sockets)
                            print(lines[-1], flush=True)
                    finally:
                        proc.stop()
                if not args.no_peer and Path(PEER_BINARY).exists():
                    peer = start_peer(workdir, peer_dsns, *PEER_MULTI_TARGET_FLAGS)
                    try:
                        rows.append(
                            measure(
                                "postgres_exporter", peer, servers, n, "postgres_exporter", args
                            )
                        )
                        print(rows[-1].line(), flush=True)
                    finally:
                        peer.stop()
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
    print()
    print(OURS_HEAD)
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row.line())
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
