"""Scraper: every target under one deadline, a slow target delaying no other, concurrent
scrapes sharing one run per target, runs bounded by scrape_concurrency (fake target scrapers
on a real event loop)."""

from __future__ import annotations

import asyncio
import time

import pytest

from exporter.scrape.scraper import Scraper
from tests.unit.fakes import config, install


def scraper_of(*names: str, **settings: object) -> Scraper:
    """Not opened: its targets are replaced by fakes first (install), then it is opened."""
    return Scraper(config(*names, **settings))


async def test_every_target_answers_in_config_order() -> None:
    scraper = scraper_of("a", "b", "c")
    fakes = install(scraper)
    await scraper.open()
    results = await scraper.scrape(5)
    assert [r.target.name for r in results] == ["a", "b", "c"]
    assert all(r.up for r in results)
    assert [f.runs for f in fakes.values()] == [1, 1, 1]
    await scraper.close()
    assert all(f.closed for f in fakes.values())


async def test_a_target_past_the_deadline_is_down_and_delays_no_other() -> None:
    scraper = scraper_of("slow", "b", "c")
    release = asyncio.Event()
    install(scraper, slow={"release": release})
    await scraper.open()
    started = time.monotonic()
    results = await scraper.scrape(0.3)
    elapsed = time.monotonic() - started
    by_name = {r.target.name: r for r in results}
    assert not by_name["slow"].up
    assert by_name["slow"].error == "scrape deadline exceeded"
    assert by_name["b"].up and by_name["c"].up
    # The scrape ends at its deadline, not when the slow run does.
    assert 0.25 <= elapsed < 5, elapsed
    release.set()


async def test_concurrent_scrapes_join_one_run_per_target() -> None:
    scraper = scraper_of("a", "b")
    release = asyncio.Event()
    fakes = install(scraper, a={"release": release})
    await scraper.open()
    scrapes = [asyncio.create_task(scraper.scrape(10)) for _ in range(4)]
    await asyncio.wait_for(fakes["a"].running.wait(), 5)
    # /probe?target=a, arriving while a's run is in flight, joins the same run.
    probe = asyncio.create_task(scraper.answer(fakes["a"], time.monotonic() + 10))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    release.set()
    answers = [[r.up for r in results] for results in await asyncio.gather(*scrapes)]
    assert answers == [[True, True]] * 4
    assert (await probe).up
    assert fakes["a"].runs == 1
    # A run that has ended is not joined: the next scrape runs the target again.
    await scraper.scrape(5)
    assert fakes["a"].runs == 2


async def test_a_failing_run_costs_only_its_target(caplog: pytest.LogCaptureFixture) -> None:
    scraper = scraper_of("broken", "b")
    install(scraper, broken={"error": RuntimeError("bug")})
    await scraper.open()
    results = await scraper.scrape(5)
    assert [r.up for r in results] == [False, True]
    assert results[0].error == "internal error (see the log)"
    assert "scrape of target failed" in caplog.text


async def test_runs_are_bounded_by_scrape_concurrency() -> None:
    scraper = scraper_of(*[f"t{i}" for i in range(6)], scrape_concurrency=2)
    release = asyncio.Event()
    fakes = install(scraper, **{f"t{i}": {"release": release} for i in range(6)})
    await scraper.open()
    await scraper.scrape(0.3)
    running = sum(f.running.is_set() for f in fakes.values())
    assert running == 2, running
    release.set()


async def test_a_reload_closes_a_removed_target_once_its_run_ends() -> None:
    scraper = scraper_of("a", "b")
    release = asyncio.Event()
    fakes = install(scraper, a={"release": release})
    await scraper.open()
    waiting = asyncio.create_task(scraper.scrape(10))
    await asyncio.wait_for(fakes["a"].running.wait(), 5)
    await scraper.reload(config("b"))
    await asyncio.sleep(0.05)
    assert not fakes["a"].closed  # a scrape still waits for its run
    release.set()
    assert [r.up for r in await waiting] == [True, True]
    for _ in range(100):
        if fakes["a"].closed:
            break
        await asyncio.sleep(0.01)
    assert fakes["a"].closed
    assert [t.target.name for t in scraper.targets] == ["b"]
    await scraper.close()
