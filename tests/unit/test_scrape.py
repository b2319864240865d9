"""Scraper: every target under one deadline, a slow or connecting target delaying no other,
and concurrent scrapes sharing one run per target (fake target scrapers, real thread pool)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from exporter.scrape.scraper import Scraper
from tests.unit.fakes import config, install, wait_for


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of each test, so that no blocked fake run outlives it."""
    event = threading.Event()
    yield event
    event.set()


def scraper_of(*names: str, **settings: object) -> Scraper:
    return Scraper(config(*names, **settings))


def test_every_target_answers_in_config_order() -> None:
    scraper = scraper_of("a", "b", "c")
    fakes = install(scraper)
    results = scraper.scrape(5)
    assert [r.target.name for r in results] == ["a", "b", "c"]
    assert all(r.up for r in results)
    assert [f.runs for f in fakes.values()] == [1, 1, 1]
    scraper.close()
    assert all(f.closed for f in fakes.values())


def test_a_target_past_the_deadline_is_down_and_delays_no_other(release) -> None:
    scraper = scraper_of("slow", "b", "c")
    install(scraper, slow={"release": release})
    started = time.monotonic()
    results = scraper.scrape(0.3)
    elapsed = time.monotonic() - started
    by_name = {r.target.name: r for r in results}
    assert not by_name["slow"].up
    assert by_name["slow"].error == "scrape deadline exceeded"
    assert by_name["b"].up and by_name["c"].up
    # The scrape ends at its deadline, not when the slow run would (30 s).
    assert 0.25 <= elapsed < 5, elapsed


def test_a_connecting_target_holds_no_thread(release) -> None:
    """With one thread for all targets, a target still connecting must not take it."""
    scraper = scraper_of("connecting", "b", scrape_concurrency=1)
    fakes = install(scraper, connecting={"ready": False})
    results = scraper.scrape(0.5)
    assert [r.up for r in results] == [False, True]
    assert fakes["connecting"].runs == 0
    # Once connected, the run a scrape is waiting for starts.
    waiting = threading.Thread(target=lambda: results.extend(scraper.scrape(5)))
    waiting.start()
    wait_for(lambda: bool(fakes["connecting"].connection.waiters))
    fakes["connecting"].connection.become_ready()
    waiting.join(5)
    assert results[2].up and fakes["connecting"].runs == 1


def test_concurrent_scrapes_join_one_run_per_target(release) -> None:
    scraper = scraper_of("a", "b")
    fakes = install(scraper, a={"release": release})
    answers: list[list[bool]] = []

    def scrape() -> None:
        answers.append([r.up for r in scraper.scrape(10)])

    threads = [threading.Thread(target=scrape) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: fakes["a"].running.is_set())
    time.sleep(0.1)  # the other scrapes arrive while a's run is in flight
    # /probe?target=a joins the same run.
    probe = []
    prober = threading.Thread(target=lambda: probe.append(scraper.start_target("a", 10)))
    prober.start()
    release.set()
    for thread in [*threads, prober]:
        thread.join(10)
    assert answers == [[True, True]] * 4
    assert fakes["a"].runs == 1
    assert probe[0][1].result(10).up and probe[0][0] is fakes["a"]
    # A run that has ended is not joined: the next scrape runs the target again.
    scraper.scrape(5)
    assert fakes["a"].runs == 2


def test_start_target_of_an_unknown_name_is_none() -> None:
    scraper = scraper_of("a")
    install(scraper)
    assert scraper.start_target("nope", 1) is None


def test_a_failing_run_costs_only_its_target(caplog: pytest.LogCaptureFixture) -> None:
    scraper = scraper_of("broken", "b")
    install(scraper, broken={"error": RuntimeError("bug")})
    results = scraper.scrape(5)
    assert [r.up for r in results] == [False, True]
    assert results[0].error == "internal error (see the log)"
    assert "scrape of target failed" in caplog.text


def test_threads_are_bounded_by_scrape_concurrency(release) -> None:
    scraper = scraper_of(*[f"t{i}" for i in range(6)], scrape_concurrency=2)
    fakes = install(scraper, **{f"t{i}": {"release": release} for i in range(6)})
    scraper.scrape(0.3)
    running = sum(f.running.is_set() for f in fakes.values())
    assert running == 2, running
