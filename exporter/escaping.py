"""One escaping rule per kind of output, for names other people choose.

Any client sets its application_name and query text; anyone with CREATEROLE or CREATEDB names
roles and databases, with newlines and any character the server's encoding allows; a client's
host name comes from whoever runs its DNS. Whatever the exporter shows goes through the rule of
its output here, so a name is text and never a terminal escape, a forged log field or line, or
markup. (The alert descriptions and the notification templates, Go templates evaluated by
Prometheus and Alertmanager, have their rules in scripts/render_alerts.py and
alerts/notifications.tmpl.)

Characters a reader cannot see or that act on what displays them (C0 and C1 controls, DEL,
bidirectional overrides and isolates, line and paragraph separators, lone surrogates) are
shown as `\\n`, `\\t`, `\\r`, `\\xNN`, `\\uNNNN`: visible, and never raw.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

# Bidirectional marks, embeddings, overrides and isolates: they reorder what follows them.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# Controls (C0, DEL, C1), bidi controls, line and paragraph separators, lone surrogates.
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\u2028\u2029\ud800-\udfff]")
# What a bare logfmt value may hold; anything else is quoted.
_LOGFMT_BARE = re.compile(r'[^\s="\\]+')
_LOGFMT_KEY_BAD = re.compile(r"[^A-Za-z0-9_.:-]")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every unsafe character written as a visible escape; the rest unchanged."""
    return _UNSAFE.sub(_escape_char, text)


def terminal(value: Any) -> str:
    """For a terminal (diagnose, --check-config, CLI messages): one line of inert text."""
    return visible("" if value is None else str(value))


def logfmt_key(key: str) -> str:
    """A logfmt key: the characters a key may hold, anything else as `_`."""
    return _LOGFMT_KEY_BAD.sub("_", key) or "_"


def logfmt_value(value: Any) -> str:
    """A logfmt value: bare when it is one plain word, else quoted with `\\` and `"` escaped
    and every unsafe character visible, so that it can neither end its field nor its line."""
    text = "" if value is None else str(value)
    if _LOGFMT_BARE.fullmatch(text) and not _UNSAFE.search(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{visible(escaped)}"'


def _no_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return re.sub("[\ud800-\udfff]", _escape_char, value)
    if isinstance(value, dict):
        return {_no_lone_surrogates(str(k)): _no_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_lone_surrogates(v) for v in value]
    return value


def json_text(value: Any, indent: int | None = None) -> str:
    """JSON (diagnose --format json, JSON logs): always valid, ASCII only, so every control is
    a `\\uNNNN` escape and a byte that was not UTF-8 is the text `\\xNN`."""
    return json.dumps(_no_lone_surrogates(value), indent=indent, default=str, ensure_ascii=True)


def html_text(value: Any) -> str:
    """For an HTML page: HTML-escaped, with unsafe characters shown as a marked escape (a
    `<span class=esc>`), so that a name can neither be markup nor reorder or hide text."""
    text = "" if value is None else str(value)
    parts = []
    last = 0
    for match in _UNSAFE.finditer(text):
        parts.append(html.escape(text[last : match.start()], quote=True))
        # Unquoted class: inside an attribute value this is text, and ends nothing.
        parts.append(f"<span class=esc>{html.escape(_escape_char(match))}</span>")
        last = match.end()
    parts.append(html.escape(text[last:], quote=True))
    return "".join(parts)
