"""exporter/scrape/samplers.py's own logic, without a server: which targets get a sampler, that a
reload keeps an unchanged target's totals, that `enabled: false` means no families, the
interval stretched over all targets, a tick's miss reasons, and no catch-up after a late tick.
What the statements do on real servers is in tests/test_sampler_wired.py."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config.model import Config, SamplerSettings, parse_config
from exporter.db.connection import Busy, NotConnected
from exporter.scrape import samplers as samplers_module
from exporter.scrape.samplers import Samplers
from exporter.scrape.target import TargetScraper

ROW = [{"used": 3, "slots": 10}]


def config(*targets: dict[str, Any], **sampler: Any) -> Config:
    return parse_config({"targets": list(targets), "sampler": sampler}, "conf.yaml")


def scrapers(cfg: Config) -> list[TargetScraper]:
    return [TargetScraper(t, cfg.queries, cfg.settings) for t in cfg.targets]


def family_values(samplers: Samplers, name: str) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(samplers)
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names  # one family per name over all targets
    return {s.labels["target"]: s.value for f in families for s in f.samples if s.name == name}


def test_a_reload_keeps_an_unchanged_targets_totals_and_drops_a_removed_one() -> None:
    first = config({"name": "a", "dsn": "host=db1"}, {"name": "b", "dsn": "host=db2"})
    current = scrapers(first)
    samplers = Samplers(first.sampler, lambda: current)
    samplers.update()
    (a,) = [e for e in samplers._entries.values() if e.scraper.target.name == "a"]
    a.sampler.record(100.0, [ROW])
    a.sampler.record(101.0, [ROW])
    # Reloaded: a's DSN changed (a new connection), b removed, c added.
    second = config({"name": "a", "dsn": "host=db9"}, {"name": "c", "dsn": "host=db3"})
    current = scrapers(second)
    samplers.update(second.sampler)
    names = sorted(e.scraper.target.name for e in samplers._entries.values())
    assert names == ["a", "c"]
    (kept,) = [e for e in samplers._entries.values() if e.scraper.target.name == "a"]
    assert kept.sampler is a.sampler  # the same totals, never backwards
    assert kept.scraper is current[0]  # sampling the new scraper's connection
    assert family_values(samplers, "pg_connections_exporter_samples_total") == {"a": 2, "c": 0}


def test_new_labels_make_a_new_sampler() -> None:
    first = config({"name": "a", "dsn": "host=db1"})
    current = scrapers(first)
    samplers = Samplers(first.sampler, lambda: current)
    samplers.update()
    (old,) = samplers._entries.values()
    second = config({"name": "a", "dsn": "host=db1", "labels": {"env": "prod"}})
    current = scrapers(second)
    samplers.update(second.sampler)
    (new,) = samplers._entries.values()
    assert new.sampler is not old.sampler and old.stopped


def test_disabled_means_no_sampler_and_no_families() -> None:
    cfg = config({"name": "a", "dsn": "host=db1"}, enabled=False)
    samplers = Samplers(cfg.sampler, lambda: scrapers(cfg))
    samplers.update()
    assert not samplers._entries
    registry = CollectorRegistry(auto_describe=False)
    registry.register(samplers)
    assert generate_latest(registry) == b""


def test_the_interval_stretches_over_all_targets_configured_and_probed() -> None:
    cfg = config(*({"name": f"t{i}", "dsn": "host=db1"} for i in range(300)))
    configured = scrapers(cfg)
    probed: list[TargetScraper] = []
    samplers = Samplers(cfg.sampler, lambda: configured, lambda: probed)
    samplers.update()
    assert {e.sampler.interval for e in samplers._entries.values()} == {6.0}  # 300 / 50
    probed = scrapers(config(*({"name": f"p{i}", "dsn": "host=db2"} for i in range(100))))
    samplers.update()
    assert {e.sampler.interval for e in samplers._entries.values()} == {8.0}  # 400 / 50
    # A probe target's families are in its /probe answer, not /metrics.
    assert "p0" not in family_values(samplers, "pg_connections_exporter_samples_total")
    assert samplers.families(probed[0])
    probed = []
    samplers.update()
    assert {e.sampler.interval for e in samplers._entries.values()} == {6.0}


class _Refusing:
    """A TargetConnection whose idle_connection refuses as the real one does."""

    def __init__(self, exc: type[Exception]) -> None:
        self.exc = exc

    @asynccontextmanager
    async def idle_connection(self) -> AsyncIterator[Any]:
        raise self.exc
        yield  # pragma: no cover


@pytest.mark.parametrize(("exc", "reason"), [(Busy, "busy"), (NotConnected, "down")])
def test_a_tick_without_the_connection_is_a_miss_by_reason(
    exc: type[Exception], reason: str
) -> None:
    from exporter.sampling.sampler import TargetSampler

    sampler = TargetSampler("postgres", {"target": "a"}, SamplerSettings())
    asyncio.run(Samplers.tick(_Refusing(exc), sampler, 1.0))  # type: ignore[arg-type]
    assert sampler.slots.read(1.0).missed == {reason: 1}


def test_a_late_tick_is_not_caught_up(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config({"name": "a", "dsn": "host=db1"}, interval="0.1s")
    samplers = Samplers(cfg.sampler, lambda: scrapers(cfg))
    ticks: list[float] = []

    async def tick(connection: Any, sampler: Any, now: float) -> None:
        ticks.append(now)
        if len(ticks) == 2:
            await asyncio.sleep(0.55)  # five ticks lost

    monkeypatch.setattr(samplers_module.Samplers, "tick", staticmethod(tick))

    async def main() -> None:
        samplers.start(asyncio.get_running_loop())
        # Three ticks after the late one, however slowly a loaded machine gets there.
        deadline = time.monotonic() + 20
        while len(ticks) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await samplers.close()

    asyncio.run(main())
    assert len(ticks) >= 5, ticks
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    # The late tick is followed by the next on the schedule, never by a burst of the lost ones
    # (caught up, the five lost ticks would come at once, gaps of ~0).
    assert all(g >= 0.05 for g in gaps), gaps


class _Console:
    """A PgBouncer console's TargetConnection: a scrape starts waiting for the connection once
    the first statement has run."""

    def __init__(self) -> None:
        from exporter.kinds import kind_of

        self.policy = kind_of("pgbouncer").policy
        self.statement_timeout = 5.0
        self.ran: list[str] = []
        self.wanted = False
        self.target = parse_config({"targets": [{"name": "b", "dsn": "host=x"}]}, "c").targets[0]

    @asynccontextmanager
    async def idle_connection(self) -> AsyncIterator[Any]:
        yield object()

    def watchdog(self, conn: Any, seconds: float) -> Any:
        from contextlib import nullcontext

        return nullcontext(None)

    async def set_statement_timeout(self, conn: Any, seconds: float) -> None:
        pass

    async def query(self, conn: Any, sql: str, params: Any, limit: float) -> Any:
        self.ran.append(sql)
        self.wanted = True  # a scrape arrived meanwhile
        return [], ()


def test_a_tick_gives_the_connection_back_between_statements_when_a_scrape_waits() -> None:
    from exporter.sampling.sampler import TargetSampler

    console = _Console()
    sampler = TargetSampler("pgbouncer", {"target": "b"}, SamplerSettings())
    assert len(sampler.statements(1.0)) >= 2
    asyncio.run(Samplers.tick(console, sampler, 1.0))  # type: ignore[arg-type]
    assert console.ran == ["SHOW LISTS"]  # the scrape waited one statement, not three
    assert sampler.slots.read(1.0).missed == {"busy": 1}
