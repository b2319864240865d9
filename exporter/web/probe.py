"""/probe: one target's metrics per request, Prometheus's multi-target pattern.

`/probe?target=NAME` serves a configured target (its held connection, the same metrics as on
/metrics). `/probe?target=HOST[:PORT][/DB]&auth_module=NAME` serves a server that came from
service discovery: it gets a held connection like a configured target (one per target, however
many probes arrive at once: concurrent probes share one run), closed once it has not been
probed for `probe.idle_timeout`, so the exporter's connections follow discovery. At most
`probe.max_targets` such targets are held; a probe of one more is refused. A probe only goes to
a host that `probe.allowed_hosts` allows, checked before anything connects (no SSRF); with no
allowed_hosts there are no such probes at all.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.config.authmodules import BadTarget, ProbeAddress, parse_probe_target
from exporter.config.model import Config, Target
from exporter.metrics.collector import (
    SELF,
    SelfMetric,
    scrape_timeout,
    self_families,
    target_families,
)
from exporter.metrics.poolerview import derived_families
from exporter.scrape.scraper import Scraper
from exporter.scrape.target import TargetResult, TargetScraper

log = logging.getLogger(__name__)

# Why a probe was refused, for pg_connections_exporter_probe_refusals_total.
REFUSAL_REASONS = ("bad_request", "unknown_target", "unknown_auth_module", "not_allowed", "limit")
EVICTION_REASONS = ("idle", "config")


class ProbeRefused(Exception):
    """A probe that is not served: the HTTP status and a message safe to show (no secret)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        assert reason in REFUSAL_REASONS, reason
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def effective_timeout(config: Config) -> float:
    """The scrape's time: Prometheus's (set by the HTTP handler) within the configured bound."""
    header = scrape_timeout.get()
    limit = config.settings.scrape_timeout
    return limit if header is None else min(header, limit)


@dataclass
class _Held:
    """A target from discovery and when it was last probed."""

    module: str
    address: ProbeAddress
    scraper: TargetScraper
    config: Config
    last_probe: float


