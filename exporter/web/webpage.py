"""The frame of the exporter's HTML pages: self-contained (no script, no external asset: the
Content-Security-Policy forbids both), readable on a phone, every value escaped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from exporter import __version__
from exporter.escaping import html_text

HTML = "text/html; charset=utf-8"
# Nothing but the page itself and its inline style; never cached (it shows live sessions).
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_STYLE = """
body{font:15px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:12px;
color:#1d1d1f;background:#fafafa;max-width:1100px}
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
nav a,a.button{display:inline-block;margin:2px 6px 2px 0;padding:6px 10px;border:1px solid #999;
border-radius:6px;text-decoration:none;color:#0645ad;background:#fff}
nav a.current{background:#0645ad;color:#fff}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;background:#fff;font-size:.93em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;white-space:nowrap}
td.num,th.num{text-align:right}td.wrap{white-space:normal;min-width:14em}
.bad{color:#b00020;font-weight:600}.ok{color:#1b5e20}.muted{color:#666}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px 12px;min-width:9em}
.card b{display:block;font-size:1.4em}
.bar{display:inline-block;width:6em;height:.7em;background:#e0e0e0;border-radius:3px;
vertical-align:middle}.bar i{display:block;height:100%;border-radius:3px;background:#1b5e20}
.bar i.high{background:#e65100}.bar i.full{background:#b00020}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow-x:auto;font-size:.85em}
li{margin:.3em 0}
.esc{color:#b00020;border:1px dotted #b00020;font-family:monospace;font-size:.9em}
"""


def esc(value: Any) -> str:
    """Every value a page shows: HTML-escaped, controls and bidi overrides shown marked."""
    return html_text(value)


def page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
        f"{body}<p class='muted'>pg-connections-exporter {esc(__version__)}</p></body></html>"
    ).encode()


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    numeric: Iterable[int] = (),
    wrap: Iterable[int] = (),
    limit: int = 50,
    empty: str = "none",
) -> str:
    """An escaped table in a horizontally scrolling box; rows past `limit` are counted."""
    numeric, wrap = set(numeric), set(wrap)
    rows = list(rows)
    if not rows:
        return f"<p class='muted'>{esc(empty)}</p>"

    def cls(i: int) -> str:
        names = (["num"] if i in numeric else []) + (["wrap"] if i in wrap else [])
        return f" class='{' '.join(names)}'" if names else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows[:limit]
    )
    more = f"<p class='muted'>... and {len(rows) - limit} more</p>" if len(rows) > limit else ""
    return f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>{more}"


def bar(ratio: float | None) -> str:
    """A small utilization bar: green, orange from 80 %, red from 100 %."""
    if ratio is None:
        return ""
    level = "full" if ratio >= 1 else "high" if ratio >= 0.8 else ""
    width = max(0.0, min(ratio, 1.0)) * 100
    return f"<span class='bar'><i class='{level}' style='width:{width:.0f}%'></i></span>"
