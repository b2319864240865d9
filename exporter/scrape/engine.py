"""Turns a query's result rows into metric samples, as its metric specs describe.

Pure logic with no I/O: filtering rows (`match`), picking and scaling the value (`value`,
`scale`, `add`), combining rows that share a label set (`aggregate`), folding the long tail into
`other` (`max_series`), filling absent label values with zeros (`zero_fill`) and cumulating
histogram buckets.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client.utils import floatToGoString

from exporter.config.model import MetricSpec, QuerySpec

# The library's Go float formatting, typed (prometheus_client leaves it unannotated).
_float_to_go_string: Callable[[float], str] = floatToGoString

OTHER = "other"

LabelValues = tuple[str, ...]
Row = Mapping[str, Any]


# Named tuples, not frozen dataclasses: one of each is made for every metric of every target
# in every scrape, and a frozen dataclass's __init__ costs four times a tuple's.


class HistogramSample(NamedTuple):
    """One gauge-histogram series: cumulative bucket counts (the last is +Inf) and the sum."""

    labels: LabelValues
    buckets: tuple[tuple[str, float], ...]
    sum: float


class MetricSamples(NamedTuple):
    """What one metric spec produced from one result set."""

    spec: MetricSpec
    samples: tuple[tuple[LabelValues, float], ...] = ()
    histograms: tuple[HistogramSample, ...] = ()


def metric_missing_columns(metric: MetricSpec, columns: Sequence[str]) -> list[str]:
    """Columns `metric` needs that the result set lacks (`add` columns are optional)."""
    have = set(columns)
    wanted = [metric.column(label) for label in metric.labels] + list(metric.match)
    wanted += [c for c in (metric.bucket_column, metric.sum_column) if c]
    missing = sorted({c for c in wanted if c not in have})
    if not have.intersection(metric.value_columns):
        missing.append(" or ".join(metric.value_columns))
    return missing


def missing_columns(query: QuerySpec, columns: Sequence[str]) -> list[str]:
    """Columns the metric specs name that the result set lacks."""
    return sorted({c for m in query.metrics for c in metric_missing_columns(m, columns)})


def build_samples(
    query: QuerySpec, rows: Sequence[Row], skip: frozenset[str] = frozenset()
) -> list[MetricSamples]:
    """The metrics of `query` from its rows, but those named in `skip`."""
    out = []
    select = _Selector(rows)
    for metric in query.metrics:
        if metric.name in skip:
            continue
        plan = _plan(metric)
        selected = select(plan.match)
        if metric.type == "gauge_histogram":
            bounds = [float(b) for b in query.params[metric.buckets_param or ""]]
            out.append(MetricSamples(metric, histograms=_histograms(plan, selected, bounds)))
        else:
            out.append(MetricSamples(metric, samples=_samples(plan, selected)))
    return out


@dataclass(frozen=True)
class _Plan:
    """What a metric spec asks of each row, worked out once per spec instead of per row: this
    runs for every row of every scrape."""

    spec: MetricSpec
    match: tuple[tuple[str, str], ...]
    label_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    scale: float
    add: tuple[tuple[str, float], ...]
    summed: bool
    # zero_fill: where the filled labels sit in a key, and every combination of their values.
    fill_positions: tuple[int, ...]
    fill_combos: tuple[tuple[str, ...], ...]


# id(spec) -> (spec, plan); the spec is kept so that its id is not reused while cached.
_plans: dict[int, tuple[MetricSpec, _Plan]] = {}


def _plan(metric: MetricSpec) -> _Plan:
    cached = _plans.get(id(metric))
    if cached is not None and cached[0] is metric:
        return cached[1]
    plan = _Plan(
        spec=metric,
        match=tuple(sorted(metric.match.items())),
        label_columns=tuple(metric.column(label) for label in metric.labels),
        value_columns=tuple(metric.value_columns),
        scale=metric.scale,
        add=tuple(metric.add.items()),
        summed=metric.aggregate == "sum",
        fill_positions=tuple(metric.labels.index(label) for label in metric.zero_fill),
        fill_combos=(
            tuple(itertools.product(*metric.zero_fill.values())) if metric.zero_fill else ()
        ),
    )
    if len(_plans) >= 4096:  # specs change only on reload: old ones are dropped now and then
        _plans.clear()
    _plans[id(metric)] = (metric, plan)
    return plan


class _Selector:
    """The rows matching a `match`, each distinct one computed once; rows are bucketed by the
    first match column in one pass, so that many metrics of one query (the built-ins match on
    `breakdown`) do not each scan every row."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self._rows = rows
        self._selected: dict[tuple[tuple[str, str], ...], Sequence[Row]] = {}
        self._buckets: dict[str, dict[str, list[Row]]] = {}

    def __call__(self, key: tuple[tuple[str, str], ...]) -> Sequence[Row]:
        """`key`: the match's (column, value) pairs, sorted."""
        selected = self._selected.get(key)
        if selected is not None:
            return selected
        if not key:
            selected = self._rows
        else:
            column, want = key[0]
            buckets = self._buckets.get(column)
            if buckets is None:
                buckets = {}
                for row in self._rows:
                    buckets.setdefault(_text(row.get(column)), []).append(row)
                self._buckets[column] = buckets
            rest = key[1:]
            selected = buckets.get(want, [])
            if rest:
                selected = [r for r in selected if _matches(r, rest)]
        self._selected[key] = selected
        return selected


