"""PgBouncer's log file: `<time> [<pid>] <LEVEL> C-0x..: <db>/<user>@<addr>:<port> <message>`.

Each client PgBouncer refuses or drops has exactly one `closing because: <reason>` line, so
those are what is counted (the `pooler error` and `login failed` lines beside them are not
counted again); a server login that fails closes that server connection with `S-0x..: ...
closing because: login failed` (the `WARNING server login failed: ...` line before it carries
no database or user, and is not counted again). Checked against Debian's pgbouncer 1.18.
"""

from __future__ import annotations

import re

from exporter.logs.entry import LogEntry, clean
from exporter.logs.parser import LineParser, text

_LINE = re.compile(
    r"^(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? ?[^ ]*) \[(?P<pid>\d{1,11})\] "
    r"(?P<level>[A-Z]+) (?P<side>[CS])-0x[0-9a-f]+: "
    r"(?P<database>.*?)/(?P<user>.*?)@(?P<addr>[^ ]*) (?P<message>.*)$",
    re.DOTALL,
)
_UNKNOWN = ("(nodb)", "(nouser)")


class PgbouncerParser(LineParser):
    MARKERS = (b" closing because: ",)

    def _parse(self, line: bytes) -> LogEntry | None:
        match = _LINE.match(text(line))
        if match is None:
            self.counts.unparsed += 1
            return None
        database, user = match.group("database"), match.group("user")
        addr = match.group("addr")
        host = addr.rpartition(":")[0] if ":" in addr and not addr.startswith("unix") else addr
        return LogEntry(
            stamp=match.group("stamp"),
            pid=int(match.group("pid")),
            # The side (C client, S server) rides in the severity: the classifier reads it.
            severity=f"{match.group('side')}:{match.group('level')}",
            message=clean(match.group("message")),
            user="" if user in _UNKNOWN else clean(user),
            database="" if database in _UNKNOWN else clean(database),
            host=clean(host),
        )
