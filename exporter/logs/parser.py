"""What every log parser shares: bytes in through a bounded `LineSplitter`, entries out,
counts of what was read and skipped; never an exception for any input."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.logs.entry import LogEntry
from exporter.logs.lines import MAX_LINE_BYTES, LineSplitter


@dataclass
class ParseCounts:
    """Monotonic counts for the reader's self-metrics."""

    lines: int = 0
    unparsed: int = 0  # lines that looked like a connection entry but did not parse


class LineParser:
    """Splits the bytes into lines and hands each to `_parse`; subclasses give `_parse` and, to
    skip the lines that cannot matter cheaply (a server logging every statement), `MARKERS`:
    a line containing none of them is counted and dropped before it is decoded."""

    MARKERS: tuple[bytes, ...] = ()

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.splitter = LineSplitter(max_line)
        self.counts = ParseCounts()

    @property
    def long_lines(self) -> int:
        return self.splitter.long_lines

    @property
    def skipped_bytes(self) -> int:
        return self.splitter.skipped_bytes

    def feed(self, data: bytes) -> list[LogEntry]:
        return self._lines(self.splitter.feed(data))

    def resync(self) -> None:
        self.splitter.resync()

    def end_of_stream(self) -> list[LogEntry]:
        last = self.splitter.end_of_stream()
        return self._lines([last]) if last is not None else []

    def _lines(self, lines: list[bytes]) -> list[LogEntry]:
        self.counts.lines += len(lines)
        markers = self.MARKERS
        out: list[LogEntry] = []
        for line in lines:
            if markers and not any(m in line for m in markers):
                continue
            entry = self._parse(line)
            if entry is not None:
                out.append(entry)
        return out

    def _parse(self, line: bytes) -> LogEntry | None:
        raise NotImplementedError


def text(data: bytes) -> str:
    """Log bytes as text: invalid UTF-8 (a SQL_ASCII database's names) as U+FFFD."""
    return data.decode("utf-8", "replace")
