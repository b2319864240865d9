"""The server's `log_line_prefix` compiled into a pattern for its `stderr` lines, or refused
with the reason when its lines cannot be read back.

A prefix must carry the process id (`%p`: entries of one connection attempt are paired by it)
and a timestamp (`%m` or `%n` for setup time to the millisecond; `%t` counts failures but gives
no setup time); `%u %d %h` (or `%r`) add the user, database and client host to each failure.
Two escapes with nothing between them (`%u%d`) are refused: where one value ends and the next
begins cannot be told when names may hold any character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FREE = r".*?"  # names other people choose: any text, as little as lets the line match
_STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? ?[^ ]*"

# escape -> (group name or None, pattern)
_ESCAPES: dict[str, tuple[str | None, str]] = {
    "a": (None, _FREE),
    "u": ("user", _FREE),
    "d": ("database", _FREE),
    "r": ("hostport", r"[^ ]*"),
    "h": ("host", r"[^ ]*"),
    "L": (None, r"[^ ]*"),
    "b": (None, _FREE),
    "p": ("pid", r"\d+"),
    "P": (None, r"\d*"),
    "t": ("stamp", _STAMP),
    "m": ("stamp", _STAMP),
    "n": ("stamp", r"\d+(?:\.\d+)?"),
    "i": (None, _FREE),
    "e": ("sqlstate", r"[0-9A-Z]{5}"),
    "c": (None, r"[0-9a-f]+\.[0-9a-f]+"),
    "l": (None, r"\d+"),
    "s": (None, _STAMP),
    "v": (None, r"[^ ]*"),
    "x": (None, r"\d+"),
    "Q": (None, r"-?\d+"),
}
_TOKEN = re.compile(r"%(-?\d+)?(.)|%$|[^%]+", re.DOTALL)
SEVERITY = r"(?P<severity>[A-Z][A-Z0-9]*):  "


class PrefixError(ValueError):
    """The prefix cannot be parsed; the message names it and says why."""


@dataclass(frozen=True)
class CompiledPrefix:
    prefix: str
    pattern: re.Pattern[str]
    has_user: bool
    has_database: bool
    has_host: bool
    millisecond_time: bool  # setup time from timestamps needs %m or %n


def compile_prefix(prefix: str) -> CompiledPrefix:
    """The pattern of a whole line (prefix, severity, message) or PrefixError."""
    parts: list[str] = []
    named: set[str] = set()
    optional_from: int | None = None
    last_was_value = False
    escapes: list[str] = []
    for match in _TOKEN.finditer(prefix):
        token = match.group(0)
        if not token.startswith("%"):
            parts.append(re.escape(token))
            last_was_value = False
            continue
        if token == "%":
            raise PrefixError(f"log_line_prefix {prefix!r}: it ends with a lone '%'")
        padding, letter = match.group(1), match.group(2)
        if letter == "%":
            parts.append("%")
            last_was_value = False
            continue
        if letter == "q":
            optional_from = optional_from if optional_from is not None else len(parts)
            continue
        if letter not in _ESCAPES:
            raise PrefixError(f"log_line_prefix {prefix!r}: unknown escape %{letter}")
        if last_was_value:
            raise PrefixError(
                f"log_line_prefix {prefix!r}: %{escapes[-1]} and %{letter} are adjacent with"
                " nothing between them, so where one ends cannot be told"
            )
        name, pattern = _ESCAPES[letter]
        if name in named:
            name = None
        if name:
            named.add(name)
            pattern = f"(?P<{name}>{pattern})"
        else:
            pattern = f"(?:{pattern})"
        if padding:
            pattern = f" *{pattern} *"
        parts.append(pattern)
        escapes.append(letter)
        last_was_value = True
    if "pid" not in named:
        raise PrefixError(
            f"log_line_prefix {prefix!r}: it has no %p (process id), which pairs a"
            " connection's lines; use csvlog or jsonlog, or a prefix like '%m [%p] %q%u@%d %h '"
        )
    if "stamp" not in named:
        raise PrefixError(
            f"log_line_prefix {prefix!r}: it has no timestamp (%m, %n or %t); use a prefix"
            " like '%m [%p] %q%u@%d %h '"
        )
    if optional_from is not None:
        parts[optional_from:] = ["(?:" + "".join(parts[optional_from:]) + ")?"]
    body = "".join(parts)
    return CompiledPrefix(
        prefix=prefix,
        pattern=re.compile(f"^{body}{SEVERITY}(?P<message>.*)$", re.DOTALL),
        has_user="user" in named,
        has_database="database" in named,
        has_host="host" in named or "hostport" in named,
        millisecond_time=any(e in escapes for e in ("m", "n")),
    )
