"""TargetScraper's own logic (exporter/scrape/target.py) over a fake connection: version gates, the
cache, a failing query failing alone, what the target's kind decides (transaction, watchdog,
missing columns). The real-server behaviour is in tests/test_exporter.py,
tests/test_scrape_transaction.py and tests/test_pgbouncer.py."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from exporter.config.model import QuerySpec, Settings, Target
from exporter.scrape.target import SILENT_SERVER_GRACE, TargetResult, TargetScraper
from tests.unit.target_fakes import Answer, FakeConn, FakeServer, FakeTargetConnection


def query(name: str, kind: str = "postgres", **fields: Any) -> QuerySpec:
    """A query `SELECT <name>` with a gauge `<name>_value` of column `v` (and `extra`'s
    metric `<name>_extra` of column `x` when asked)."""
    metrics = [{"name": f"{name}_value", "help": "h", "value": "v"}]
    if fields.pop("extra", False):
        metrics.append({"name": f"{name}_extra", "help": "h", "value": "x"})
    return QuerySpec.model_validate(
        {"name": name, "sql": f"SELECT {name}", "target_kind": kind, "metrics": metrics, **fields}
    )


def scraper(
    queries: list[QuerySpec],
    answers: dict[str, Answer],
    kind: str = "postgres",
    version: int = 160000,
) -> tuple[TargetScraper, FakeTargetConnection, FakeServer]:
    server = FakeServer(version, answers)
    target = Target("t", "host=nowhere", {}, 1.0, kind)  # type: ignore[arg-type]
    scraping = TargetScraper(target, queries, Settings())
    fake = FakeTargetConnection(FakeConn(server))
    scraping.connection = fake  # type: ignore[assignment]
    return scraping, fake, server


def scrape(scraping: TargetScraper) -> TargetResult:
    return asyncio.run(scraping.scrape(time.monotonic() + 10))


def values(result: TargetResult) -> dict[str, float]:
    return {
        m.spec.name: value
        for outcome in result.queries
        for m in outcome.metrics
        for _, value in m.samples
    }


def errors(result: TargetResult) -> dict[str, str | None]:
    return {o.name: o.error for o in result.queries}


ONE = (("v", "x"), [(1, 2)])


def test_a_target_runs_only_its_kinds_queries() -> None:
    both = [query("a"), query("b", kind="pgbouncer")]
    postgres, _, server = scraper(both, {"SELECT a": ONE})
    assert [q.name for q in postgres.queries] == ["a"]
    scrape(postgres)
    bouncer, _, server = scraper(both, {"SELECT b": ONE}, kind="pgbouncer")
    assert [q.name for q in bouncer.queries] == ["b"]
    scrape(bouncer)
    assert server.ran == ["SELECT b"]


def test_version_gates_skip_a_query_without_an_error() -> None:
    queries = [query("new", min_version=14), query("old", max_version=13), query("any")]
    answers = {f"SELECT {n}": ONE for n in ("new", "old", "any")}
    on_13, _, server = scraper(queries, answers, version=130011)
    result = scrape(on_13)
    assert server.ran == ["SELECT old", "SELECT any"]
    assert errors(result) == {"old": None, "any": None}
    on_14, _, server = scraper(queries, answers, version=140000)
    scrape(on_14)
    assert server.ran == ["SELECT new", "SELECT any"]
    assert sum(on_14.query_errors.values()) == 0


def test_a_cached_query_runs_once_per_cache_lifetime() -> None:
    scraping, _, server = scraper(
        [query("slow", cache="1h"), query("fast")],
        {
            "SELECT slow": (("v",), [(7,)]),
            "SELECT fast": (("v",), [(1,)]),
        },
    )
    first = scrape(scraping)
    server.answers["SELECT slow"] = (("v",), [(8,)])
    second = scrape(scraping)
    assert server.ran == ["SELECT slow", "SELECT fast", "SELECT fast"]
    assert values(second)["slow_value"] == values(first)["slow_value"] == 7
    assert [o.cached for o in second.queries] == [True, False]


class Count(Decimal):
    """A value a weak reference can follow (a row's own object, as a loader makes it)."""


def test_unchanged_rows_reuse_their_samples_and_any_change_rebuilds_them() -> None:
    scraping, _, server = scraper([query("q", extra=True)], {"SELECT q": (("v", "x"), [(1, 2)])})
    first = scrape(scraping)
    again = scrape(scraping)
    assert again.queries[0].metrics is first.queries[0].metrics, "the same rows: reused"
    server.answers["SELECT q"] = (("v", "x"), [(1, 3)])
    changed = scrape(scraping)
    assert values(changed) == {"q_value": 1, "q_extra": 3}
    server.answers["SELECT q"] = (("v", "x"), [(1, 2)])
    assert values(scrape(scraping)) == {"q_value": 1, "q_extra": 2}, "back: rebuilt again"


def test_no_row_is_kept_between_scrapes() -> None:
    """The rows are fingerprinted, not kept: at 1,000 targets they held 50 MB."""
    count = Count(7)
    gone = weakref.ref(count)
    scraping, _, server = scraper([query("q")], {"SELECT q": (("v",), [(count,)])})
    assert values(scrape(scraping)) == {"q_value": 7}
    server.answers["SELECT q"] = ONE
    del count
    gc.collect()
    assert gone() is None, "a row of the last scrape is still held"
    assert values(scrape(scraping)) == {"q_value": 1}


def test_a_failed_query_is_not_cached() -> None:
    scraping, _, server = scraper(
        [query("q", cache="1h")], {"SELECT q": psycopg.errors.UndefinedTable("no such table")}
    )
    assert errors(scrape(scraping)) == {"q": "error"}
    server.answers["SELECT q"] = ONE
    assert errors(scrape(scraping)) == {"q": None}
    assert server.ran == ["SELECT q", "SELECT q"]


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (psycopg.errors.UndefinedTable("no such table"), "error"),
        (psycopg.errors.QueryCanceled("statement timeout"), "timeout"),
        (psycopg.errors.LockNotAvailable("lock timeout"), "timeout"),
    ],
)
def test_a_failing_query_fails_alone_and_is_counted(exc: Exception, reason: str) -> None:
    scraping, fake, _ = scraper(
        [query("bad"), query("good")], {"SELECT bad": exc, "SELECT good": ONE}
    )
    result = scrape(scraping)
    assert result.up
    assert errors(result) == {"bad": reason, "good": None}
    assert values(result) == {"good_value": 1}
    assert scraping.query_errors[("bad", reason)] == 1
    assert sum(scraping.query_errors.values()) == 1
    # On PostgreSQL each ran in the scrape's transaction (begun again after the failure), the
    # last one carrying its end.
    assert fake.calls == [
        "transaction",
        "begin",
        "after_query",
        "begin",
        "closing",
        "after_query",
        "finish",
    ]


