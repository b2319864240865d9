"""PostgreSQL's `jsonlog` (15+): one JSON object a line; the server escapes newlines in
values, so a line is an entry and no name inside it can start another."""

from __future__ import annotations

import json

from exporter.logs.entry import LogEntry, clean
from exporter.logs.parser import LineParser, text

# Entries the classifier reads: FATALs and the `connection ...` and fork LOG lines.
PG_MARKERS = (b"FATAL", b"connection ", b"could not fork")


def _str(obj: dict[str, object], key: str) -> str:
    value = obj.get(key)
    return clean(value) if isinstance(value, str) else ""


class JsonlogParser(LineParser):
    MARKERS = PG_MARKERS

    def _parse(self, line: bytes) -> LogEntry | None:
        try:
            obj = json.loads(text(line))
        except (ValueError, RecursionError):
            self.counts.unparsed += 1
            return None
        if not isinstance(obj, dict):
            self.counts.unparsed += 1
            return None
        pid = obj.get("pid")
        return LogEntry(
            stamp=_str(obj, "timestamp"),
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            severity=_str(obj, "error_severity"),
            message=_str(obj, "message"),
            sqlstate=_str(obj, "state_code"),
            user=_str(obj, "user"),
            database=_str(obj, "dbname"),
            host=_str(obj, "remote_host"),
        )
