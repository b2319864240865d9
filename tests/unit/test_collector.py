"""The collector: metric families from a scrape's results, pg_up and the self-metrics, and the
scrape timeout it passes down (results built by hand and through the engine, no server)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from exporter.config.model import parse_config
from exporter.db.failures import REASONS
from exporter.metrics.collector import (
    ExporterCollector,
    ReloadStatus,
    scrape_timeout,
    self_families,
    target_families,
)
from exporter.scrape.engine import build_samples
from exporter.scrape.target import QueryOutcome, TargetResult
from tests.unit.fakes import FakeTarget

QUERY = {
    "name": "apps",
    "help": "sessions by application",
    "sql": "SELECT 1",
    "metrics": [
        {
            "name": "pgce_test_sessions",
            "type": "gauge",
            "help": "Sessions by application.",
            "labels": ["application"],
            "value": "n",
        }
    ],
}


def setup(*targets: dict[str, Any]) -> tuple[Any, Any]:
    config = parse_config({"targets": list(targets), "queries": [QUERY]}, "unit-test")
    (query,) = [q for q in config.queries if q.name == "apps"]
    return config, query


def outcome(query: Any, rows: list[dict[str, Any]], error: str | None = None) -> QueryOutcome:
    return QueryOutcome(query.name, 0.01, tuple(build_samples(query, rows)), error)


def samples(families: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_one_family_per_metric_with_target_and_constant_labels() -> None:
    config, query = setup(
        {"name": "db1", "dsn": "host=db1", "labels": {"env": "prod"}},
        {"name": "db2", "dsn": "host=db2", "labels": {"env": "test"}},
    )
    db1, db2 = config.targets
    results = [
        TargetResult(db1, True, 0.1, queries=(outcome(query, [{"application": "web", "n": 3}]),)),
        TargetResult(
            db2,
            True,
            0.1,
            queries=(
                outcome(query, [{"application": "web", "n": 1}, {"application": "etl", "n": 2}]),
            ),
        ),
    ]
    families = [f for f in target_families(results) if f.name == "pgce_test_sessions"]
    assert len(families) == 1, "both targets' series in one family"
    got = samples(families)
    assert got == {
        ("pgce_test_sessions", (("application", "web"), ("env", "prod"), ("target", "db1"))): 3,
        ("pgce_test_sessions", (("application", "web"), ("env", "test"), ("target", "db2"))): 1,
        ("pgce_test_sessions", (("application", "etl"), ("env", "test"), ("target", "db2"))): 2,
    }
    assert families[0].documentation == "Sessions by application."


def test_pg_up_and_query_success_from_the_results() -> None:
    config, query = setup({"name": "up", "dsn": "host=a"}, {"name": "down", "dsn": "host=b"})
    up, down = config.targets
    results = [
        TargetResult(up, True, 0.2, queries=(outcome(query, [], error="timeout"),)),
        TargetResult(down, False, 0.0, error="connection refused"),
    ]
    fakes = [FakeTarget(up), FakeTarget(down)]
    fakes[0].query_errors[("apps", "timeout")] = 4
    fakes[1].connection.connect_failures["too_many_clients"] = 2
    scraper = type("S", (), {"targets": fakes})()
    got = samples(self_families(scraper.targets, results, ReloadStatus(False, 1700000000.0)))
    assert got[("pg_up", (("target", "up"),))] == 1
    assert got[("pg_up", (("target", "down"),))] == 0
    key = (("query", "apps"), ("target", "up"))
    assert got[("pg_connections_exporter_query_success", key)] == 0
    assert got[("pg_connections_exporter_scrape_duration_seconds", (("target", "up"),))] == 0.2
    errors = "pg_connections_exporter_query_errors_total"
    assert got[(errors, (("query", "apps"), ("reason", "timeout"), ("target", "up")))] == 4
    # Every connect-failure reason of every target from 0, so that increase() sees the first.
    failures = "pg_connections_exporter_connect_failures_total"
    for target in ("up", "down"):
        for reason in REASONS:
            want = 2 if (target, reason) == ("down", "too_many_clients") else 0
            assert got[(failures, (("reason", reason), ("target", target)))] == want
    assert got[("pg_connections_exporter_config_last_reload_successful", ())] == 0
    stamp = ("pg_connections_exporter_config_last_reload_success_timestamp_seconds", ())
    assert got[stamp] == 1700000000.0
    # No web config: its reload metric is left out rather than reported as a success.
    assert not any(k[0].startswith("pg_connections_exporter_web_config") for k in got)


class RecordingScraper:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.targets: list[Any] = []
        self.timeouts: list[float] = []

    def call(self, coro: Coroutine[Any, Any, list[TargetResult]]) -> list[TargetResult]:
        return asyncio.run(coro)

    async def scrape(self, timeout: float) -> list[TargetResult]:
        self.timeouts.append(timeout)
        return []


def test_collect_passes_the_smaller_of_prometheus_timeout_and_the_setting() -> None:
    config = parse_config(
        {"targets": [{"name": "a", "dsn": "host=a"}], "settings": {"scrape_timeout": "8s"}}, "t"
    )
    scraper = RecordingScraper(config)
    registry = CollectorRegistry()
    registry.register(ExporterCollector(scraper))  # type: ignore[arg-type]
    generate_latest(registry)  # no header: the setting
    token = scrape_timeout.set(2.5)
    try:
        generate_latest(registry)
    finally:
        scrape_timeout.reset(token)
    token = scrape_timeout.set(30.0)
    try:
        generate_latest(registry)
    finally:
        scrape_timeout.reset(token)
    # register() collects once itself to learn the names: every call asks the same way.
    assert scraper.timeouts[-3:] == [8.0, 2.5, 8.0]


def test_build_info_and_reload_status_in_the_exposition() -> None:
    config, _ = setup({"name": "a", "dsn": "host=a"})
    scraper = RecordingScraper(config)
    registry = CollectorRegistry()
    registry.register(ExporterCollector(scraper, lambda: ReloadStatus(True, 5.0, False)))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert "pg_connections_exporter_build_info{python_version=" in text
    assert "pg_connections_exporter_config_last_reload_successful 1.0" in text
    assert "pg_connections_exporter_web_config_last_reload_successful 0.0" in text