def test_postgres_bounds_queries_by_statement_timeout_and_the_scrape_by_one_watchdog() -> None:
    scraping, fake, _ = scraper(
        [query("a", timeout="2s"), query("b")],
        {
            "SELECT a": ONE,
            "SELECT b": ONE,
        },
    )
    deadline = time.monotonic() + 10
    asyncio.run(scraping.scrape(deadline))
    assert fake.timeouts == [2.0, Settings().query_timeout]
    (guard,) = fake.watchdogs
    assert 10 < guard <= 10 + SILENT_SERVER_GRACE


def test_pgbouncer_bounds_each_query_by_a_watchdog_without_a_transaction() -> None:
    queries = [query("a", kind="pgbouncer", timeout="2s"), query("b", kind="pgbouncer")]
    scraping, fake, _ = scraper(queries, {"SELECT a": ONE, "SELECT b": ONE}, kind="pgbouncer")
    scrape(scraping)
    assert fake.watchdogs == [2.0, Settings().query_timeout]
    assert fake.calls == []  # no transaction


def test_missing_columns_leave_out_a_pgbouncer_metric_but_fail_a_postgres_query() -> None:
    lacks_x = {"SELECT q": (("v",), [(3,)])}
    bouncer, _, _ = scraper([query("q", kind="pgbouncer", extra=True)], lacks_x, kind="pgbouncer")
    result = scrape(bouncer)
    assert errors(result) == {"q": None}
    assert values(result) == {"q_value": 3}  # q_extra left out, q_value still reported

    postgres, _, _ = scraper([query("q", extra=True)], lacks_x)
    result = scrape(postgres)
    assert errors(result) == {"q": "invalid_result"}
    assert postgres.query_errors[("q", "invalid_result")] == 1


def test_no_time_left_fails_the_query_as_deadline_without_running_it() -> None:
    scraping, _, server = scraper([query("q")], {"SELECT q": ONE})
    result = asyncio.run(scraping.scrape(time.monotonic() + 0.1))  # within the deadline margin
    assert errors(result) == {"q": "deadline"}
    assert server.ran == []


async def test_a_target_waiting_for_its_connection_holds_no_place() -> None:
    """With one place for every target's queries, a target still connecting must not take it."""
    places = asyncio.Semaphore(1)
    connecting, waiting, _ = scraper([query("q")], {"SELECT q": (("v",), [(1,)])})
    waiting.ready.clear()
    ready, _, _ = scraper([query("q")], {"SELECT q": (("v",), [(2,)])})
    stuck = asyncio.create_task(connecting.scrape(time.monotonic() + 10, places))
    await asyncio.sleep(0.01)
    result = await asyncio.wait_for(ready.scrape(time.monotonic() + 10, places), 2)
    assert values(result) == {"q_value": 2}
    waiting.ready.set()  # connected: its run goes on
    assert values(await asyncio.wait_for(stuck, 2)) == {"q_value": 1}
