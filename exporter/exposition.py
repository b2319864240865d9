"""prometheus_client's text and OpenMetrics encoders, byte for byte, at a fraction of the CPU.

prometheus_client (0.2x) escapes every sample's metric name character by character and
validates every label name again on every sample: most of a scrape's CPU. Names repeat across
samples, so here each name goes through prometheus_client's own escaping functions once
(memoized) and each line is assembled as prometheus_client assembles it. Whatever this does not
reproduce (exemplars, native histograms, UTF-8 metric names under allow-utf-8) and any error go
to prometheus_client's encoder with the same metric families, so the output is always the
library's. tests/test_exposition.py holds the two to the same bytes.

Two helpers are private to prometheus_client (`openmetrics.exposition._escape` with
`_is_legacy_labelname_rune`, `validation._is_valid_legacy_metric_name`): pyproject.toml pins
the releases tested with them (0.25 and 0.26), and with any release lacking one of them
`_REPRODUCIBLE` is false and the library's own encoder runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as om
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from exporter.families import _Rows

try:
    # Internals of the prometheus_client versions this reproduces (0.2x with escaping schemes):
    # with another version, the library's own encoder is used as it is.
    from prometheus_client.validation import _is_valid_legacy_metric_name

    _REPRODUCIBLE = all(
        hasattr(om, name)
        for name in (
            "UNDERSCORES",
            "ALLOWUTF8",
            "escape_metric_name",
            "escape_label_name",
            "_escape",
            "_is_legacy_labelname_rune",
        )
    )
except ImportError:  # pragma: no cover - depends on the installed prometheus_client
    _REPRODUCIBLE = False

Encoder = Callable[[Collector], bytes]

# Text-format suffixes that prometheus_client moves into gauges of their own, at the end.
_TEXT_OM_SUFFIXES = ("_created", "_gsum", "_gcount")


class _Collected(Collector):
    """Metric families already collected, for the library's encoder to render."""

    def __init__(self, metrics: list[Any]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        return iter(self.metrics)


def choose_encoder(accept: str | None) -> tuple[Encoder, str]:
    """As prometheus_client's choose_encoder: the same content type, a faster encoder."""
    encoder, content_type = exposition.choose_encoder(accept or "")
    if not _REPRODUCIBLE:
        return encoder, content_type
    func = encoder.func if isinstance(encoder, functools.partial) else encoder
    keywords = encoder.keywords if isinstance(encoder, functools.partial) else {}
    escaping = keywords.get("escaping", om.UNDERSCORES)
    if func is om.generate_latest:
        return functools.partial(_openmetrics, escaping=escaping, library=encoder), content_type
    if func is exposition.generate_latest:
        return functools.partial(_text, escaping=escaping, library=encoder), content_type
    return encoder, content_type


@functools.lru_cache(maxsize=8192)
def _metric_name(name: str, escaping: str) -> str:
    return om.escape_metric_name(name, escaping)


@functools.lru_cache(maxsize=8192)
def _label_name(name: str, escaping: str) -> str:
    return om.escape_label_name(name, escaping)


@functools.lru_cache(maxsize=8192)
def _om_sample_name(name: str, escaping: str) -> str:
    return om._escape(name, escaping, om._is_legacy_labelname_rune)


@functools.lru_cache(maxsize=8192)
def _legacy_metric_name(name: str) -> bool:
    return _is_valid_legacy_metric_name(name)


def _escape_value(value: str) -> str:
    """A label value (always UTF-8), or an OpenMetrics HELP text."""
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value  # nearly always: three membership tests are cheaper than three copies
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


# (label name, escaping) -> escaped name: a dict lookup is cheaper than lru_cache's call.
_label_names: dict[tuple[str, str], str] = {}


def _labels(labels: dict[str, str], escaping: str) -> str:
    parts = []
    for k, v in sorted(labels.items()):
        name = _label_names.get((k, escaping))
        if name is None:
            if len(_label_names) >= 8192:
                _label_names.clear()
            name = _label_names[(k, escaping)] = _label_name(k, escaping)
        parts.append(f'{name}="{_escape_value(v)}"')
    return ",".join(parts)


# (sample name, escaping, label items) -> the line up to the value, per format: the same series
# come back scrape after scrape, so each is rendered once (half the encoding's CPU). ~0.5 KB a
# series; emptied when it holds twice as many as a render writes lines (series gone since).
_om_prefixes: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}
_text_prefixes: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}


