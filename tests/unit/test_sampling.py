"""The sampler's pure parts: its rule against pg_connections_used's, its thresholds against
alerts/thresholds.yaml, and samples to totals that any number of readers read alike."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from exporter.config.errors import ConfigError
from exporter.config.model import SamplerSettings, parse_config
from exporter.sampling.accumulator import Accumulator, PeakWindow
from exporter.sampling.sampler import SAMPLER_METRICS, TargetSampler, effective_interval
from exporter.sampling.statements import (
    BACKEND_CLASS,
    ORDINARY_SLOTS,
    PGBOUNCER_LIMIT,
    POSTGRES_SAMPLE,
    SLOT_CLASSES,
)

REPO = Path(__file__).resolve().parents[2]


def _flat(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).replace("( ", "(").replace(" )", ")")


def _query_sql(name: str) -> str:
    data = yaml.safe_load((REPO / "exporter/queries/connections.yaml").read_text())
    return _flat(next(q["sql"] for q in data["queries"] if q["name"] == name))


def test_the_sample_counts_by_the_rule_of_pg_connections_used() -> None:
    """connection_slots computes `used` from backends classed by BACKEND_CLASS, summing the
    SLOT_CLASSES, and the ratio over ORDINARY_SLOTS' parts: change one, the other must follow."""
    slots = _query_sql("connection_slots")
    assert _flat(BACKEND_CLASS) in slots
    used = " OR ".join(f"backend_type = '{c}'" for c in SLOT_CLASSES)
    assert f"sum(backends) FILTER (WHERE {used})" in slots
    for part in re.findall(r"current_setting\([^)]*\)(?:::int)?", ORDINARY_SLOTS):
        assert part in slots, part
    assert _flat(BACKEND_CLASS) in POSTGRES_SAMPLE


def test_the_default_levels_are_the_alerting_thresholds() -> None:
    alerts = yaml.safe_load((REPO / "alerts/thresholds.yaml").read_text())["alerts"]
    defaults = SamplerSettings()
    assert defaults.levels == sorted(
        [
            alerts["PostgresConnectionsHigh"]["utilization"],
            alerts["PostgresConnectionsCritical"]["utilization"],
        ]
    )
    near = alerts["PgBouncerClientConnectionsNearLimit"]
    assert defaults.pgbouncer_levels == [near["warning_ratio"], near["critical_ratio"]]


def test_the_sampler_section_is_read_with_durations() -> None:
    data = {
        "targets": [{"name": "a", "dsn": "host=db1"}],
        "sampler": {"enabled": False, "interval": "500ms", "window": "10m", "levels": [0.9, 0.7]},
    }
    sampler = parse_config(data, "conf.yaml").sampler
    assert (sampler.enabled, sampler.interval, sampler.window) == (False, 0.5, 600.0)
    assert sampler.levels == [0.7, 0.9]


def test_large_fleets_stretch_every_interval_to_the_cap() -> None:
    defaults = SamplerSettings()
    assert effective_interval(defaults, 50) == 1.0
    assert effective_interval(defaults, 100) == 2.0  # 50 samples a second in all
    assert effective_interval(defaults, 1000) == 20.0
    assert effective_interval(defaults, 1000, probe=True) == 20.0
    slow_probes = SamplerSettings(probe_interval=10.0)
    assert effective_interval(slow_probes, 10, probe=True) == 10.0


