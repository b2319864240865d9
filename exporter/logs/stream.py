"""One target's log stream: pieces from its source parsed, classified and counted, and the
counts as metric families (a client_python custom collector's `collect()`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric

from exporter.logs.classify import (
    PG_REASONS,
    PGBOUNCER_REASONS,
    Event,
    Failure,
    PgbouncerClassifier,
    PostgresClassifier,
    SetupTime,
)
from exporter.logs.counters import MAX_SERIES, FailureCounts, SetupTimes
from exporter.logs.csvlog import CsvlogParser
from exporter.logs.jsonlog import JsonlogParser
from exporter.logs.lines import MAX_LINE_BYTES
from exporter.logs.parser import LineParser
from exporter.logs.pgbouncer import PgbouncerParser
from exporter.logs.prefix import compile_prefix
from exporter.logs.source import Piece, SourceCounts
from exporter.logs.stderr import StderrParser

LogFormat = Literal["csvlog", "jsonlog", "stderr", "pgbouncer"]
# The files of each format in a log directory (the server writes `.csv` and `.json` beside
# the `.log` of log_filename), when the configuration does not say.
DEFAULT_PATTERNS: dict[str, str] = {
    "csvlog": "*.csv",
    "jsonlog": "*.json",
    "stderr": "*.log",
    "pgbouncer": "*.log",
}


def parser_for(
    log_format: LogFormat, log_line_prefix: str = "", max_line: int = MAX_LINE_BYTES
) -> LineParser:
    """The parser of a format; `stderr` compiles the server's prefix (PrefixError if it
    cannot be read back)."""
    if log_format == "csvlog":
        return CsvlogParser(max_line)
    if log_format == "jsonlog":
        return JsonlogParser(max_line)
    if log_format == "pgbouncer":
        return PgbouncerParser(max_line)
    return StderrParser(compile_prefix(log_line_prefix), max_line)


class LogStream:
    """Feed it a source's pieces (`feed`); register it in a registry (`collect`). Reading it
    changes nothing, so any number of Prometheus servers see the same monotonic totals."""

    def __init__(
        self,
        labels: Mapping[str, str],
        log_format: LogFormat,
        source_counts: SourceCounts,
        *,
        log_line_prefix: str = "",
        max_series: int = MAX_SERIES,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self.label_names = tuple(labels)
        self.label_values = tuple(labels.values())
        self.log_format = log_format
        self.max_line = max_line
        self.parser: LineParser
        self.classifier: PostgresClassifier | PgbouncerClassifier
        self._use_parser(parser_for(log_format, log_line_prefix, max_line))
        self.source = source_counts
        self.failures = FailureCounts(max_series)
        self.setup = SetupTimes()

    def use_log_line_prefix(self, log_line_prefix: str) -> None:
        """For `stderr` before the first feed: the server's prefix, once read over the
        connection (PrefixError if it cannot be read back; the stream is unchanged then)."""
        if self.log_format != "stderr":
            raise ValueError("log_line_prefix is for format stderr only")
        self._use_parser(parser_for("stderr", log_line_prefix, self.max_line))

    def _use_parser(self, parser: LineParser) -> None:
        self.parser = parser
        if self.log_format == "pgbouncer":
            self.classifier = PgbouncerClassifier()
        else:
            precise = getattr(getattr(parser, "prefix", None), "millisecond_time", True)
            self.classifier = PostgresClassifier(setup_from_timestamps=precise)

    def feed(self, pieces: Iterable[Piece]) -> list[Event]:
        """Parse, classify and count; the events are returned for the caller's logs or tests."""
        events: list[Event] = []
        parser, classify = self.parser, self.classifier.classify
        for piece in pieces:
            entries = []
            if piece.new_file:
                entries.extend(parser.end_of_stream())
            if piece.resync:
                parser.resync()
            entries.extend(parser.feed(piece.data))
            for entry in entries:
                events.extend(classify(entry))
        for event in events:
            if isinstance(event, Failure):
                self.failures.add(event)
            elif isinstance(event, SetupTime):
                self.setup.add(event)
        return events

    def collect(self) -> Iterator[Metric]:
        """Safe beside a `feed` on another thread: it reads copies of the counts (a dict's
        copy is taken whole under the GIL), never a dict while it grows."""
        yield from self._failure_families()
        yield from self._reader_families()

    def _failure_families(self) -> Iterator[Metric]:
        names, base = self.label_names, self.label_values
        if self.log_format == "pgbouncer":
            family = CounterMetricFamily(
                "pgbouncer_client_failures_total",
                "Clients PgBouncer refused or dropped, counted from its log, by reason"
                " (max_client_conn, query_wait_timeout, query_timeout, client_login_timeout,"
                " login_failed, no_such_database, server_unavailable, server_login_failing;"
                " server_login_failed for its own logins to PostgreSQL); past"
                f" {self.failures.max_series} label sets, user, database and client_addr are"
                ' "other".',
                labels=(*names, "reason", "user", "database", "client_addr"),
            )
        else:
            family = CounterMetricFamily(
                "pg_connection_failures_total",
                "Connection attempts the server refused, counted from its log, by reason"
                " (too_many_clients, reserved_slots_only, database_limit, role_limit,"
                " authentication_failed, no_hba_entry, hba_rejected, role_does_not_exist,"
                " database_does_not_exist, starting_up, in_recovery, shutting_down,"
                " authentication_timeout, could_not_fork, other); past"
                f" {self.failures.max_series} label sets, usename, datname and client_addr are"
                ' "other".',
                labels=(*names, "reason", "usename", "datname", "client_addr"),
            )
        counts = self.failures.counts.copy()
        # Every reason from 0 under empty user, database and client labels (where a refusal
        # whose line lacks them is counted), so that increase() sees that reason's first one.
        reasons = PGBOUNCER_REASONS if self.log_format == "pgbouncer" else PG_REASONS
        for reason in reasons:
            counts.setdefault((reason, "", "", ""), 0)
        for key, count in sorted(counts.items()):
            family.add_metric([*base, *key], float(count))
        yield family
        if self.log_format == "pgbouncer":
            return
        histogram = HistogramMetricFamily(
            "pg_connection_setup_seconds",
            "Connection setup time from the server's log: total, fork and authentication from"
            " PostgreSQL 18's log_connections = setup_durations; received_to_authorized from the"
            " timestamps of log_connections' `connection received` and `connection authorized`"
            " lines of one process.",
            labels=(*names, "phase"),
        )
        for phase, h in sorted(self.setup.by_phase.copy().items()):
            histogram.add_metric([*base, phase], h.cumulative(), h.sum)
        yield histogram

    def _reader_families(self) -> Iterator[Metric]:
        names, base = self.label_names, self.label_values
        source, parser = self.source, self.parser
        up = GaugeMetricFamily(
            "pg_connections_exporter_log_up",
            "1 if the target's log could be read at the last attempt, 0 if it is missing or"
            " unreadable.",
            labels=names,
        )
        up.add_metric(base, 1.0 if source.up else 0.0)
        yield up
        read = CounterMetricFamily(
            "pg_connections_exporter_log_read_bytes_total",
            "Bytes of the target's log read.",
            labels=names,
        )
        read.add_metric(base, float(source.bytes_read))
        yield read
        lines = CounterMetricFamily(
            "pg_connections_exporter_log_lines_total",
            "Lines of the target's log read.",
            labels=names,
        )
        lines.add_metric(base, float(parser.counts.lines))
        yield lines
        skipped = CounterMetricFamily(
            "pg_connections_exporter_log_skipped_bytes_total",
            "Bytes of the target's log not read, by reason (start: written before the exporter"
            " started; behind: skipped to catch up with the server; long_line: lines over 1 MiB"
            " and cut lines).",
            labels=(*names, "reason"),
        )
        skipped_bytes = {**source.skipped.copy(), "long_line": parser.skipped_bytes}
        for reason, size in sorted(skipped_bytes.items()):
            skipped.add_metric([*base, reason], float(size))
        yield skipped
        unparsed = CounterMetricFamily(
            "pg_connections_exporter_log_skipped_lines_total",
            "Lines of the target's log not counted, by reason (too_long: over 1 MiB; unparsed:"
            " a line that looked like a connection entry but did not parse).",
            labels=(*names, "reason"),
        )
        unparsed.add_metric([*base, "too_long"], float(parser.long_lines))
        unparsed.add_metric([*base, "unparsed"], float(parser.counts.unparsed))
        yield unparsed
        rotations = CounterMetricFamily(
            "pg_connections_exporter_log_rotations_total",
            "Times the reader followed the log to another file (next_file) or to the start of a"
            " truncated one (truncated).",
            labels=(*names, "how"),
        )
        for how, count in sorted(source.rotations.copy().items()):
            rotations.add_metric([*base, how], float(count))
        yield rotations
        errors = CounterMetricFamily(
            "pg_connections_exporter_log_errors_total",
            "Attempts to read the target's log that failed, by reason (missing, permission,"
            " error; remote: function_missing, timeout; stderr: prefix, a log_line_prefix the"
            " reader cannot parse).",
            labels=(*names, "reason"),
        )
        for reason, count in sorted(source.errors.copy().items()):
            errors.add_metric([*base, reason], float(count))
        yield errors