def _matches(row: Row, match: Sequence[tuple[str, str]]) -> bool:
    return all(_text(row.get(col)) == want for col, want in match)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> float | None:
    """A float, or None for NULL and NaN (float() takes bools, ints and Decimals alike)."""
    if value is None:
        return None
    number = float(value)
    return None if number != number else number


def _value(row: Row, plan: _Plan) -> float | None:
    """The first value column the row has, times `scale`, plus the `add` columns it has."""
    for column in plan.value_columns:
        if column in row:
            value = _number(row[column])
            break
    else:
        raise KeyError(plan.value_columns[0])
    if value is None:
        return None
    value *= plan.scale
    for extra, factor in plan.add:
        number = _number(row.get(extra))
        if number is not None:
            value += number * factor
    return value


def _key(row: Row, columns: tuple[str, ...]) -> LabelValues:
    return tuple(["" if (v := row[c]) is None else str(v) for c in columns])


def _samples(plan: _Plan, rows: Sequence[Row]) -> tuple[tuple[LabelValues, float], ...]:
    series: dict[LabelValues, float] = {}
    summed, columns = plan.summed, plan.label_columns
    # The usual metric (one value column, no scale, nothing added) read inline: this loop
    # runs for every row of every metric of every target, and two calls a row were most of it.
    plain = len(plan.value_columns) == 1 and plan.scale == 1.0 and not plan.add
    column = plan.value_columns[0]
    value: float | None
    for row in rows:
        if plain:
            raw = row[column]
            if raw is None:
                continue
            value = float(raw)
            if value != value:  # NaN, as _number
                continue
        else:
            value = _value(row, plan)
            if value is None:
                continue
        key = tuple(["" if (v := row[c]) is None else str(v) for c in columns])
        old = series.get(key)
        if old is None:
            series[key] = value
        else:
            series[key] = old + value if summed else max(old, value)
    metric = plan.spec
    if metric.max_series is not None:
        series = fold_series(series, metric)
    if plan.fill_combos:
        series = _zero_fill(series, plan)
    return tuple(sorted(series.items()))


def _combine(aggregate: str, a: float, b: float) -> float:
    return a + b if aggregate == "sum" else max(a, b)


def fold_series(series: dict[LabelValues, float], metric: MetricSpec) -> dict[LabelValues, float]:
    """Keep the `max_series` largest groups of the fold labels; combine the rest into `other`."""
    assert metric.max_series is not None
    if len(series) <= metric.max_series:
        return series  # no more groups than series
    fold = metric.fold_labels if metric.fold_labels is not None else metric.labels
    positions = [metric.labels.index(label) for label in fold]
    totals: dict[LabelValues, float] = {}
    for key, value in series.items():
        group = tuple(key[p] for p in positions)
        totals[group] = totals.get(group, 0.0) + value
    if len(totals) <= metric.max_series:
        return series
    ranked = sorted(totals, key=lambda g: (-totals[g], g))
    kept = set(ranked[: metric.max_series])
    folded: dict[LabelValues, float] = {}
    for key, value in series.items():
        if tuple(key[p] for p in positions) not in kept:
            key = tuple(OTHER if i in positions else v for i, v in enumerate(key))
        folded[key] = _combine(metric.aggregate, folded[key], value) if key in folded else value
    return folded


def _zero_fill(series: dict[LabelValues, float], plan: _Plan) -> dict[LabelValues, float]:
    fill_positions = plan.fill_positions
    width = len(plan.label_columns)
    filled = dict(series)
    if fill_positions == tuple(range(width)):  # every label filled: the combinations are keys
        for combo in plan.fill_combos:
            filled.setdefault(combo, 0.0)
        return filled
    rest_positions = [i for i in range(width) if i not in fill_positions]
    rests = {tuple(key[p] for p in rest_positions) for key in series} if rest_positions else {()}
    for rest in rests:
        for combo in plan.fill_combos:
            key: list[str] = [""] * width
            for p, v in zip(rest_positions, rest, strict=True):
                key[p] = v
            for p, v in zip(fill_positions, combo, strict=True):
                key[p] = v
            filled.setdefault(tuple(key), 0.0)
    return filled


def _histograms(
    plan: _Plan, rows: Sequence[Row], bounds: Sequence[float]
) -> tuple[HistogramSample, ...]:
    metric = plan.spec
    assert metric.bucket_column is not None
    counts: dict[LabelValues, list[float]] = {}
    sums: dict[LabelValues, float] = {}
    for row in rows:
        value = _value(row, plan)
        index = row[metric.bucket_column]
        if value is None or index is None:
            continue
        key = _key(row, plan.label_columns)
        per_bucket = counts.setdefault(key, [0.0] * (len(bounds) + 1))
        per_bucket[min(max(int(index), 0), len(bounds))] += value
        if metric.sum_column:
            sums[key] = sums.get(key, 0.0) + (_number(row[metric.sum_column]) or 0.0)
    if plan.fill_combos:
        for key in _zero_fill(dict.fromkeys(counts, 0.0), plan):
            counts.setdefault(key, [0.0] * (len(bounds) + 1))
    out = []
    les = [_float_to_go_string(b) for b in bounds] + ["+Inf"]
    for key in sorted(counts):
        cumulative = list(itertools.accumulate(counts[key]))
        out.append(
            HistogramSample(key, tuple(zip(les, cumulative, strict=True)), sums.get(key, 0.0))
        )
    return tuple(out)
