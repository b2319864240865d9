"""Metric families that keep their samples as rows of label values until asked for Samples.

prometheus_client's `add_metric` makes a `Sample` with a label dict for every series, made only
for the encoder to take apart again: at 1,000 targets most of the collector's CPU (figures:
docs/benchmarks.md, "A fleet on one exporter"). These families keep `(label values, value)`
rows instead, grouped in segments that share their label names (targets may carry different
constant labels), and exposition.py renders them straight from the rows. Anyone else reading
`samples` (the library's encoder, tests, the registry's helpers) gets exactly the Samples the
library's own family of that type would hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
)
from prometheus_client.samples import Sample

LabelNames = tuple[str, ...]


class _Rows:
    """The row storage shared by the three family types below."""

    _labelnames: LabelNames
    name: str
    type: str

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._start_rows()
        # A mixin: the next class in the MRO is the library's family, which takes these.
        super().__init__(name, documentation, labels=labels)  # type: ignore[call-arg]

    def _start_rows(self) -> None:
        # (label names, base, rows): `base` the leading label values every row of the segment
        # shares (a target's name and constant labels), a row the rest: a gauge's or
        # counter's row is (values, value), a gauge histogram's (values, buckets, sum).
        self.segments: list[tuple[LabelNames, tuple[str, ...], list[tuple[Any, ...]]]] = []

    def _rows(self, names: LabelNames, base: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
        segments = self.segments
        if segments and segments[-1][0] == names and segments[-1][1] == base:
            return segments[-1][2]
        rows: list[tuple[Any, ...]] = []
        segments.append((names, base, rows))
        return rows

    def add_rows(
        self, names: Sequence[str], rows: Sequence[tuple[Any, ...]], base: Sequence[str] = ()
    ) -> None:
        """Rows whose label values, after `base`, go with `names` (not necessarily this
        family's own): `base` is written once for all of them, not into each row."""
        self._rows(tuple(names), tuple(base)).extend(rows)

    # What the library's Metric keeps in `samples`: built on demand from the rows.
    @property
    def samples(self) -> list[Sample]:
        out: list[Sample] = []
        for names, base, rows in getattr(self, "segments", ()):
            for values, *rest in rows:
                out.extend(self._samples_of(names, (base + tuple(values), *rest)))
        return out

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        # Metric.__init__ sets an empty list; rows are the only way samples are added here.
        if value:
            raise TypeError("row families take rows (add_metric), not samples")

    def _samples_of(self, names: LabelNames, row: tuple[Any, ...]) -> list[Sample]:
        raise NotImplementedError


class _ValueRows(_Rows):
    """A gauge's or counter's rows: one value per series."""

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self._rows(self._labelnames).append((tuple(labels), value))


# add_metric takes no timestamp, unlike the library's: a scrape's samples have none.
class RowGauge(_ValueRows, GaugeMetricFamily):  # type: ignore[misc]
    def _samples_of(self, names: LabelNames, row: tuple[Any, ...]) -> list[Sample]:
        return [Sample(self.name, _labels(names, row[0]), row[1], None)]


class RowCounter(_ValueRows, CounterMetricFamily):  # type: ignore[misc]  # as RowGauge
    def _samples_of(self, names: LabelNames, row: tuple[Any, ...]) -> list[Sample]:
        return [Sample(self.name + "_total", _labels(names, row[0]), row[1], None, None)]


class RowGaugeHistogram(_Rows, GaugeHistogramMetricFamily):
    def add_metric(  # type: ignore[override]  # rows, and no timestamp: a scrape has none
        self, labels: Sequence[str], buckets: Sequence[tuple[str, float]], gsum_value: float
    ) -> None:
        self._rows(self._labelnames).append((tuple(labels), tuple(buckets), gsum_value))

    def _samples_of(self, names: LabelNames, row: tuple[Any, ...]) -> list[Sample]:
        values, buckets, gsum = row
        out = [
            Sample(self.name + "_bucket", {**_labels(names, values), "le": le}, count, None)
            for le, count in buckets
        ]
        out.append(Sample(self.name + "_gcount", _labels(names, values), buckets[-1][1], None))
        out.append(Sample(self.name + "_gsum", _labels(names, values), gsum, None))
        return out


def _labels(names: LabelNames, values: Sequence[str]) -> dict[str, str]:
    # As lax as the library's add_metric: zip() stops at the shorter.
    return dict(zip(names, values, strict=False))


ValueFamily = RowGauge | RowCounter
RowFamily = RowGauge | RowCounter | RowGaugeHistogram


def new_family(kind: str, name: str, doc: str, labels: Sequence[str]) -> RowFamily:
    """A row family of the query-spec type `kind` (gauge, counter or gauge_histogram)."""
    if kind == "gauge_histogram":
        return RowGaugeHistogram(name, doc, labels)
    return new_value_family(kind, name, doc, labels)


def new_value_family(kind: str, name: str, doc: str, labels: Sequence[str]) -> ValueFamily:
    """A row family of one value per series: a counter, else a gauge."""
    if kind == "counter":
        return RowCounter(name, doc, labels)
    return RowGauge(name, doc, labels)
