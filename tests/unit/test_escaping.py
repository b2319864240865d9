"""Each escaping rule of exporter/escaping.py over arbitrary strings (hypothesis): what comes out
holds no raw control, bidi override or lone surrogate, cannot forge a line, a field or markup,
and keeps the text readable. Plus the log formatters over arbitrary values."""

from __future__ import annotations

import html.parser
import json
import logging
import re

from hypothesis import given
from hypothesis import strategies as st

from exporter.escaping import html_text, json_text, logfmt_value, terminal, visible
from exporter.logsetup import JsonFormatter, LogfmtFormatter

# Any code point, lone surrogates included (what surrogateescape makes of bytes that are not
# UTF-8), weighted towards the characters that matter here.
HOSTILE = st.sampled_from(
    list("\x00\x07\x08\t\n\r\x1b\x7f\x85\x9b\u202e\u2066\u2028\u2029\udcff\\\"'=`<>& ")
)
TEXT = st.text(st.one_of(st.characters(codec=None), HOSTILE))
# What a terminal, a log reader or a page acts on: C0, DEL, C1, bidi controls, line and
# paragraph separators, lone surrogates. Written out here, not imported from the module.
RAW = re.compile(
    "[\x00-\x1f\x7f\x80-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]"
)


@given(TEXT)
def test_terminal_text_holds_nothing_a_terminal_acts_on(text: str) -> None:
    shown = terminal(text)
    assert not RAW.search(shown)
    shown.encode("utf-8")  # printable as UTF-8, whatever came in
    assert terminal(shown) == shown  # nothing left to escape


@given(TEXT)
def test_terminal_text_changes_only_what_it_must(text: str) -> None:
    """Every safe character is kept in order; each unsafe one becomes its escape."""
    short = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    expected = "".join(
        c
        if not RAW.match(c)
        else short.get(c)
        or (
            f"\\x{ord(c) - 0xDC00:02x}"
            if 0xDC80 <= ord(c) <= 0xDCFF
            else f"\\x{ord(c):02x}"
            if ord(c) < 0x100
            else f"\\u{ord(c):04x}"
        )
        for c in text
    )
    assert visible(text) == expected


def test_terminal_examples() -> None:
    assert terminal("\x1b]52;c;ZXZpbA==\x07") == "\\x1b]52;c;ZXZpbA==\\x07"
    assert terminal("admin\u202egnp.exe") == "admin\\u202egnp.exe"
    assert terminal("a\nDo: DROP") == "a\\nDo: DROP"
    assert terminal("bad\udcffname") == "bad\\xffname"
    assert terminal("storefront") == "storefront"
    assert terminal(None) == ""


def parse_logfmt(line: str) -> list[tuple[str, str]]:
    """A strict logfmt reader: key=bare or key="quoted with \\\\ and \\" escapes"."""
    pairs = []
    pos = 0
    pattern = re.compile(r'([^\s=]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s="\\]+))(?: |$)')
    while pos < len(line):
        m = pattern.match(line, pos)
        assert m, f"not logfmt at {pos}: {line!r}"
        value = m.group(3) if m.group(3) is not None else re.sub(r"\\(.)", r"\1", m.group(2))
        pairs.append((m.group(1), value))
        pos = m.end()
    return pairs


@given(TEXT)
def test_a_logfmt_value_is_one_field_on_one_line(text: str) -> None:
    line = f"a=1 v={logfmt_value(text)} z=2"
    assert not RAW.search(line)
    pairs = parse_logfmt(line)
    assert [k for k, _ in pairs] == ["a", "v", "z"]
    if not RAW.search(text):  # text without unsafe characters reads back exactly
        assert pairs[1][1] == text


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("exporter.test", logging.WARNING, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


@given(TEXT, TEXT)
def test_log_lines_cannot_gain_a_field_or_a_line(msg: str, name: str) -> None:
    logfmt = LogfmtFormatter().format(record(msg, target=name, error=name))
    assert "\n" not in logfmt and not RAW.search(logfmt)
    assert [k for k, _ in parse_logfmt(logfmt)] == [
        "ts",
        "level",
        "logger",
        "msg",
        "target",
        "error",
    ]
    line = JsonFormatter().format(record(msg, target=name))
    assert "\n" not in line and not RAW.search(line)
    doc = json.loads(line)
    assert list(doc) == ["ts", "level", "logger", "msg", "target"]
    if not RAW.search(name):
        assert doc["target"] == name


@given(
    st.recursive(TEXT | st.integers() | st.none(), lambda c: st.lists(c) | st.dictionaries(TEXT, c))
)
def test_json_is_always_valid_and_ascii(value: object) -> None:
    text = json_text({"v": value}, indent=2)
    text.encode("ascii")
    # Strict: no escape of a lone surrogate either (RFC 8259 section 8.2; Go, for one, would
    # read it as U+FFFD): every string read back encodes as UTF-8.
    json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")


class _Collect(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text += data


@given(TEXT)
def test_html_text_is_text_with_only_marked_escapes(text: str) -> None:
    shown = html_text(text)
    assert not RAW.search(shown)
    parser = _Collect()
    parser.feed(f"<td title='{shown}'>{shown}</td>")
    parser.close()
    # The only elements: the cell, and one marked escape per unsafe character.
    assert parser.tags[0] == ("td", [("title", parser.tags[0][1][0][1])])
    assert all(t == ("span", [("class", "esc")]) for t in parser.tags[1:])
    assert len(parser.tags) - 1 == len(RAW.findall(text))
    assert parser.text == visible(text)


def test_html_examples() -> None:
    assert html_text("<script>&'\"") == "&lt;script&gt;&amp;&#x27;&quot;"
    assert html_text("a\u202eb") == "a<span class=esc>\\u202e</span>b"