def _prefix(
    cache: dict[tuple[str, str, tuple[tuple[str, str], ...]], str],
    escape_name: Callable[[str, str], str],
    s: Sample,
    escaping: str,
) -> str:
    key = (s.name, escaping, tuple(s.labels.items()))
    prefix = cache.get(key)
    if prefix is None:
        labels = "{" + _labels(s.labels, escaping) + "}" if s.labels else ""
        prefix = cache[key] = f"{escape_name(s.name, escaping)}{labels} "
    return prefix


def _forget_gone_series(
    cache: dict[tuple[str, str, tuple[tuple[str, str], ...]], str], lines: int
) -> None:
    """Bound the cache by what is rendered now, never below it (which would render every
    series anew on every scrape)."""
    if len(cache) > 2 * lines + 1024:
        cache.clear()


def _go_float(value: Any) -> str:
    """floatToGoString, without its four comparisons for the usual finite value."""
    d = float(value)
    s = repr(d)
    if s[-1] in "nf" or (d > 0 and s.find(".") > 6):  # inf, nan; Go's exponent form
        return floatToGoString(d)
    return s


def _openmetrics(registry: Collector, escaping: str, library: Encoder) -> bytes:
    metrics = list(registry.collect())
    try:
        return _render_openmetrics(metrics, escaping)
    except Exception:  # _Unsupported, or an error the library reports its own way
        return library(_Collected(metrics))


class _Unsupported(Exception):
    """Something only the library's encoder renders."""


def _render_openmetrics(metrics: Iterable[Any], escaping: str) -> bytes:
    utf8 = escaping == om.ALLOWUTF8
    out: list[str] = []
    written = _Written()
    for metric in metrics:
        written.take(out)
        name = _metric_name(metric.name, escaping)
        out.append(f"# HELP {name} {_escape_value(metric.documentation)}\n")
        out.append(f"# TYPE {name} {metric.type}\n")
        if metric.unit:
            out.append(f"# UNIT {name} {metric.unit}\n")
        if isinstance(metric, _Rows):
            _render_rows(out, metric, functools.partial(_om_row_name, escaping), escaping, False)
            continue
        s: Sample
        for s in metric.samples:
            if s.exemplar or s.native_histogram or (utf8 and not _legacy_metric_name(s.name)):
                raise _Unsupported
            prefix = _prefix(_om_prefixes, _om_sample_name, s, escaping)
            value = _go_float(s.value) if s.value is not None else ""
            timestamp = f" {s.timestamp}" if s.timestamp is not None else ""
            out.append(f"{prefix}{value}{timestamp}\n")
    out.append("# EOF\n")
    _forget_gone_series(_om_prefixes, written.lines + len(out))
    return written.end(out)


class _Written:
    """The body so far, encoded a batch of lines at a time: the lines of 1,000 targets (~30 MB)
    are never held as strings, one joined string and its bytes all at once."""

    BATCH = 16384

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lines = 0

    def take(self, out: list[str]) -> None:
        if len(out) >= self.BATCH:
            self.lines += len(out)
            self.chunks.append("".join(out).encode("utf-8"))
            out.clear()

    def end(self, out: list[str]) -> bytes:
        self.chunks.append("".join(out).encode("utf-8"))
        return b"".join(self.chunks)


def _text(registry: Collector, escaping: str, library: Encoder) -> bytes:
    metrics = list(registry.collect())
    try:
        return _render_text(metrics, escaping)
    except Exception:  # _Unsupported, or an error the library reports its own way
        return library(_Collected(metrics))


def _text_line(s: Sample, escaping: str) -> str:
    if escaping == om.ALLOWUTF8 and not _legacy_metric_name(s.name):
        raise _Unsupported
    timestamp = f" {int(float(s.timestamp) * 1000):d}" if s.timestamp is not None else ""
    prefix = _prefix(_text_prefixes, _metric_name, s, escaping)
    return f"{prefix}{_go_float(s.value)}{timestamp}\n"


