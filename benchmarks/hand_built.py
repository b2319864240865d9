"""What the hand-built parts save on the event-loop core, in one process, in the same rounds.

Against N local targets (servers on 60 loopback addresses each, as fleet.py), one Scraper on an
event loop as the exporter runs it, and each round made several ways in a rotating order; the
figures are process CPU seconds (every thread) per round, medians over the rounds:

- statements: the target runs with exporter/db/statements.py's `execute` (as shipped: a
  prepared query with BEGIN and COMMIT in its message) against a psycopg AsyncCursor in its
  place (`execute(text, prepare=True)` + `fetchall()`, dict rows; BEGIN and COMMIT each their
  own `execute`, as a cursor sends them), and `execute` with that cursor's round trips (what
  the libpq path saves apart from the round trips);
- collector: the families, encoding and gzip of an answer (what exporter/web/gcpause.py pauses
  the collector around) with the pause and without it, and the collections that ran;
- encoder: exporter/metrics/exposition.py's encoder (the one Prometheus's Accept header picks,
  gzipped batch by batch) against prometheus_client's generate_latest and one gzip of its body,
  on the same families, both with the collector paused (as an answer is made).

    python benchmarks/hand_built.py --targets 1000 --rounds 6

Not part of the test suite: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import exposition as library
from psycopg.rows import dict_row

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fleet import PER_SERVER, address, start_servers  # noqa: E402
from fleet_profile import ACCEPT, _Collections, _Families  # noqa: E402

import exporter.db.connection as connection  # noqa: E402
from exporter.config.model import Config, parse_config  # noqa: E402
from exporter.db import statements  # noqa: E402
from exporter.metrics.collector import self_families, target_families  # noqa: E402
from exporter.metrics.exposition import GZIP_LEVEL, choose_encoder, encode  # noqa: E402
from exporter.scrape.scraper import Scraper  # noqa: E402
from exporter.web.gcpause import ANSWERS  # noqa: E402

Execute = Callable[..., Any]
# Prometheus's default scrape timeout: a round here is never cut short by its deadline.
SCRAPE_TIMEOUT = 10.0


async def cursor_execute(
    conn: psycopg.AsyncConnection[Any],
    text: bytes,
    limit: float,
    name: bytes | None = None,
    prepare: bool = False,
    before: Sequence[bytes] = (),
    after: Sequence[bytes] = (),
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """statements.execute's contract with a psycopg cursor: prepared by psycopg when `name`
    is given, BEGIN and COMMIT as statements of their own."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(limit - time.monotonic() + loop.time()):
            for statement in before:
                await conn.execute(statement)
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(text, prepare=name is not None)
            rows = await cur.fetchall() if cur.description else []
            columns = tuple(c.name for c in cur.description or ())
            for statement in after:
                await conn.execute(statement)
    except TimeoutError:
        raise psycopg.OperationalError("the server did not answer in time") from None
    return rows, columns


