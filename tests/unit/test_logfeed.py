"""exporter/scrape/logfeed.py without a loop: which targets get a feed, that a reload keeps an
unchanged target's stream, and that two targets' families come out once each."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config.model import Target, parse_config
from exporter.scrape.logfeed import LogFeeds
from exporter.scrape.remotelog import failure_reason


def targets(tmp_path: Path, *specs: dict[str, Any]) -> tuple[Target, ...]:
    (tmp_path / "postgresql.csv").write_bytes(b"")
    return parse_config({"targets": list(specs)}, "conf.yaml").targets


def spec(tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dsn": "host=db1",
        "log": {"directory": str(tmp_path), "format": "csvlog"},
        **extra,
    }


def test_two_targets_make_one_family_per_name(tmp_path: Path) -> None:
    feeds = LogFeeds(targets(tmp_path, spec(tmp_path, "a"), spec(tmp_path, "b")))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(feeds)
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    up = next(f for f in families if f.name == "pg_connections_exporter_log_up")
    assert sorted(s.labels["target"] for s in up.samples) == ["a", "b"]
    feeds.close()


def test_a_reload_keeps_unchanged_streams_and_drops_the_others(tmp_path: Path) -> None:
    feeds = LogFeeds(targets(tmp_path, spec(tmp_path, "a"), spec(tmp_path, "b")))
    before = {f.name: f.stream for f in feeds._feeds.values()}
    relabelled = spec(tmp_path, "b", labels={"env": "prod"})
    feeds.update(targets(tmp_path, spec(tmp_path, "a", connect_timeout=2), relabelled))
    after = {f.name: f.stream for f in feeds._feeds.values()}
    assert after["a"] is before["a"]  # only the connection changed
    assert after["b"] is not before["b"]  # its series' labels changed: a new stream
    feeds.update(targets(tmp_path, {"name": "a", "dsn": "host=db1"}))
    assert feeds._feeds == {}
    feeds.close()


def test_a_stderr_prefix_the_reader_cannot_parse_is_logged_log_up_0_and_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {"directory": str(tmp_path), "format": "stderr", "log_line_prefix": "%u%d "}
    good = {**bad, "log_line_prefix": "%m [%p] %u@%d "}
    feeds = LogFeeds(
        targets(
            tmp_path,
            {"name": "bad", "dsn": "host=db1", "log": bad},
            {"name": "good", "dsn": "host=db1", "log": good},
        )
    )
    by_name = {f.name: f for f in feeds._feeds.values()}
    assert by_name["bad"].prefix_known is False and by_name["bad"].asks_prefix is False
    assert by_name["good"].prefix_known is True
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert getattr(record, "target", None) == "bad" and "%u%d" in getattr(record, "error", "")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(feeds)
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    up = {s.labels["target"]: s.value for s in families["pg_connections_exporter_log_up"].samples}
    assert up["bad"] == 0
    errors = [
        (s.labels["target"], s.labels["reason"], s.value)
        for s in families["pg_connections_exporter_log_errors"].samples
    ]
    assert errors == [("bad", "prefix", 1.0)]
    feeds.close()


def test_a_stderr_log_without_a_prefix_asks_the_server(tmp_path: Path) -> None:
    log = {"directory": str(tmp_path), "format": "stderr"}
    feeds = LogFeeds(targets(tmp_path, {"name": "a", "dsn": "host=db1", "log": log}))
    [feed] = feeds._feeds.values()
    assert feed.asks_prefix and not feed.prefix_known
    assert feed.use_prefix("%m [%p] %q%u@%d %h ") and feed.prefix_known
    feeds.close()


class _BrokenConnection:
    """A held connection whose every use fails with something no statement raises."""

    statement_timeout = 1.0

    def idle_connection(self) -> Any:
        raise RuntimeError("a bug")


async def test_a_failing_remote_poll_is_counted_logged_once_and_polled_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote = {"name": "a", "dsn": "host=db1", "log": {"source": "remote", "format": "csvlog"}}
    broken: Any = _BrokenConnection()
    feeds = LogFeeds(targets(tmp_path, remote), lambda name: broken, remote_poll=0.01)
    feeds.start(asyncio.get_running_loop())
    [feed] = feeds._feeds.values()
    async with asyncio.timeout(5):
        while feed.counts.errors.get("error", 0) < 3:  # the task keeps polling
            await asyncio.sleep(0.01)
    assert feed.task is not None and not feed.task.done()
    assert feed.counts.up is False
    assert len([r for r in caplog.records if r.getMessage() == "reading the log failed"]) == 1
    feed.task.cancel()
    feeds.close()


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (psycopg.errors.UndefinedFunction, "function_missing"),
        (psycopg.errors.InsufficientPrivilege, "permission"),
        (psycopg.errors.UndefinedFile, "missing"),
        (psycopg.errors.QueryCanceled, "timeout"),
        (psycopg.OperationalError, "error"),
    ],
)
def test_each_failed_statement_has_its_reason(error: type[Exception], reason: str) -> None:
    assert failure_reason(error("x")) == reason
