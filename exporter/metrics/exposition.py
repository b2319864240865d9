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
import gzip
import math
import operator
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as om
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from exporter.metrics.families import _Rows

# The library's Go float formatting, typed (prometheus_client leaves it unannotated).
_float_to_go_string: Callable[[float], str] = floatToGoString

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

# gzip's level for a body: a scrape body is repetitive, and level 1 already shrinks it most of
# the way for less CPU than the default (docs/benchmarks.md, "Profile, and what changed").
GZIP_LEVEL = 1

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
# come back scrape after scrape, so each is rendered once (docs/benchmarks.md, "Profile, and
# what changed"); emptied when it holds twice as many as a render writes lines (series gone).
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


# value -> its text, for integral values: counts and settings repeat across series and scrapes
# (1.0, 100.0, ...); a remembered age or duration would only push them out.
_go_floats: dict[Any, str] = {}


def _go_float(value: Any) -> str:
    """floatToGoString, remembered for values seen before, and without its four comparisons
    for the usual finite value."""
    text = _go_floats.get(value)
    if text is not None:
        return text
    if value == 0:  # 0.0 and -0.0 are one key: never remembered
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    d = float(value)
    text = repr(d)
    if text[-1] in "nf" or (d > 0 and text.find(".") > 6):  # inf, nan; Go's exponent form
        text = _float_to_go_string(d)
    if d.is_integer():  # counts and settings come back; ages and durations hardly ever
        if len(_go_floats) >= 16384:
            _go_floats.clear()
        _go_floats[value] = text
    return text


def encode(encoder: Encoder, registry: Collector, gzipped: bool) -> bytes:
    """The body `encoder` (from choose_encoder) writes for `registry`, gzipped if asked. This
    module's encoders compress each batch of lines as it is encoded: a large plain body is
    never held whole, nor its copy joined for gzip (peak memory; docs/benchmarks.md, "Figures
    that were in code comments")."""
    func = encoder.func if isinstance(encoder, functools.partial) else None
    if func is _openmetrics or func is _text:
        return encoder(registry, gzipped=gzipped)  # type: ignore[call-arg]  # ours take gzipped
    body = encoder(registry)
    return gzip.compress(body, compresslevel=GZIP_LEVEL) if gzipped else body


def _openmetrics(
    registry: Collector, escaping: str, library: Encoder, gzipped: bool = False
) -> bytes:
    metrics = list(registry.collect())
    try:
        return _render_openmetrics(metrics, escaping, gzipped)
    except Exception:  # _Unsupported, or an error the library reports its own way
        body = library(_Collected(metrics))
        return gzip.compress(body, compresslevel=GZIP_LEVEL) if gzipped else body


class _Unsupported(Exception):
    """Something only the library's encoder renders."""


