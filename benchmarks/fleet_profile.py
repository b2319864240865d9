"""Where a fleet scrape's CPU and memory go, in-process: N targets, each phase measured apart.

The fleet benchmark (fleet.py) measures the exporter from outside; this one runs the same
pipeline inside one process (Scraper, ExporterCollector, the encoder Prometheus's Accept header
picks, gzip) against N local targets (servers on 60 loopback addresses each, as fleet.py), and
reports the process CPU seconds (every thread) of each phase per round: the target runs, the
metric families, the encoding, gzip. `--profile FILE` writes a cProfile of the phases run in
the calling thread, with the target runs made serially there too (`--serial`), so that the
profile sees them.

Each round runs with the garbage collector paused, as the exporter answers /metrics
(exporter/web/gcpause.py); `--gc-on` leaves it on. Either way the report says how many collections
ran and what they took, and how many unreachable objects the collections and a full one after
the rounds found (the pause rests on there being none).

    python benchmarks/fleet_profile.py --targets 240 --rounds 5
    python benchmarks/fleet_profile.py --targets 120 --serial --profile /tmp/fleet.prof

Not part of the test suite: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import gzip
import math
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fleet import PER_SERVER, address, start_servers  # noqa: E402

from exporter.config.model import Config, parse_config  # noqa: E402
from exporter.metrics.collector import ExporterCollector, self_families, target_families  # noqa: E402
from exporter.metrics.exposition import choose_encoder  # noqa: E402
from exporter.scrape.scraper import Scraper  # noqa: E402
from exporter.web.gcpause import ANSWERS  # noqa: E402
from harness.processes import proc_status  # noqa: E402

ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


class _Families:
    def __init__(self, metrics: list[object]) -> None:
        self.metrics = metrics

    def collect(self) -> list[object]:
        return self.metrics


class _Collections:
    """The collections the garbage collector runs, and their process CPU."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.collected = 0  # unreachable objects found
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.count += 1
            self.seconds += time.process_time() - self._start
            self.collected += info["collected"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--serial", action="store_true", help="target runs in this thread")
    parser.add_argument("--profile", help="write a cProfile of the rounds here")
    parser.add_argument("--gc-on", action="store_true", help="do not pause the collector")
    args = parser.parse_args(argv)
    servers = start_servers(math.ceil(args.targets / PER_SERVER))
    try:
        targets = []
        for i in range(args.targets):
            s, host = address(i)
            targets.append({"name": f"t{i:04d}", "dsn": servers[s].dsn(host=host)})
        data: dict[str, object] = {"targets": targets}
        if args.concurrency:
            data["settings"] = {"scrape_concurrency": args.concurrency}
        config = parse_config(data, "fleet_profile")
        asyncio.run(_profile(config, args))
    finally:
        for server in servers:
            server.stop()
    return 0


async def _profile(config: Config, args: argparse.Namespace) -> None:
    """The rounds, on an event loop as the exporter runs them."""
    scraper = Scraper(config)
    await scraper.open()
    collector = ExporterCollector(scraper)
    encoder, _ = choose_encoder(ACCEPT)
    deadline = time.monotonic() + 120
    while sum(r.up for r in await scraper.scrape(10.0)) < args.targets:
        if time.monotonic() > deadline:
            raise SystemExit("not every target came up")
        await asyncio.sleep(0.5)
    phases: dict[str, list[float]] = {"runs": [], "families": [], "encode": [], "gzip": []}
    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    size = 0
    collections = _Collections()
    for _ in range(args.rounds):
        pause = contextlib.nullcontext() if args.gc_on else ANSWERS.during()
        with pause:  # as the exporter answers, and until the answer is gone
            if profiler:
                profiler.enable()
            t0 = time.process_time()
            if args.serial:
                end = time.monotonic() + 10.0
                results = [await t.scrape(end) for t in scraper.targets]
            else:
                results = await scraper.scrape(10.0)
            t1 = time.process_time()
            families = list(target_families(results)) + list(
                self_families(scraper.targets, results)
            )
            t2 = time.process_time()
            body = encoder(_Families(families))  # type: ignore[arg-type]
            t3 = time.process_time()
            size = len(gzip.compress(body, compresslevel=1))
            t4 = time.process_time()
            if profiler:
                profiler.disable()
            for name, took in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[name].append(took)
            assert sum(r.up for r in results) == args.targets
            del results, families, body
    count, seconds = collections.count, collections.seconds
    unreachable = collections.collected + gc.collect()
    _ = collector
    if profiler:
        profiler.dump_stats(args.profile)
    status = proc_status(__import__("os").getpid())
    total = [sum(x) for x in zip(*phases.values(), strict=True)]
    print(f"{args.targets} targets, {args.rounds} rounds, body {size} bytes gzipped")
    for name, values in phases.items():
        per = 1000 * statistics.median(values) / args.targets
        print(f"  {name:9s} median {statistics.median(values):.3f} s  ({per:.2f} ms/target)")
    per = 1000 * statistics.median(total) / args.targets
    print(f"  total     median {statistics.median(total):.3f} s  ({per:.2f} ms/target)")
    print(
        f"  garbage collector {'on' if args.gc_on else 'paused'}: "
        f"{count / args.rounds:.1f} collections a round, "
        f"{1000 * seconds / args.rounds / args.targets:.2f} ms/target; "
        f"{unreachable} unreachable objects found in the rounds and after them"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss, threads = status["VmRSS"], status["threads"]
    print(f"  RSS {rss:.0f} MiB, peak {peak:.0f} MiB, threads {threads:.0f}")
    await scraper.close()


if __name__ == "__main__":
    raise SystemExit(main())