class DynamicTargets:
    """The servers from discovery this exporter holds a connection to (their runs and
    connections on the scraper's event loop)."""

    def __init__(self, scraper: Scraper) -> None:
        self._scraper = scraper
        self._config: Callable[[], Config] = lambda: scraper.config
        self._held: dict[tuple[str, ProbeAddress], _Held] = {}
        # Taken on HTTP workers (admit) and on the loop (sweep): never held across an await.
        self._lock = threading.Lock()
        self.evictions: Counter[str] = Counter({r: 0 for r in EVICTION_REASONS})
        self.refusals: Counter[str] = Counter({r: 0 for r in REFUSAL_REASONS})

    async def close(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        await asyncio.gather(*(h.scraper.close() for h in held))

    def held(self) -> list[_Held]:
        with self._lock:
            return list(self._held.values())

    def refuse(self, status: int, reason: str, message: str) -> ProbeRefused:
        with self._lock:
            self.refusals[reason] += 1
        # Debug only: whoever reaches /probe could otherwise fill the log (they are counted).
        log.debug("probe refused", extra={"reason": reason, "error": message})
        return ProbeRefused(status, reason, message)

    def admit(self, module_name: str, target_text: str) -> _Held:
        """A server from discovery, checked before anything connects, with its held
        connection (opening if new); ProbeRefused if it may not be probed."""
        config = self._config()
        module = config.auth_modules.get(module_name)
        if module is None:
            known = ", ".join(sorted(config.auth_modules)) or "none configured"
            message = f"auth_module {module_name!r} is not in the config (auth_modules: {known})"
            raise self.refuse(404, "unknown_auth_module", message)
        try:
            address = parse_probe_target(target_text)
        except BadTarget as exc:
            raise self.refuse(400, "bad_request", f"target: {exc}") from None
        refusal = config.allowed_hosts.refusal(address.host)
        if refusal is not None:
            raise self.refuse(403, "not_allowed", f"target refused, nothing connected: {refusal}")
        held = self._take(module_name, address, config)
        if held is None:
            limit = config.probe.max_targets
            message = (
                f"this exporter already holds {limit} probe targets (probe.max_targets); "
                "one not probed for probe.idle_timeout is closed"
            )
            raise self.refuse(503, "limit", message)
        return held

    def _take(self, module_name: str, address: ProbeAddress, config: Config) -> _Held | None:
        """The held target (made if new), or None if a new one would exceed the cap."""
        key = (module_name, address)
        retired: TargetScraper | None = None
        with self._lock:
            held = self._held.get(key)
            if held is None:
                if len(self._held) >= config.probe.max_targets:
                    return None
                scraper = _scraper(config, module_name, address)
                held = _Held(module_name, address, scraper, config, time.monotonic())
                self._held[key] = held
                opening: TargetScraper | None = scraper
                log.info("probe target added", extra={"target": held.scraper.target.name})
            elif held.config is not config:
                # A reload: the new settings and queries, the connection kept if unchanged.
                retired = held.scraper
                held.scraper = _scraper(config, module_name, address, retired)
                held.config = config
                opening = (
                    held.scraper if held.scraper.connection is not retired.connection else None
                )
            else:
                opening = None
            held.last_probe = time.monotonic()
            successor = held.scraper
        if opening is not None:
            self._scraper.call(opening.open())  # starts connecting; quick
        if retired is not None:
            self._scraper.loop.call_soon_threadsafe(self._scraper.retire, retired, successor)
        return held

    async def sweep(self, now: float | None = None) -> None:
        """Close the targets not probed for idle_timeout, and those the config no longer
        allows (their auth module removed, or their host no longer allowed)."""
        now = time.monotonic() if now is None else now
        config = self._config()
        gone: list[tuple[_Held, str]] = []
        with self._lock:
            for key, held in list(self._held.items()):
                if self._scraper.busy(held.scraper):
                    continue
                if now - held.last_probe >= config.probe.idle_timeout:
                    reason = "idle"
                elif held.module not in config.auth_modules or (
                    config.allowed_hosts.refusal(held.address.host) is not None
                ):
                    reason = "config"
                else:
                    continue
                del self._held[key]
                self.evictions[reason] += 1
                gone.append((held, reason))
        for held, reason in gone:
            log.info(
                "probe target closed",
                extra={"target": held.scraper.target.name, "reason": reason},
            )
            await held.scraper.close()

    async def sweep_forever(self) -> None:
        """A task of the loop: sweep() every little while (see _sweep_interval)."""
        while True:
            await asyncio.sleep(_sweep_interval(self._config().probe.idle_timeout))
            try:
                await self.sweep()
            except Exception:
                log.exception("probe targets: sweep failed")


def _sweep_interval(idle_timeout: float) -> float:
    """Often enough that a target closes within a tenth of the idle time after it (at most 5 s
    late), rarely enough to cost nothing."""
    return min(max(idle_timeout / 10, 0.1), 5.0)


def _scraper(
    config: Config, module_name: str, address: ProbeAddress, previous: TargetScraper | None = None
) -> TargetScraper:
    module = config.auth_modules[module_name]
    target = Target(
        address.name(module.dbname), module.conninfo(address), {}, module.connect_timeout
    )
    return TargetScraper(target, config.queries, config.settings, previous)


class _ProbeCollector(Collector):
    """The metrics of one probe: the target's own, then its pg_up and self-metrics. `begin`
    starts the run (on the event loop) and gives its answer, due by the deadline, so that the
    HTTP worker need not wait for it (webapp.py answers when it comes); collect() waits."""

    def __init__(
        self,
        start: Callable[[], tuple[TargetScraper, Future[TargetResult]]],
        sampled: Callable[[TargetScraper], Iterable[Metric]],
    ) -> None:
        self._start = start
        self._sampled = sampled
        self._begun: tuple[TargetScraper, Future[TargetResult]] | None = None
        self._lock = threading.Lock()

    def begin(self) -> Future[TargetResult]:
        with self._lock:
            if self._begun is None:
                self._begun = self._start()
            return self._begun[1]

    def collect(self) -> Iterator[Metric]:
        answer = self.begin()
        assert self._begun is not None
        scraper, result = self._begun[0], answer.result()  # settled by the deadline
        yield from target_families([result])
        yield from derived_families([result])
        yield from self._sampled(scraper)  # between scrapes (scrape/samplers.py)
        yield from self_families([scraper], [result])


class Probes:
    """Answers /probe from the configured targets (Scraper) and the dynamic ones."""

    def __init__(
        self,
        scraper: Scraper,
        sampled: Callable[[TargetScraper], Iterable[Metric]] = lambda scraper: (),
    ) -> None:
        self.scraper = scraper
        self.sampled = sampled
        self.dynamic = DynamicTargets(scraper)

    async def close(self) -> None:
        await self.dynamic.close()

    def collector(self, params: Mapping[str, list[str]]) -> Collector:
        """What to render for these query parameters; ProbeRefused (a 4xx) if nothing."""
        targets = params.get("target", [])
        # `module` too: the Prometheus Operator's Probe (and blackbox_exporter) name it so.
        modules = params.get("auth_module", []) + params.get("module", [])
        if len(targets) != 1 or len(modules) > 1:
            message = (
                "give one target= (and at most one auth_module=): /probe?target=NAME or "
                "/probe?target=HOST[:PORT][/DB]&auth_module=NAME"
            )
            raise self.dynamic.refuse(400, "bad_request", message)
        unknown = sorted(set(params) - {"target", "auth_module", "module"})
        if unknown:
            message = (
                f"unknown parameter(s) {', '.join(unknown)}: /probe takes target and auth_module"
            )
            raise self.dynamic.refuse(400, "bad_request", message)
        target = targets[0]
        if modules:
            held = self.dynamic.admit(modules[0], target)
            return _ProbeCollector(lambda: self._dynamic(held), self.sampled)
        if not any(t.name == target for t in self.scraper.config.targets):
            raise self.dynamic.refuse(404, "unknown_target", _unknown_target(target))
        return _ProbeCollector(lambda: self._configured(target), self.sampled)

    def _configured(self, name: str) -> tuple[TargetScraper, Future[TargetResult]]:
        timeout = effective_timeout(self.scraper.config)
        target = next((t for t in self.scraper.targets if t.target.name == name), None)
        if target is None:  # removed by a reload since the request was checked
            gone = Target(name, "", {}, 0.0)
            answer: Future[TargetResult] = Future()
            answer.set_result(
                TargetResult(gone, False, 0.0, error="target removed from the configuration")
            )
            return TargetScraper(gone, (), self.scraper.config.settings), answer
        deadline = time.monotonic() + timeout
        return target, self._on_loop(self.scraper.answer(target, deadline))

    def _dynamic(self, held: _Held) -> tuple[TargetScraper, Future[TargetResult]]:
        scraper = held.scraper
        deadline = time.monotonic() + effective_timeout(self.scraper.config)

        async def answer() -> TargetResult:
            try:
                return await self.scraper.answer(scraper, deadline)
            finally:
                # Idle from a probe's end, however long it ran.
                held.last_probe = time.monotonic()

        return scraper, self._on_loop(answer())

    def _on_loop(self, coro: Coroutine[Any, Any, TargetResult]) -> Future[TargetResult]:
        """`coro` started on the scraper's loop; its result in a Future of this thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.scraper.loop)

    def status(self) -> list[dict[str, str]]:
        """Landing-page rows of the targets from discovery (no DSN, no password)."""
        now = time.monotonic()
        rows = []
        for h in sorted(self.dynamic.held(), key=lambda h: h.scraper.target.name):
            last = h.scraper.last_result
            state = "not scraped yet" if last is None else ("up" if last.up else "down")
            detail = f"probe, auth_module {h.module}, last probed {now - h.last_probe:.0f}s ago"
            if last is not None and not last.up and last.error:
                detail += f": {last.error}"
            rows.append({"name": h.scraper.target.name, "state": state, "detail": detail})
        return rows

    def summary(self) -> list[str]:
        """Landing-page lines: held, evicted and refused probe targets."""
        config = self.scraper.config
        d = self.dynamic
        allowed = ", ".join(config.probe.allowed_hosts) or "none: probes of servers are off"
        refused = ", ".join(f"{r} {n}" for r, n in sorted(d.refusals.items()))
        evicted = ", ".join(f"{r} {n}" for r, n in sorted(d.evictions.items()))
        return [
            f"Probe targets held: {len(d.held())} of at most {config.probe.max_targets}; "
            f"closed after {config.probe.idle_timeout:g}s without a probe.",
            f"Allowed hosts: {allowed}.",
            f"Probe targets closed: {evicted}. Probes refused: {refused}.",
        ]


def _unknown_target(name: str) -> str:
    if any(c in name for c in ":/@="):
        # Maybe an address or a DSN (postgres_exporter style): never echoed, it may hold a
        # password.
        return (
            "target is not a configured target's name; a server's address needs "
            "auth_module=NAME (credentials never come from the target)"
        )
    return f"no configured target named {name!r}; for a server's address add auth_module=NAME"


PROBE_TARGETS = SelfMetric(
    f"{SELF}_probe_targets",
    "gauge",
    (),
    "Servers from discovery (/probe with auth_module) this exporter holds a connection to.",
)
PROBE_TARGETS_LIMIT = SelfMetric(
    f"{SELF}_probe_targets_limit",
    "gauge",
    (),
    "probe.max_targets: how many such servers it may hold; a probe of one more is refused.",
)
PROBE_EVICTIONS = SelfMetric(
    f"{SELF}_probe_evictions_total",
    "counter",
    ("reason",),
    "Probe targets closed, by reason (idle: not probed for probe.idle_timeout; config: its "
    "auth module or allowed host was removed).",
)
PROBE_REFUSALS = SelfMetric(
    f"{SELF}_probe_refusals_total",
    "counter",
    ("reason",),
    f"Probes answered with a 4xx or 503, by reason ({', '.join(REFUSAL_REASONS)}).",
)
PROBE_METRICS = (PROBE_TARGETS, PROBE_TARGETS_LIMIT, PROBE_EVICTIONS, PROBE_REFUSALS)


class ProbeSelfCollector(Collector):
    """The probe self-metrics on /metrics."""

    def __init__(self, probes: Probes) -> None:
        self.probes = probes

    def collect(self) -> Iterator[Metric]:
        d = self.probes.dynamic
        family = {m.name: m.family() for m in PROBE_METRICS}
        family[PROBE_TARGETS.name].add_metric([], len(d.held()))
        family[PROBE_TARGETS_LIMIT.name].add_metric(
            [], self.probes.scraper.config.probe.max_targets
        )
        for reason, n in sorted(d.evictions.items()):
            family[PROBE_EVICTIONS.name].add_metric([reason], n)
        for reason, n in sorted(d.refusals.items()):
            family[PROBE_REFUSALS.name].add_metric([reason], n)
        yield from family.values()