def _render_openmetrics(metrics: Iterable[Any], escaping: str, gzipped: bool = False) -> bytes:
    utf8 = escaping == om.ALLOWUTF8
    out: list[str] = []
    written = _Written(gzipped)
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
    """The body so far, encoded (and with `gzipped` compressed) a batch of lines at a time: the
    lines of many targets are never held as strings, one joined string and its bytes all at
    once, and a gzipped body never as plain bytes."""

    BATCH = 16384

    def __init__(self, gzipped: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.lines = 0
        self._gzipped = gzipped
        # Made at the first batch: a body of one batch (one target's) is compressed in one call,
        # holding the compressor's state only meanwhile, as gzip.compress does.
        self._gzip: Any = None

    def take(self, out: list[str]) -> None:
        if len(out) >= self.BATCH:
            self.lines += len(out)
            chunk = "".join(out).encode("utf-8")
            out.clear()
            if self._gzipped and self._gzip is None:
                # wbits 31: the gzip container, as gzip.compress writes it (but for its mtime).
                self._gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
            self.chunks.append(self._gzip.compress(chunk) if self._gzipped else chunk)

    def end(self, out: list[str]) -> bytes:
        chunk = "".join(out).encode("utf-8")
        if not self._gzipped:
            self.chunks.append(chunk)
        elif self._gzip is None:
            # zlib.compress takes wbits only from Python 3.11: the same bytes, made as above.
            gzip_once = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
            self.chunks.append(gzip_once.compress(chunk) + gzip_once.flush())
        else:
            self.chunks.append(self._gzip.compress(chunk))
            self.chunks.append(self._gzip.flush())
        return b"".join(self.chunks)


_GZIP_WBITS = 31


def _text(registry: Collector, escaping: str, library: Encoder, gzipped: bool = False) -> bytes:
    metrics = list(registry.collect())
    try:
        return _render_text(metrics, escaping, gzipped)
    except Exception:  # _Unsupported, or an error the library reports its own way
        body = library(_Collected(metrics))
        return gzip.compress(body, compresslevel=GZIP_LEVEL) if gzipped else body


def _text_line(s: Sample, escaping: str) -> str:
    if escaping == om.ALLOWUTF8 and not _legacy_metric_name(s.name):
        raise _Unsupported
    timestamp = f" {int(float(s.timestamp) * 1000):d}" if s.timestamp is not None else ""
    prefix = _prefix(_text_prefixes, _metric_name, s, escaping)
    return f"{prefix}{_go_float(s.value)}{timestamp}\n"


def _render_text(metrics: Iterable[Any], escaping: str, gzipped: bool = False) -> bytes:
    out: list[str] = []
    written = _Written(gzipped)
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


# Row families (exporter.metrics.families): rendered from their rows, no Sample or label dict made.


# (sample name, label names, base width, escaping, with le) -> its line function
_line_functions: dict[tuple[str, tuple[str, ...], int, str, bool], Callable[..., str]] = {}


def _line_function(
    sample: str, names: tuple[str, ...], base: int, escaping: str, le: bool = False
) -> Callable[..., str]:
    """A function writing a segment's line: f(b, v, x), or with `le` f(b, v, le, x); `b` the
    segment's base label values, `v` the row's, `x` the value. The label pairs are in the
    order prometheus_client writes them (sorted by name). Compiled once per shape into one
    f-string (cheaper than str.format: docs/benchmarks.md, "Figures that were in code
    comments"); the generated source holds only parameter names and indexes, every name and
    quote is a constant passed in."""
    key = (sample, names, base, escaping, le)
    line = _line_functions.get(key)
    if line is not None:
        return line
    fields = [(name, f"b[{i}]" if i < base else f"v[{i - base}]") for i, name in enumerate(names)]
    if le:
        fields.append(("le", "le"))
    literals: list[str] = []
    expressions: list[str] = []
    text = sample
    for n, (name, field) in enumerate(sorted(fields)):
        text += ("{" if n == 0 else ",") + f'{_label_name(name, escaping)}="'
        literals.append(text)
        expressions.append(field)
        text = '"'
    text = (text + "} ") if fields else (sample + " ")
    literals.append(text)
    expressions.append("x")
    literals.append("\n")
    parameters = "b, v, le, x" if le else "b, v, x"
    constants = ", ".join(f"_{n}=_{n}" for n in range(len(literals)))
    body = (
        "".join(f"{{_{n}}}{{{e}}}" for n, e in enumerate(expressions)) + f"{{_{len(expressions)}}}"
    )
    source = f"def line({parameters}, *, {constants}):\n    return f'{body}'\n"
    namespace: dict[str, Any] = {f"_{n}": literal for n, literal in enumerate(literals)}
    exec(compile(source, "<exposition line>", "exec"), namespace)  # no input in the source
    if len(_line_functions) >= 1024:
        _line_functions.clear()
    made: Callable[..., str] = namespace["line"]
    _line_functions[key] = made
    return made


_first = operator.itemgetter(0)  # a row's label values


def _escaped(values: tuple[str, ...]) -> tuple[str, ...]:
    joined = "".join(values)
    if "\\" not in joined and "\n" not in joined and '"' not in joined:
        return values
    return tuple(_escape_value(v) for v in values)


def _escaped_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows with their label values escaped; the same list when none needs it (nearly
    always: one test over the segment instead of three per value)."""
    joined = "".join(map("".join, map(_first, rows)))
    if "\\" not in joined and "\n" not in joined and '"' not in joined:
        return rows
    return [(tuple(_escape_value(v) for v in row[0]), *row[1:]) for row in rows]


def _render_rows(
    out: list[str], metric: Any, name_of: Callable[[str], str], escaping: str, text: bool
) -> dict[str, list[str]]:
    """A row family's lines, as the library writes its samples. In the text format the gauge
    histogram's _gcount and _gsum lines are returned instead, for after the family (as
    prometheus_client moves them); in OpenMetrics a None value is an empty one."""
    base_name, kind = metric.name, metric.type
    known, go = _go_floats.get, _go_float
    moved: dict[str, list[str]] = {}
    counts = moved.setdefault("_gcount", []) if text else out
    sums = moved.setdefault("_gsum", []) if text else out
    shape: tuple[tuple[str, ...], int] | None = None
    lines: tuple[Callable[..., str], ...] = ()
    width = 0
    for names, raw_base, raw_rows in metric.segments:
        if (names, len(raw_base)) != shape:  # the next target's segment: most often the same
            shape = (names, len(raw_base))
            lines, width = _segment_lines(base_name, kind, names, len(raw_base), name_of, escaping)
        if raw_rows and set(map(len, map(_first, raw_rows))) != {width}:
            raise _Unsupported  # zip() would drop some
        base, rows = _escaped(raw_base), _escaped_rows(raw_rows)
        if kind == "gaugehistogram":
            bucket, count, total = lines
            for values, buckets, gsum in rows:
                for le, n in buckets:
                    out.append(bucket(base, values, _escape_value(le), known(n) or go(n)))
                counts.append(count(base, values, go(buckets[-1][1])))
                sums.append(total(base, values, _value(gsum, text)))
            continue
        (line,) = lines
        if text:
            out.extend([line(base, values, known(value) or go(value)) for values, value in rows])
        else:
            out.extend(
                [
                    line(base, values, "" if value is None else known(value) or go(value))
                    for values, value in rows
                ]
            )
    return {k: v for k, v in moved.items() if v}


def _segment_lines(
    base_name: str,
    kind: str,
    names: tuple[str, ...],
    base: int,
    name_of: Callable[[str], str],
    escaping: str,
) -> tuple[tuple[Callable[..., str], ...], int]:
    """The line functions of a segment's shape (its label names, its base's width), and how
    many label values each row has."""
    if len(set(names)) != len(names):
        raise _Unsupported  # a label dict would merge repeated names
    if kind == "gaugehistogram":
        if "le" in names:
            raise _Unsupported  # the bucket's own label would replace it
        return (
            _line_function(name_of(base_name + "_bucket"), names, base, escaping, True),
            _line_function(name_of(base_name + "_gcount"), names, base, escaping),
            _line_function(name_of(base_name + "_gsum"), names, base, escaping),
        ), len(names) - base
    sample = name_of(base_name + "_total" if kind == "counter" else base_name)
    return (_line_function(sample, names, base, escaping),), len(names) - base


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