def _render_text(metrics: Iterable[Any], escaping: str) -> bytes:
    out: list[str] = []
    written = _Written()
    for metric in metrics:
        written.take(out)
        mname, mtype = metric.name, metric.type
        # prometheus_client's munging of OpenMetrics types into the text format.
        if mtype == "counter":
            mname += "_total"
        elif mtype == "info":
            mname += "_info"
            mtype = "gauge"
        elif mtype == "stateset":
            mtype = "gauge"
        elif mtype == "gaugehistogram":
            mtype = "histogram"
        elif mtype == "unknown":
            mtype = "untyped"
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        name = _metric_name(mname, escaping)
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n")
        moved: dict[str, list[str]] = {}
        if isinstance(metric, _Rows):
            row_name = functools.partial(_text_row_name, escaping)
            moved = {
                k: v for k, v in _render_rows(out, metric, row_name, escaping, True).items() if v
            }
        for s in () if isinstance(metric, _Rows) else metric.samples:
            for suffix in _TEXT_OM_SUFFIXES:
                if s.name == metric.name + suffix:
                    moved.setdefault(suffix, []).append(_text_line(s, escaping))
                    break
            else:
                out.append(_text_line(s, escaping))
        for suffix, lines in sorted(moved.items()):
            name = _metric_name(metric.name + suffix, escaping)
            out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
            out.extend(lines)
    _forget_gone_series(_text_prefixes, written.lines + len(out))
    return written.end(out)


# Row families (exporter.families): rendered from their rows, no Sample or label dict made.


def _row_format(sample: str, names: tuple[str, ...], escaping: str, le: bool = False) -> str:
    """A str.format template of a segment's lines: {0[i]} the row's label values, in the order
    prometheus_client writes them (sorted by name), {1} the value (with `le`: {1} the bucket's
    bound, {2} the value)."""
    fields = [(name, f"{{0[{i}]}}") for i, name in enumerate(names)]
    if le:
        fields.append(("le", "{1}"))
    labels = ",".join(
        f'{_braces(_label_name(name, escaping))}="{field}"' for name, field in sorted(fields)
    )
    value = "{2}" if le else "{1}"
    return (
        f"{_braces(sample)}{{{{{labels}}}}} {value}\n" if labels else f"{_braces(sample)} {value}\n"
    )


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _escaped_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows with their label values escaped; the same list when none needs it (nearly
    always: one test over the segment instead of three per value)."""
    joined = "".join(["".join(row[0]) for row in rows])
    if "\\" not in joined and "\n" not in joined and '"' not in joined:
        return rows
    return [(tuple(_escape_value(v) for v in row[0]), *row[1:]) for row in rows]


def _render_rows(
    out: list[str], metric: Any, name_of: Callable[[str], str], escaping: str, text: bool
) -> dict[str, list[str]]:
    """A row family's lines, as the library writes its samples. In the text format the gauge
    histogram's _gcount and _gsum lines are returned instead, for after the family (as
    prometheus_client moves them); in OpenMetrics a None value is an empty one."""
    base, kind = metric.name, metric.type
    go = _go_float
    moved: dict[str, list[str]] = {}
    for names, raw_rows in metric.segments:
        width = len(names)
        if len(set(names)) != width or any(len(row[0]) != width for row in raw_rows):
            raise _Unsupported  # a label dict would merge repeated names; zip() drops some
        rows = _escaped_rows(raw_rows)
        if kind == "gaugehistogram":
            if "le" in names:
                raise _Unsupported  # the bucket's own label would replace it
            bucket = _row_format(name_of(base + "_bucket"), names, escaping, le=True).format
            count = _row_format(name_of(base + "_gcount"), names, escaping).format
            total = _row_format(name_of(base + "_gsum"), names, escaping).format
            counts = moved.setdefault("_gcount", []) if text else out
            sums = moved.setdefault("_gsum", []) if text else out
            for values, buckets, gsum in rows:
                for le, n in buckets:
                    out.append(bucket(values, _escape_value(le), go(n)))
                counts.append(count(values, go(buckets[-1][1])))
                sums.append(total(values, _value(gsum, text)))
            continue
        line = _row_format(name_of(base + "_total" if kind == "counter" else base), names, escaping)
        line_of = line.format
        if text:
            out.extend([line_of(values, go(value)) for values, value in rows])
        else:
            out.extend(
                [line_of(values, "" if value is None else go(value)) for values, value in rows]
            )
    return moved


def _om_row_name(escaping: str, name: str) -> str:
    if escaping == om.ALLOWUTF8 and not _legacy_metric_name(name):
        raise _Unsupported
    return _om_sample_name(name, escaping)


def _text_row_name(escaping: str, name: str) -> str:
    if escaping == om.ALLOWUTF8 and not _legacy_metric_name(name):
        raise _Unsupported
    return _metric_name(name, escaping)


def _value(value: Any, text: bool) -> str:
    return "" if value is None and not text else _go_float(value)
