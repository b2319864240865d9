"""The row-to-sample logic, on hand-made rows (pure logic: no database behaviour here)."""

from __future__ import annotations

from exporter.config.model import QuerySpec
from exporter.scrape.engine import OTHER, build_samples, metric_missing_columns, missing_columns


def query(**metric: object) -> QuerySpec:
    base = {"name": "m", "help": "h", "value": "n"}
    return QuerySpec.model_validate(
        {"name": "q", "sql": "SELECT 1", "metrics": [{**base, **metric}]}
    )


def samples(q: QuerySpec, rows: list[dict]) -> dict[tuple[str, ...], float]:
    return dict(build_samples(q, rows)[0].samples)


def test_rows_sharing_labels_are_summed_or_maxed() -> None:
    rows = [{"db": "a", "n": 2}, {"db": "a", "n": 3}, {"db": "b", "n": 1}]
    assert samples(query(labels=["db"]), rows) == {("a",): 5, ("b",): 1}
    assert samples(query(labels=["db"], aggregate="max"), rows) == {("a",): 3, ("b",): 1}


def test_match_selects_rows_and_nulls_are_skipped() -> None:
    rows = [{"k": "x", "n": 1}, {"k": "y", "n": 7}, {"k": "x", "n": None}]
    assert samples(query(match={"k": "x"}), rows) == {(): 1}


def test_metrics_of_one_query_each_get_their_own_match() -> None:
    """Several metrics, matches on one column, on two, on a value as text, and none."""
    rows = [
        {"kind": "a", "sub": "1", "n": 1},
        {"kind": "a", "sub": "2", "n": 2},
        {"kind": "b", "sub": "1", "n": 4},
        {"kind": None, "sub": "1", "n": 8},
        {"kind": 5, "sub": "1", "n": 16},
    ]
    matches = [
        {"kind": "a"},
        {"sub": "1", "kind": "a"},
        {"kind": "b"},
        {},
        {"kind": ""},
        {"kind": "5"},
        {"kind": "c"},
        {"sub": "1"},
    ]
    q = QuerySpec.model_validate(
        {
            "name": "q",
            "sql": "SELECT 1",
            "metrics": [
                {"name": f"m{i}", "help": "h", "value": "n", "match": m}
                for i, m in enumerate(matches)
            ],
        }
    )
    got = [dict(m.samples).get((), 0) for m in build_samples(q, rows)]
    assert got == [3, 1, 4, 31, 8, 16, 0, 29]


def test_max_series_keeps_the_largest_and_folds_the_rest_per_remaining_label() -> None:
    rows = [
        {"db": "big", "state": "idle", "n": 10},
        {"db": "mid", "state": "idle", "n": 5},
        {"db": "mid", "state": "active", "n": 1},
        {"db": "small1", "state": "idle", "n": 2},
        {"db": "small2", "state": "active", "n": 1},
        {"db": "small2", "state": "idle", "n": 1},
    ]
    out = samples(query(labels=["db", "state"], max_series=2, fold_labels=["db"]), rows)
    assert out == {
        ("big", "idle"): 10,
        ("mid", "idle"): 5,
        ("mid", "active"): 1,
        (OTHER, "idle"): 3,
        (OTHER, "active"): 1,
    }
    assert sum(out.values()) == sum(r["n"] for r in rows)


def test_zero_fill_adds_missing_values_for_each_other_label_set() -> None:
    rows = [{"db": "a", "state": "idle", "n": 4}]
    out = samples(query(labels=["db", "state"], zero_fill={"state": ["idle", "active"]}), rows)
    assert out == {("a", "idle"): 4, ("a", "active"): 0}
    assert samples(query(labels=["state"], zero_fill={"state": ["idle", "active"]}), []) == {
        ("idle",): 0,
        ("active",): 0,
    }
    # Every label filled, listed in another order than the labels: keys in label order.
    both = query(labels=["db", "state"], zero_fill={"state": ["idle"], "db": ["a", "b"]})
    assert samples(both, []) == {("a", "idle"): 0, ("b", "idle"): 0}
    assert samples(both, rows) == {("a", "idle"): 4, ("b", "idle"): 0}


def test_gauge_histogram_cumulates_buckets() -> None:
    q = QuerySpec.model_validate(
        {
            "name": "q",
            "sql": "SELECT 1",
            "params": {"b": [1, 10]},
            "metrics": [
                {
                    "name": "h",
                    "help": "h",
                    "type": "gauge_histogram",
                    "labels": ["s"],
                    "value": "n",
                    "bucket_column": "i",
                    "buckets_param": "b",
                    "sum_column": "total",
                }
            ],
        }
    )
    rows = [
        {"s": "idle", "i": 0, "n": 2, "total": 1.0},
        {"s": "idle", "i": 2, "n": 3, "total": 90.0},
        {"s": "idle", "i": 1, "n": 1, "total": 5.0},
    ]
    (hist,) = build_samples(q, rows)[0].histograms
    assert hist.labels == ("idle",)
    assert hist.buckets == (("1.0", 2), ("10.0", 3), ("+Inf", 6))
    assert hist.sum == 96.0


def test_value_alternatives_scale_add_and_label_columns() -> None:
    """What PgBouncer's SHOW output needs: renamed columns, microseconds, a label from a
    column named otherwise."""
    renamed = query(labels=["database"], label_columns={"database": "name"}, value=["new", "old"])
    assert samples(renamed, [{"name": "app", "old": 3}]) == {("app",): 3}
    assert samples(renamed, [{"name": "app", "new": 4, "old": 3}]) == {("app",): 4}
    waited = query(value="s", add={"us": 0.000001})
    assert samples(waited, [{"s": 2, "us": 500000}]) == {(): 2.5}
    assert samples(waited, [{"s": 2}]) == {(): 2}  # an older version without the column
    assert samples(query(scale=0.001), [{"n": 1500}]) == {(): 1.5}


def test_missing_columns_are_named_per_metric_and_skipped_metrics_left_out() -> None:
    q = QuerySpec.model_validate(
        {
            "name": "q",
            "sql": "SHOW POOLS",
            "metrics": [
                {"name": "a", "help": "h", "value": ["x", "y"], "add": {"z": 1}},
                {"name": "b", "help": "h", "labels": ["l"], "value": "n"},
            ],
        }
    )
    assert [metric_missing_columns(m, ["y", "n"]) for m in q.metrics] == [[], ["l"]]
    assert metric_missing_columns(q.metrics[0], ["n"]) == ["x or y"]
    assert missing_columns(q, ["n"]) == ["l", "x or y"]
    built = build_samples(q, [{"y": 1, "n": 2}], skip=frozenset({"b"}))
    assert [(m.spec.name, m.samples) for m in built] == [("a", (((), 1.0),))]
