"""exporter.metrics.exposition renders exactly the bytes prometheus_client's encoders render."""

from __future__ import annotations

import gzip

import pytest
from prometheus_client import exposition as library
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.samples import Exemplar

from exporter.metrics import exposition, families
from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload

ACCEPT = [
    None,
    "",
    # Prometheus 2.x
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    # Prometheus 3.x
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;"
    "escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=dots",
]


def _same_as_library(metrics: list, accept: str | None) -> bytes:
    expected_encoder, expected_type = library.choose_encoder(accept or "")
    encoder, content_type = exposition.choose_encoder(accept)
    assert content_type == expected_type
    expected = expected_encoder(exposition._Collected(metrics))
    assert encoder(exposition._Collected(metrics)) == expected
    return expected


def _fast_path(metrics: list, accept: str | None) -> bytes:
    """The output of the fast path itself, never the fallback."""
    encoder, _ = exposition.choose_encoder(accept)
    escaping = encoder.keywords["escaping"]
    if encoder.func is exposition._openmetrics:
        return exposition._render_openmetrics(metrics, escaping)
    return exposition._render_text(metrics, escaping)


@pytest.mark.parametrize("accept", ACCEPT)
def test_a_real_scrape_renders_as_the_library_renders_it(
    pg: LocalCluster, exporter_for, accept: str | None
) -> None:
    running = exporter_for(
        {"targets": [{"name": "db", "dsn": pg.dsn(), "labels": {"env": 'a "b" \\c'}}]}
    )
    apps = ['quoted "app"', "back\\slash", "plain", "ünïcode"]
    with Workload(pg.dsn()) as w:
        w.open_many([SessionSpec("idle", application_name=a) for a in apps])
        metrics = list(running.exporter.registry.collect())
    expected = _same_as_library(metrics, accept)
    assert _fast_path(metrics, accept) == expected
    assert expected.count(b"\n") > 100
    assert b"back\\\\slash" in expected and b'quoted \\"app\\"' in expected


def _families() -> list:
    gauge = GaugeMetricFamily("g", 'Help with \\ and\nnewline and "quotes".', labels=["a", "b"])
    gauge.add_metric(["x\ny", 'q"\\'], 1.5, timestamp=12.5)
    gauge.add_metric(["ü", ""], float("nan"))
    gauge.add_metric(["inf", "-inf"], float("-inf"))
    counter = CounterMetricFamily("c", "Counter.", labels=["l"], created=100.0)
    counter.add_metric(["v"], 3, created=1.25)
    colon = GaugeMetricFamily("with:colon", "Colon.", value=1e-9)
    hist = HistogramMetricFamily("h", "Histogram.", labels=["l"])
    hist.add_metric(["v"], [("0.5", 1), ("+Inf", 4)], 10.0)
    ghist = GaugeHistogramMetricFamily("gh", "Gauge histogram.", labels=["l"])
    ghist.add_metric(["v"], [("1.0", 2), ("+Inf", 3)], 7.0)
    summary = SummaryMetricFamily("s", "Summary.", count_value=4, sum_value=2.0)
    info = InfoMetricFamily("i", "Info.", value={"version": "1.0"})
    stateset = StateSetMetricFamily("st", "State set.", value={"on": True, "off": False})
    unit = GaugeMetricFamily("u_seconds", "With unit.", value=2, unit="seconds")
    empty = GaugeMetricFamily("empty", "No samples.", labels=["l"])
    unknown = UnknownMetricFamily("un", "Untyped.", value=3)
    return [gauge, counter, colon, hist, ghist, summary, info, stateset, unit, empty, unknown]


@pytest.mark.parametrize("accept", ACCEPT)
def test_every_kind_of_family_renders_as_the_library_renders_it(accept: str | None) -> None:
    metrics = _families()
    expected = _same_as_library(metrics, accept)
    assert _fast_path(metrics, accept) == expected


@pytest.mark.parametrize("accept", ACCEPT)
def test_what_the_fast_path_leaves_out_goes_to_the_library(accept: str | None) -> None:
    with_exemplar = CounterMetricFamily("ex", "Exemplar.", labels=["l"])
    with_exemplar.add_metric(["v"], 1, exemplar=Exemplar({"trace_id": "abc"}, 0.5))
    utf8_name = GaugeMetricFamily("name.with.dots", "UTF-8 name.", value=1)
    bad = GaugeMetricFamily("bad", "Value is not a number.", labels=["l"])
    metrics = [*_families(), with_exemplar, utf8_name]
    _same_as_library(metrics, accept)
    bad.add_metric(["v"], "not a number")  # type: ignore[arg-type]
    expected_encoder, _ = library.choose_encoder(accept or "")
    encoder, _ = exposition.choose_encoder(accept)
    with pytest.raises(Exception) as expected_error:
        expected_encoder(exposition._Collected([bad]))
    with pytest.raises(type(expected_error.value)):
        encoder(exposition._Collected([bad]))


