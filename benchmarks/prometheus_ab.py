"""Two builds of pg-connections-exporter scraped by one real Prometheus, side by side.

One local PostgreSQL with `--sessions` idle client sessions; each build's exporter serves it
as its one target; one Prometheus scrapes both every second (its own headers, gzip, its
timeout header) for `--seconds`. Reports each build's median and mean `scrape_duration_seconds`
as Prometheus measured it, and the exporter's CPU per scrape (from /proc).

    python benchmarks/prometheus_ab.py --baseline OTHER/.venv/bin/pg-connections-exporter

Not part of the test suite's pass/fail: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from scrape_cost import start_ours  # noqa: E402

from harness.localpg import LocalCluster, debian_bindir, embedded_bindir  # noqa: E402
from harness.processes import cpu_seconds  # noqa: E402
from tests.prometheus_server import PrometheusServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--sessions", type=int, default=100)
    args = parser.parse_args()
    bindir = debian_bindir(15) or embedded_bindir()
    cluster = LocalCluster(bindir, {"max_connections": args.sessions + 20}).start()
    sessions = [psycopg.connect(cluster.dsn(), autocommit=True) for _ in range(args.sessions)]
    with tempfile.TemporaryDirectory(prefix="pgce-prom-ab-") as tmp:
        builds = {
            "this build": start_ours(Path(tmp), dsn=cluster.dsn()),
            "baseline": start_ours(Path(tmp), dsn=cluster.dsn(), script=args.baseline),
        }
        instance = {name: f"127.0.0.1:{p.port}" for name, p in builds.items()}
        prometheus = PrometheusServer("prometheus", list(instance.values())).start()
        try:
            cpu = {name: cpu_seconds(p.pid) for name, p in builds.items()}
            load = os.getloadavg()[0]
            started = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - started
            cpu = {name: cpu_seconds(p.pid) - cpu[name] for name, p in builds.items()}
            window = f"{args.seconds - 5}s"
            print(
                f"{args.sessions} sessions, {args.seconds} s at a 1 s interval, load average "
                f"(1 min) {load:.1f} → {os.getloadavg()[0]:.1f}"
            )
            print(
                "| Build | scrapes | scrape_duration_seconds ms (median / mean / max) | "
                "exporter CPU ms per scrape |"
            )
            print("| --- | ---: | ---: | ---: |")
            for name in builds:
                series = prometheus.api(
                    "query",
                    query=f'scrape_duration_seconds{{instance="{instance[name]}"}}[{window}]',
                )["data"]["result"][0]["values"]
                values = [1000 * float(v) for _, v in series]
                print(
                    f"| {name} | {len(values)} | {statistics.median(values):.2f} / "
                    f"{statistics.mean(values):.2f} / {max(values):.2f} | "
                    f"{1000 * cpu[name] / elapsed:.2f} |"
                )
        finally:
            prometheus.stop()
            for p in builds.values():
                p.stop()
            for s in sessions:
                s.close()
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
