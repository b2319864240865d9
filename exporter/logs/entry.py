"""One log entry, as every parser gives it: only the fields the classifier reads."""

from __future__ import annotations

import calendar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A parsed entry; text fields are "" where the line does not carry them. `stamp` is the
    line's timestamp as written (read into seconds only where needed: `seconds_of`)."""

    stamp: str
    pid: int | None
    severity: str
    message: str
    sqlstate: str = ""
    user: str = ""
    database: str = ""
    host: str = ""


def clean(text: str) -> str:
    """A field as a label value: NUL bytes, which some consumers cut strings at, replaced."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def host_of(connection_from: str) -> str:
    """The client host of csvlog's `host:port` (or `[local]`, or an IPv6 `::1:port`)."""
    if connection_from.startswith("[") or ":" not in connection_from:
        return connection_from
    host, _, port = connection_from.rpartition(":")
    return host if port.isdigit() else connection_from


def seconds_of(stamp: str) -> float | None:
    """`2026-12-07 02:48:52.015 UTC` (%m, csvlog, jsonlog), `... 02:48:52 UTC` (%t) or an
    epoch `1765075732.015` (%n) as seconds; the zone is ignored (only differences between two
    lines of one process are taken, a DST change between them is off by an hour and dropped by
    the caller's bounds). None when it is none of these."""
    try:
        if len(stamp) >= 19 and stamp[4] == "-" and stamp[10] == " ":
            whole = calendar.timegm(
                (
                    int(stamp[0:4]),
                    int(stamp[5:7]),
                    int(stamp[8:10]),
                    int(stamp[11:13]),
                    int(stamp[14:16]),
                    int(stamp[17:19]),
                )
            )
            fraction = stamp[19:].split(" ", 1)[0]
            return whole + (
                float(fraction) if fraction.startswith(".") and len(fraction) > 1 else 0.0
            )
        return float(stamp) if stamp[:1].isdigit() else None
    except (ValueError, OverflowError, IndexError):
        return None
