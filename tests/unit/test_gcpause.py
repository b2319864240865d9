"""The garbage collector's pause while answers are made (exporter/web/gcpause.py)."""

from __future__ import annotations

import gc
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from exporter.web.gcpause import CollectorPause


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_off_during_an_answer_and_on_after_it() -> None:
    pause = CollectorPause()
    with pause.during():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_on_again_after_an_answer_that_raised() -> None:
    pause = CollectorPause()
    with pytest.raises(RuntimeError), pause.during():
        raise RuntimeError("scrape failed")
    assert gc.isenabled()


def test_overlapping_answers_keep_it_off_until_the_last_ends() -> None:
    pause = CollectorPause()
    first_in, second_done, states = threading.Event(), threading.Event(), []

    def first() -> None:
        with pause.during():
            first_in.set()
            second_done.wait(10)
            states.append(("first still answering", gc.isenabled()))

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with pause.during():
        pass
    states.append(("second ended", gc.isenabled()))
    second_done.set()
    thread.join(10)
    assert states == [("second ended", False), ("first still answering", False)]
    assert gc.isenabled()


def test_answers_overlapping_past_the_longest_pause_turn_it_on() -> None:
    pause = CollectorPause(max_pause=0.05)
    with pause.during():
        assert not gc.isenabled()
        time.sleep(0.1)
        with pause.during():  # a new answer while the first has held it off too long
            assert gc.isenabled()
        assert gc.isenabled()
    assert gc.isenabled()
    with pause.during():  # a new pause starts once none is in progress
        assert not gc.isenabled()


def test_left_off_if_someone_else_turned_it_off() -> None:
    pause = CollectorPause()
    gc.disable()
    with pause.during():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_a_metrics_answer_is_made_with_the_collector_paused() -> None:
    """The wiring: the exporter's own HTTP server answers /metrics with the collector off
    (seen from inside the collection) and turns it on again after."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    from exporter.web.webapp import WebApp, make_server, serve_in_thread

    seen: list[bool] = []

    class Watching:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            seen.append(gc.isenabled())
            yield GaugeMetricFamily("watched", "Collected.", value=1)

    registry = CollectorRegistry()
    registry.register(Watching())  # type: ignore[arg-type]
    server = make_server(WebApp(registry, "/metrics", lambda: []), "127.0.0.1", 0)
    serve_in_thread(server)
    try:
        port = server.server_address[1]
        seen.clear()  # register() collected once to learn the names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert b"watched 1.0" in answer.read()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [False]
    assert gc.isenabled()
