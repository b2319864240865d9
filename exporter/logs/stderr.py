"""PostgreSQL's `stderr` format (what the logging collector writes to `.log` files) read with
the server's own `log_line_prefix` (`prefix.compile_prefix`).

An entry's own continuation lines start with a tab (the server indents every further line of
a message), and its DETAIL, HINT, STATEMENT, CONTEXT lines carry the prefix with their own
label; neither is an entry, so neither is counted.
"""

from __future__ import annotations

from exporter.logs.entry import LogEntry, clean, host_of
from exporter.logs.lines import MAX_LINE_BYTES
from exporter.logs.parser import LineParser, text
from exporter.logs.prefix import CompiledPrefix

_ENTRY_SEVERITIES = frozenset(
    [
        *("DEBUG", "DEBUG1", "DEBUG2", "DEBUG3", "DEBUG4", "DEBUG5", "INFO", "NOTICE"),
        *("WARNING", "ERROR", "LOG", "FATAL", "PANIC"),
    ]
)


class StderrParser(LineParser):
    MARKERS = (b"FATAL:  ", b":  connection ", b"could not fork")

    def __init__(self, prefix: CompiledPrefix, max_line: int = MAX_LINE_BYTES) -> None:
        super().__init__(max_line)
        self.prefix = prefix

    def _parse(self, line: bytes) -> LogEntry | None:
        if line[:1] == b"\t":
            return None  # a continuation line: part of the entry before it
        match = self.prefix.pattern.match(text(line).rstrip("\r"))
        if match is None:
            self.counts.unparsed += 1
            return None
        severity = match.group("severity")
        if severity not in _ENTRY_SEVERITIES:
            return None
        groups = match.groupdict()
        pid = groups.get("pid")
        host = groups.get("host") or ""
        if not host and groups.get("hostport"):
            host = _host_of_hostport(groups["hostport"])
        return LogEntry(
            stamp=groups.get("stamp") or "",
            pid=int(pid) if pid and len(pid) < 12 else None,
            severity=severity,
            message=clean(match.group("message")),
            sqlstate=groups.get("sqlstate") or "",
            user=clean(groups.get("user") or ""),
            database=clean(groups.get("database") or ""),
            host=clean(host),
        )


def _host_of_hostport(value: str) -> str:
    """%r is `host(port)` or `[local]`."""
    if value.endswith(")") and "(" in value:
        return value[: value.rindex("(")]
    return host_of(value) if value.startswith("[") else value
