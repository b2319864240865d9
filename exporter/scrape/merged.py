"""Many targets' collectors as one: their families merged by name, so that /metrics has one
family per metric name whatever the number of targets (the log readers', the samplers')."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector


def merged_families(collectors: Iterable[Collector]) -> Iterator[Metric]:
    """Each name's first family, with the samples of every later family of that name."""
    merged: dict[str, Metric] = {}
    for collector in collectors:
        for family in collector.collect():
            into = merged.get(family.name)
            if into is None:
                merged[family.name] = family
            else:
                into.samples.extend(family.samples)
    yield from merged.values()