VALUES = [
    0, 1, -1, True, 0.0, -0.0, 0.5, 14.0, 15.692056999999998, 999999.0, 1e6, 1234567.0,
    -1234567.0, 123456.789, 1e15, 1e16, 1e22, -1e22, 1e-5, 5e-324, 1.7976931348623157e308,
    float("inf"), float("-inf"), float("nan"), 2**53 + 1,
]  # fmt: skip


@pytest.mark.parametrize("accept", ACCEPT)
def test_values_and_repeated_series_render_as_the_library_renders_them(
    accept: str | None,
) -> None:
    """Every value formatting branch; each series rendered twice (the second time from the
    line-prefix cache), then again with other values."""
    for values in (VALUES, VALUES, list(reversed(VALUES))):
        family = GaugeMetricFamily("v", "Values.", labels=["i", "q"])
        for i, value in enumerate(values):
            family.add_metric([str(i), 'a"b\\c'], value)
        plain = GaugeMetricFamily("w", "No labels.", value=values[7])
        metrics = [family, plain]
        assert _fast_path(metrics, accept) == _same_as_library(metrics, accept)


def test_line_prefix_cache_keeps_the_series_of_a_render_and_drops_gone_ones() -> None:
    """Many series are all kept between renders (bounding below them would render each anew
    every time); once they are gone the cache shrinks to what is rendered."""

    def family(n: int, tag: str) -> list:
        gauge = GaugeMetricFamily("g", "Many.", labels=["i", "tag"])
        for i in range(n):
            gauge.add_metric([str(i), tag], i)
        return [gauge]

    accept = "application/openmetrics-text; version=1.0.0"
    exposition._om_prefixes.clear()
    many = family(20_000, "many")
    assert _fast_path(many, accept) == _same_as_library(many, accept)
    assert len(exposition._om_prefixes) == 20_000
    _fast_path(many, accept)
    assert len(exposition._om_prefixes) == 20_000  # still all there after another render
    few = family(10, "few")
    assert _fast_path(few, accept) == _same_as_library(few, accept)
    assert len(exposition._om_prefixes) <= 10


def _row_and_library_families() -> tuple[list, list]:
    """The same series as row families (exporter.metrics.families) and as the library's families:
    label values needing escapes, segments with other label names (targets with other constant
    labels), label names out of order, no labels, a gauge histogram, values of every kind."""
    rows, library_families = [], []
    for kind, library_type in (
        ("gauge", GaugeMetricFamily),
        ("counter", CounterMetricFamily),
        ("gauge_histogram", GaugeHistogramMetricFamily),
    ):
        row = families.new_family(
            kind, f"m_{kind}", 'Help "with" \\ and\nnewline.', ["target", "b"]
        )
        lib = library_type(f"m_{kind}", 'Help "with" \\ and\nnewline.', labels=["target", "b"])
        for i, value in enumerate(VALUES[:8]):
            labels = [f"t{i}", 'x"y\\z\n' if i % 3 == 0 else "plain"]
            if kind == "gauge_histogram":
                buckets = [("1.0", float(i)), ("+Inf", value)]
                row.add_metric(labels, buckets, 2.5 * i)
                lib.add_metric(labels, buckets, 2.5 * i)
            else:
                row.add_metric(labels, value)
                lib.add_metric(labels, value)
        # A target with a constant label: other label names, in the same family.
        names = ("target", "env", "b")
        # Then two with their target's values given once, as a segment's base (one of them
        # needing escapes), the second on the first's label names.
        extra = library_type(f"m_{kind}", "", labels=list(names))
        if kind == "gauge_histogram":
            row.add_rows(names, [(("t9", "prod", "v"), (("1.0", 1.0), ("+Inf", 2.0)), 0.5)])
            extra.add_metric(["t9", "prod", "v"], [("1.0", 1.0), ("+Inf", 2.0)], 0.5)
            for base in (("t10", 'q"\\'), ("t11", "dev")):
                row.add_rows(names, [(("w",), (("1.0", 3.0), ("+Inf", 4.0)), 1.5)], base)
                extra.add_metric([*base, "w"], [("1.0", 3.0), ("+Inf", 4.0)], 1.5)
        else:
            row.add_rows(names, [(("t9", "prod", "v"), 7.0)])
            extra.add_metric(["t9", "prod", "v"], 7.0)
            for base in (("t10", 'q"\\'), ("t11", "dev")):
                row.add_rows(names, [(("w",), 8.0), (("x\n",), -0.0)], base)
                extra.add_metric([*base, "w"], 8.0)
                extra.add_metric([*base, "x\n"], -0.0)
        lib.samples.extend(extra.samples)
        rows.append(row)
        library_families.append(lib)
    plain_row = families.new_family("gauge", "m_plain", "No labels.", [])
    plain_row.add_metric([], 3.0)
    plain_lib = GaugeMetricFamily("m_plain", "No labels.", labels=[])
    plain_lib.add_metric([], 3.0)
    empty_row = families.new_family("counter", "m_empty", "No rows.", ["l"])
    empty_lib = CounterMetricFamily("m_empty", "No rows.", labels=["l"])
    return [*rows, plain_row, empty_row], [*library_families, plain_lib, empty_lib]