def test_a_bad_level_names_the_file_and_key() -> None:
    data = {"targets": [{"name": "a", "dsn": "host=db1"}], "sampler": {"levels": [0.8, 1.5]}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, "conf.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("conf.yaml: sampler.levels") and "at most 1" in problem


def test_a_storm_between_two_scrapes_is_counted_and_its_peak_kept() -> None:
    """A server of 20 ordinary slots at 2 in use, full for 3 s, back to 2."""
    acc = Accumulator([0.8, 0.9, 1.0], window=300, max_gap=2)
    values = [2, 2, 20, 20, 20, 2, 2]
    for t, used in enumerate(values, start=100):
        acc.record(float(t), used, 20)
    reading = acc.read(107.0)
    assert reading.seconds_at == {0.8: 3.0, 0.9: 3.0, 1.0: 3.0}
    assert reading.peak_value == 20 and reading.peak_ratio == 1.0
    assert reading.taken == 7
    # Five minutes later the storm is out of the window; the totals stay.
    later = acc.read(107.0 + 302)
    assert later.peak_value is None and later.seconds_at[1.0] == 3.0


def test_a_silence_is_not_credited_to_the_sample_after_it() -> None:
    acc = Accumulator([1.0], window=300, max_gap=2)
    acc.record(0.0, 10, 10)
    for t in range(1, 30):
        acc.missed(float(t), "down")
    acc.record(30.0, 10, 10)
    reading = acc.read(30.0)
    assert reading.seconds_at[1.0] == 2.0
    assert reading.missed == {"down": 29} and reading.taken == 2


def test_the_peak_window_keeps_one_maximum_per_second_and_is_bounded() -> None:
    window = PeakWindow(5)
    for i in range(100):
        window.add(1000 + i / 10, i % 7)
    assert window.peak(1009.95) == 6
    assert len(window._seconds) <= 6
    window.add(1020.0, 1)
    assert window.peak(1020.0) == 1


def _exposition(sampler: TargetSampler) -> str:
    registry = CollectorRegistry()
    registry.register(sampler)  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def _value(text: str, series: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(line.split()[-1])


def test_two_readers_at_different_intervals_read_the_same_totals() -> None:
    """An HA pair: one reads every 3 ticks, the other every 7; neither resets the other, and
    at the end both read the same totals, which only grew for each."""
    clock = [0.0]
    sampler = TargetSampler("postgres", {"target": "db"}, SamplerSettings(), clock=lambda: clock[0])
    seen: dict[str, list[float]] = {"a": [], "b": []}
    series = 'pg_connections_saturation_seconds_total{level="1",target="db"}'

    def full(tick: int) -> bool:
        return tick % 5 == 0 or 20 <= tick < 24

    for tick in range(1, 43):
        clock[0] = float(tick)
        sampler.record(clock[0], [[{"used": 20 if full(tick) else 5, "slots": 20}]])
        for reader, every in (("a", 3), ("b", 7)):
            if tick % every == 0:
                seen[reader].append(_value(_exposition(sampler), series))
    for values in seen.values():
        assert values == sorted(values)
    # Both read at tick 42: the same total, one second for each full sample (a second apart).
    expected = sum(1.0 for tick in range(2, 43) if full(tick))
    assert seen["a"][-1] == seen["b"][-1] == expected == 11.0
    # Reader a at tick 21 and reader b at tick 21 as well.
    assert seen["a"][6] == seen["b"][2] == sum(1.0 for tick in range(2, 22) if full(tick))


def test_pgbouncer_waiting_and_client_levels() -> None:
    settings = SamplerSettings()
    sampler = TargetSampler("pgbouncer", {"target": "pool"}, settings, clock=lambda: 3.0)
    assert sampler.statements(0.0)[-1] == PGBOUNCER_LIMIT
    lists = [{"list": "used_clients", "items": 96}, {"list": "free_clients", "items": 4}]
    config = [{"key": "max_client_conn", "value": "100"}]
    sampler.record(0.0, [lists, [{"cl_waiting": 0}], config])
    assert PGBOUNCER_LIMIT not in sampler.statements(1.0)
    sampler.record(1.0, [lists, [{"cl_waiting": 3}, {"cl_waiting": 4}]])
    sampler.record(2.0, [lists, [{"cl_waiting": 1}]])
    sampler.record(3.0, [[{"list": "used_clients", "items": 10}], [{"cl_waiting": 0}]])
    text = _exposition(sampler)
    assert _value(text, 'pgbouncer_clients_waiting_peak{target="pool"}') == 7
    assert _value(text, 'pgbouncer_clients_waiting_seconds_total{target="pool"}') == 2
    assert _value(text, 'pgbouncer_client_connections_peak{target="pool"}') == 96
    levels = {
        level: _value(
            text,
            f'pgbouncer_client_connections_saturation_seconds_total{{level="{level}",target="pool"}}',
        )
        for level in ("0.8", "0.95", "1")
    }
    assert levels == {"0.8": 2.0, "0.95": 2.0, "1": 0.0}


def test_rows_that_are_not_a_sample_count_as_a_missed_tick() -> None:
    sampler = TargetSampler("postgres", {"target": "db"}, SamplerSettings(), clock=lambda: 1.0)
    sampler.record(1.0, [[{"used": None, "slots": 20}]])
    sampler.missed(1.0, "busy")
    text = _exposition(sampler)
    assert _value(text, 'pg_connections_exporter_samples_total{target="db"}') == 0
    missed = 'pg_connections_exporter_samples_missed_total{reason="%s",target="db"}'
    assert _value(text, missed % "error") == 1 and _value(text, missed % "busy") == 1
    assert 'pg_connections_used_peak{target="db"}' not in text


def test_the_readme_documents_every_sampler_metric() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Between scrapes\n", 1)[1].split("\n## ", 1)[0]
    for metric in SAMPLER_METRICS:
        labels = ", ".join(f"`{label}`" for label in metric.labels)
        assert f"| `{metric.name}` | {metric.type} | {labels} | {metric.help} |" in section
