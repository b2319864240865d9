"""Scrape threads take turns at running Python (exporter/db/turns.py)."""

from __future__ import annotations

import threading

from exporter.db.turns import Turns


def _taker(turns: Turns) -> tuple[threading.Thread, threading.Event]:
    """A started thread that takes the turn, then sets the event (and gives it back)."""
    got = threading.Event()

    def take() -> None:
        with turns.taken():
            got.set()

    thread = threading.Thread(target=take)
    thread.start()
    return thread, got


def test_one_thread_holds_the_turn_at_a_time() -> None:
    turns = Turns()
    events: list[str] = []
    first_in, second_tried = threading.Event(), threading.Event()

    def second() -> None:
        second_tried.set()
        with turns.taken():
            events.append("second works")

    with turns.taken():
        first_in.set()
        thread = threading.Thread(target=second)
        thread.start()
        second_tried.wait(10)
        thread.join(0.2)  # it cannot get in while the turn is held
        events.append("first works")
    thread.join(10)
    assert events == ["first works", "second works"]


def test_a_waiting_holder_lets_another_thread_work_and_gets_the_turn_back() -> None:
    turns = Turns()
    events: list[str] = []
    other_done = threading.Event()

    def other() -> None:
        with turns.taken():
            events.append("other works")
        other_done.set()

    with turns.taken():
        thread = threading.Thread(target=other)
        thread.start()
        with turns.given_up():  # as while waiting for a server
            assert other_done.wait(10), "the turn was not given up"
        events.append("first works again")
        # Held again: another thread cannot get in now.
        late_thread, late_in = _taker(turns)
        assert not late_in.wait(0.2)
        events.append("first done")
    assert late_in.wait(10)
    late_thread.join(10)
    thread.join(10)
    assert events == ["other works", "first works again", "first done"]


def test_taken_again_by_its_holder_and_given_up_by_a_non_holder_are_no_ops() -> None:
    turns = Turns()
    with turns.given_up():  # not held: nothing to give up
        pass

    def nested() -> None:
        with turns.taken(), turns.taken():
            pass

    nesting = threading.Thread(target=nested, daemon=True)
    nesting.start()
    nesting.join(10)
    assert not nesting.is_alive(), "a holder taking the turn again waits for itself"
    thread, got = _taker(turns)
    assert got.wait(10), "the nested take left the turn held"
    thread.join(10)