@pytest.mark.parametrize("accept", ACCEPT)
def test_row_families_render_as_the_library_renders_its_own_families(accept: str | None) -> None:
    rows, library_families = _row_and_library_families()
    for row, lib in zip(rows, library_families, strict=True):
        assert row.samples == lib.samples
    expected_encoder, _ = library.choose_encoder(accept or "")
    expected = expected_encoder(exposition._Collected(library_families))
    assert _fast_path(rows, accept) == expected
    encoder, _ = exposition.choose_encoder(accept)
    assert encoder(exposition._Collected(rows)) == expected
    assert b"t9" in expected and b'x\\"y' in expected


@pytest.mark.parametrize("accept", ACCEPT)
def test_row_families_the_fast_path_cannot_render_go_to_the_library(accept: str | None) -> None:
    """Repeated label names (a dict merges them), a value short of labels (zip drops the
    name), a histogram with its own `le`: rendered from the Samples the library would hold."""
    repeated = families.new_family("gauge", "r", "Repeated.", ["a", "a"])
    repeated.add_metric(["1", "2"], 1.0)
    short = families.new_family("gauge", "s", "Short.", ["a", "b"])
    short.add_metric(["1"], 1.0)
    le = families.new_family("gauge_histogram", "h", "Own le.", ["le"])
    le.add_metric(["x"], [("+Inf", 1.0)], 1.0)
    for family in (repeated, short, le):
        with pytest.raises(exposition._Unsupported):
            _fast_path([family], accept)
        _same_as_library([family], accept)


def test_the_installed_prometheus_client_is_one_this_reproduces() -> None:
    """Otherwise every test above compares the library with itself."""
    from exporter.metrics import exposition as ours

    assert ours._REPRODUCIBLE
    encoder, _ = ours.choose_encoder("application/openmetrics-text; version=1.0.0")
    assert getattr(encoder, "func", None) is ours._openmetrics


@pytest.mark.parametrize("accept", ACCEPT)
def test_a_body_encoded_in_batches_is_the_same_body(accept: str | None, monkeypatch) -> None:
    """The body is encoded a batch of lines at a time (to bound memory at 1,000 targets): with
    batches of 3 lines, every kind of family still renders as the library renders it."""
    monkeypatch.setattr(exposition._Written, "BATCH", 3)
    rows, library_families = _row_and_library_families()
    expected_encoder, _ = library.choose_encoder(accept or "")
    expected = expected_encoder(exposition._Collected([*_families(), *library_families]))
    assert _fast_path([*_families(), *rows], accept) == expected


@pytest.mark.parametrize("accept", ACCEPT)
def test_a_gzipped_body_is_the_librarys_body_gzipped(accept: str | None) -> None:
    """Compressed batch by batch as encoded (three batches of lines here), or in one call
    (one batch): the same bytes once decompressed, for the fast path and for what goes to the
    library's encoder."""
    many = families.new_family("gauge", "many", "Many series.", ["target", "i"])
    for i in range(2 * exposition._Written.BATCH + 10):
        many.add_rows(("target", "i"), [((str(i),), float(i % 7))], ("t1",))
    with_exemplar = CounterMetricFamily("ex", "Exemplar.", labels=["l"])
    with_exemplar.add_metric(["v"], 1, exemplar=Exemplar({"trace_id": "abc"}, 0.5))
    for metrics in ([many, *_families()], [*_families()], [with_exemplar]):
        expected = _same_as_library(metrics, accept)
        encoder, _ = exposition.choose_encoder(accept)
        body = exposition.encode(encoder, exposition._Collected(metrics), gzipped=True)
        assert body[:2] == b"\x1f\x8b"  # a gzip member
        assert gzip.decompress(body) == expected
        assert exposition.encode(encoder, exposition._Collected(metrics), False) == expected