async def split_execute(
    conn: psycopg.AsyncConnection[Any],
    text: bytes,
    limit: float,
    name: bytes | None = None,
    prepare: bool = False,
    before: Sequence[bytes] = (),
    after: Sequence[bytes] = (),
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """statements.execute with a cursor's round trips: BEGIN and COMMIT apart."""
    for statement in before:
        await statements.execute(conn, statement, limit)
    result = await statements.execute(conn, text, limit, name, prepare)
    for statement in after:
        await statements.execute(conn, statement, limit)
    return result


@contextlib.contextmanager
def statements_by(execute: Execute) -> Iterator[None]:
    shipped = connection.execute
    connection.execute = execute
    try:
        yield
    finally:
        connection.execute = shipped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    servers = start_servers(math.ceil(args.targets / PER_SERVER))
    try:
        targets = []
        for i in range(args.targets):
            s, host = address(i)
            targets.append({"name": f"t{i:04d}", "dsn": servers[s].dsn(host=host)})
        asyncio.run(_measure(parse_config({"targets": targets}, "hand_built"), args))
    finally:
        for server in servers:
            server.stop()
    return 0


async def _measure(config: Config, args: argparse.Namespace) -> None:
    scraper = Scraper(config)
    await scraper.open()
    ours, _ = choose_encoder(ACCEPT)
    theirs, _ = library.choose_encoder(ACCEPT)
    deadline = time.monotonic() + 180
    while sum(r.up for r in await scraper.scrape(SCRAPE_TIMEOUT)) < args.targets:
        if time.monotonic() > deadline:
            raise SystemExit("not every target came up")
        await asyncio.sleep(0.5)
    collections = _Collections()
    cpu: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}

    def note(name: str, seconds: float, count: int | None = None) -> None:
        cpu.setdefault(name, []).append(seconds)
        if count is not None:
            counts.setdefault(name, []).append(count)

    async def runs(name: str, execute: Execute, record: bool = True) -> list[Any]:
        with statements_by(execute):
            t0 = time.process_time()
            results = await scraper.scrape(SCRAPE_TIMEOUT)
            if record:
                note(name, time.process_time() - t0)
        errors = Counter(o.error for r in results for o in r.queries if o.error is not None)
        down = sum(1 for r in results if not r.up)
        if errors or down:  # said, not hidden: that round did less work
            print(
                f"  {name}: {down} targets down, {sum(errors.values())} queries failed "
                f"({'; '.join(f'{n} x {e[:80]}' for e, n in errors.most_common(2))})",
                flush=True,
            )
        return results

    def answer(name: str, results: list[Any], paused: bool) -> None:
        before = collections.count
        with ANSWERS.during() if paused else contextlib.nullcontext():
            t0 = time.process_time()
            families = list(target_families(results)) + list(
                self_families(scraper.targets, results)
            )
            encode(ours, _Families(families), True)  # type: ignore[arg-type]
            note(name, time.process_time() - t0, collections.count - before)

    def encoders(results: list[Any], first_ours: bool) -> None:
        with ANSWERS.during():
            families = list(target_families(results)) + list(
                self_families(scraper.targets, results)
            )
            registry: Any = _Families(families)
            for which in ("ours", "library") if first_ours else ("library", "ours"):
                t0 = time.process_time()
                if which == "ours":
                    encode(ours, registry, True)
                else:
                    gzip.compress(theirs(registry), compresslevel=GZIP_LEVEL)
                note(f"encoder: {which}", time.process_time() - t0)

    variants: list[tuple[str, Execute]] = [
        ("statements.execute (shipped)", statements.execute),
        ("psycopg AsyncCursor", cursor_execute),
        ("statements.execute, BEGIN and COMMIT apart", split_execute),
    ]
    for _, execute in variants:  # unrecorded: every variant's statements prepared once
        await runs("warm-up", execute, record=False)
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for k in range(len(variants)):
            name, execute = variants[(r + k) % len(variants)]
            results = await runs(name, execute)
            del results
        results = await runs("runs for the answers", statements.execute)
        for paused in (r % 2 == 0, r % 2 != 0):
            label = "answer, collector paused" if paused else "answer, collector on"
            answer(label, results, paused)
        encoders(results, first_ours=r % 2 == 0)
        del results
        load.append(os.getloadavg()[0])
    await scraper.close()
    n = args.targets
    print(
        f"{n} targets, {args.rounds} rounds, load average (1 min) "
        f"{' → '.join(f'{x:.1f}' for x in load)}"
    )
    print("| Variant | CPU s per round (median, min-max) | ms per target | collections a round |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in cpu.items():
        made = counts.get(name)
        print(
            f"| {name} | {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}) "
            f"| {1000 * statistics.median(values) / n:.3f} | "
            f"{statistics.median(made) if made else '':} |"
        )
    print(f"unreachable objects found by the collections: {collections.collected}")


if __name__ == "__main__":
    raise SystemExit(main())
