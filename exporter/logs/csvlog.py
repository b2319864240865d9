"""PostgreSQL's `csvlog`: one CSV record an entry, and a record spans lines when a quoted
field (a message, a statement, a name) holds a newline. A record ends at a newline outside
quotes: doubled quotes inside a field keep the count even, so counting quotes finds it."""

from __future__ import annotations

import csv

from exporter.logs.entry import LogEntry, clean, host_of
from exporter.logs.jsonlog import PG_MARKERS
from exporter.logs.lines import MAX_LINE_BYTES
from exporter.logs.parser import LineParser, text

# The columns every major 12-18 writes first (13 and 14 appended theirs at the end).
_TIME, _USER, _DB, _PID, _FROM = 0, 1, 2, 3, 4
_SEVERITY, _SQLSTATE, _MESSAGE = 11, 12, 13


class CsvlogParser(LineParser):
    """Lines joined into records (a record is bounded like a line: over the cap it is skipped
    whole, its quotes still followed so the next record is found)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        super().__init__(max_line)
        self._record: list[bytes] = []
        self._record_len = 0
        self._in_quotes = False
        self._dropping = False
        self.long_records = 0

    @property
    def long_lines(self) -> int:
        return self.splitter.long_lines + self.long_records

    def resync(self) -> None:
        super().resync()
        self._reset()

    def end_of_stream(self) -> list[LogEntry]:
        entries = super().end_of_stream()
        self._reset()
        return entries

    def _reset(self) -> None:
        self._record = []
        self._record_len = 0
        self._in_quotes = False
        self._dropping = False

    def _lines(self, lines: list[bytes]) -> list[LogEntry]:
        self.counts.lines += len(lines)
        out: list[LogEntry] = []
        for line in lines:
            quotes = line.count(b'"')
            if not self._in_quotes and not (quotes & 1):
                record = line  # the common case: a record on one line
            else:
                if quotes & 1:
                    self._in_quotes = not self._in_quotes
                if not self._dropping:
                    self._record.append(line)
                    self._record_len += len(line) + 1
                    if self._record_len > self.splitter.max_line:
                        self.long_records += 1
                        self._record = []
                        self._record_len = 0
                        self._dropping = True
                if self._in_quotes:
                    continue
                dropped = self._dropping
                record = b"\n".join(self._record)
                self._reset()
                if dropped:
                    continue
            if any(m in record for m in PG_MARKERS):
                entry = self._parse(record)
                if entry is not None:
                    out.append(entry)
        return out

    def _parse(self, line: bytes) -> LogEntry | None:
        try:
            fields = next(csv.reader([text(line)], strict=True))
        except (csv.Error, StopIteration):
            self.counts.unparsed += 1
            return None
        if len(fields) <= _MESSAGE:
            self.counts.unparsed += 1
            return None
        pid = fields[_PID]
        return LogEntry(
            stamp=fields[_TIME],
            pid=int(pid) if pid.isascii() and pid.isdigit() and len(pid) < 12 else None,
            severity=fields[_SEVERITY],
            message=clean(fields[_MESSAGE]),
            sqlstate=fields[_SQLSTATE],
            user=clean(fields[_USER]),
            database=clean(fields[_DB]),
            host=clean(host_of(fields[_FROM])),
        )
