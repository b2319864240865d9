"""/sessions: the `diagnose` report in a browser, through each target's held connection.

It borrows the held connection exactly as a scrape does (the pool of one hands it to one user
at a time, so a page and a scrape take turns; the page waits at most the connect timeout), so
it works when nobody else can get in and never opens a second connection. All its statements
together are bounded by `sessions_page.timeout` (and each by the target's lock_timeout), and a
watchdog cuts a server that stops answering. One page
is built at a time, and a page built less than a second ago is served again: a refresh storm
from a team of on-call phones costs the server one diagnosis per second at most.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

import psycopg

from exporter.config.model import Config
from exporter.db.connection import NotConnected
from exporter.diagnose.analysis import (
    Criteria,
    Facts,
    Report,
    analyze,
    format_bytes,
    format_seconds,
    gather_async,
    holder_cells,
    session_cells,
)
from exporter.kinds import PGBOUNCER
from exporter.kinds.poolerbound import ServerView, ordinary_slots, server_view
from exporter.metrics.poolerview import bounds_of
from exporter.scrape.target import TargetScraper
from exporter.web.webpage import HEADERS, HTML, bar, esc, page, table

log = logging.getLogger(__name__)

# Seconds past the statement timeout after which a silent server's connection is cut.
SILENT_GRACE = 5.0
# A page this fresh is served again instead of asking the server.
REUSE_SECONDS = 1.0

Response = tuple[int, str, bytes, dict[str, str]]


class SessionsPage:
    """The handler of /sessions; reads the config and targets in force at each request."""

    def __init__(
        self,
        config: Callable[[], Config],
        targets: Callable[[], Sequence[TargetScraper]],
        run: Callable[[Coroutine[Any, Any, Facts]], Facts],
    ) -> None:
        """`run` runs a coroutine on the loop the targets' connections live on (Scraper.call)
        and waits for it: the page is built on an HTTP worker."""
        self._run = run
        self._config = config
        self._targets = targets
        self._lock = threading.Lock()
        self._recent: dict[str, tuple[float, bytes]] = {}

    def __call__(self, query: str) -> Response:
        config = self._config()
        settings = config.sessions_page
        if not settings.enabled:
            return (
                404,
                "text/plain; charset=utf-8",
                b"the sessions page is off: set sessions_page.enabled in the configuration\n",
                {},
            )
        targets = [t for t in self._targets() if t.kind.policy.offers_sessions]
        if not targets:
            return 404, "text/plain; charset=utf-8", b"no PostgreSQL target\n", {}
        wanted = (parse_qs(query).get("target") or [targets[0].target.name])[0]
        target = next((t for t in targets if t.target.name == wanted), None)
        if target is None:
            body = page("Unknown target", f"<h1>No PostgreSQL target named {esc(wanted)}</h1>")
            return 404, HTML, body + _nav(targets, None).encode(), HEADERS
        # One page at a time; the wait is bounded by what a borrow may take.
        if not self._lock.acquire(timeout=target.target.connect_timeout + settings.timeout):
            return 503, "text/plain; charset=utf-8", b"busy: try again\n", {"Retry-After": "1"}
        try:
            recent = self._recent.get(wanted)
            if recent is not None and time.monotonic() - recent[0] < REUSE_SECONDS:
                return 200, HTML, recent[1], HEADERS
            try:
                body = self._build(config, target, targets, self._targets())
            except Exception:
                # A bug must cost this page, never the exporter's answer to the request.
                log.exception("sessions page failed", extra={"target": wanted})
                return 500, "text/plain; charset=utf-8", b"internal error (see the log)\n", {}
            self._recent = {wanted: (time.monotonic(), body)}
            return 200, HTML, body, HEADERS
        finally:
            self._lock.release()

    def _build(
        self,
        config: Config,
        target: TargetScraper,
        targets: Sequence[TargetScraper],
        every_target: Sequence[TargetScraper] = (),
    ) -> bytes:
        settings = config.sessions_page
        criteria = Criteria(
            idle_seconds=settings.idle_age, long_query_seconds=settings.long_query_age
        )
        name = target.target.name
        try:
            facts = self._run(_borrow_and_gather(target, settings.timeout, settings.query_text))
        except NotConnected:
            failure = target.connection.last_failure
            error = (
                f"no connection to the target ({failure.reason})"
                if failure
                else ("the held connection is busy or not open yet")
            )
            return _error_page(name, targets, error)
        except psycopg.errors.LockNotAvailable:
            return _error_page(
                name,
                targets,
                "waited past lock_timeout for a lock (another session holds a catalog lock, "
                "e.g. an uncommitted ALTER ROLE): try again",
            )
        except psycopg.errors.QueryCanceled:
            return _error_page(name, targets, f"the server did not answer in {settings.timeout:g}s")
        except psycopg.Error as exc:
            log.warning("sessions page query failed", extra={"target": name, "error": str(exc)})
            return _error_page(name, targets, f"query failed: {type(exc).__name__}")
        report = analyze(facts, criteria)
        body = render(report, settings.query_text)
        view = _poolers_view(target, report.slots, every_target)
        if view is not None:
            body += render_poolers(view)
        return page(f"Sessions: {name}", _nav(targets, name) + body)


def _poolers_view(
    target: TargetScraper, slots: dict[str, Any], every_target: Sequence[TargetScraper]
) -> ServerView | None:
    """The exporter's PgBouncer targets pointing at this server, from their last scrape, set
    against the slots just read; None when the exporter scrapes no PgBouncer."""
    poolers = [t for t in every_target if t.kind.name == PGBOUNCER.name]
    if not poolers:
        return None
    bounds = {
        t.target.name: b
        for t in poolers
        if t.last_result is not None and (b := bounds_of(t.last_result)) is not None
    }
    return server_view(
        target.target.server_label(), ordinary_slots(slots), int(slots["used"]), bounds
    )


def _exists(exists: bool) -> str:
    return "yes" if exists else "not yet"


def _figure(value: float) -> str:
    return "no limit" if math.isinf(value) else f"{value:g}"


def render_poolers(view: ServerView) -> str:
    """The section "Poolers against the server" (the same figures as the recording rules)."""
    ratio = view.overcommit_ratio
    out = [
        f"<h2 id='poolers'>Poolers against the server {esc(view.server)}</h2>",
        "<div class='cards'>",
        f"<div class='card'>poolers may open<b id='pooler-bound'>{_figure(view.bound)}</b></div>",
        f"<div class='card'>slots left after {view.direct:g} direct"
        f"<b id='slots-left'>{view.slots_after_direct:g} / {view.ordinary_slots}</b></div>",
    ]
    if ratio is not None:
        cls = "bad" if ratio > 1 else "ok"
        shown = "no limit" if math.isinf(ratio) else f"{ratio:.0%}"
        out.append(f"<div class='card'>overcommit<b id='overcommit' class='{cls}'>{shown}</b>")
        out.append("</div>")
    out.append("</div>")
    if ratio is not None and ratio > 1:
        out.append(
            "<p class='bad'>The poolers' settings let them open more server connections than "
            "the slots left: lower pool_size and reserve_pool of the biggest pools, or cap them "
            "with max_db_connections or max_user_connections "
            "(runbook PgBouncerPoolsOvercommitServer).</p>"
        )
    out.append(
        "<div id='poolers-table'>"
        + table(
            ["pooler", "may open", "holds now"],
            [[p.pooler, _figure(p.bound), f"{p.current:g}"] for p in view.poolers],
            numeric=[1, 2],
            empty="no PgBouncer target of this exporter points at this server (yet scraped)",
        )
        + "</div><h3>Biggest pools</h3><div id='pools-table'>"
        + table(
            ["pooler", "database", "user", "may open", "limited by", "exists"],
            [
                [pooler, p.database, p.user, _figure(p.bound), p.limited_by, _exists(p.exists)]
                for pooler, p in view.biggest_pools(10)
            ],
            numeric=[3],
        )
        + "</div>"
    )
    return "".join(out)


async def _borrow_and_gather(target: TargetScraper, timeout: float, query_text: bool) -> Facts:
    """The diagnosis over the target's held connection, borrowed like a scrape borrows it."""
    connection = target.connection
    async with connection.connection(timeout=target.target.connect_timeout) as conn:
        with connection.watchdog(conn, timeout + SILENT_GRACE):
            # One budget for all the page's statements (transaction-local timeouts): a scrape
            # waiting for the connection waits at most that long.
            return await gather_async(conn, query_text=query_text, budget=timeout)


def _error_page(name: str, targets: Sequence[TargetScraper], error: str) -> bytes:
    return page(
        f"Sessions: {name}",
        _nav(targets, name) + f"<h1>Sessions: {esc(name)}</h1><p class='bad'>{esc(error)}</p>",
    )


def _nav(targets: Sequence[TargetScraper], current: str | None) -> str:
    links = "".join(
        f"<a href='/sessions?target={quote(t.target.name)}'"
        + (" class='current'" if t.target.name == current else "")
        + f">{esc(t.target.name)}</a>"
        for t in targets
    )
    return f"<nav><a href='/'>Home</a>{links}</nav>"


def render(report: Report, query_text: bool) -> str:
    """The report as HTML, in the order an on-call engineer reads it."""
    slots, server = report.slots, report.server
    now = datetime.now(UTC).strftime("%H:%M:%S UTC")
    out = [
        f"<h1>Sessions: PostgreSQL {esc(server['version'])}</h1>",
        f"<p>As of {now} <a class='button' href='' id='refresh'>Refresh</a></p>",
        "<div class='cards'>",
        f"<div class='card'>used<b id='used'>{slots['used']} / {slots['max_connections']}</b>"
        f"{bar(slots['utilization'])} "
        + (f"{slots['utilization']:.0%}" if slots["utilization"] is not None else "")
        + "</div>",
    ]
    for row in slots["may_get_in"]:
        cls = "bad" if row["slots"] == 0 else "ok"
        out.append(
            f"<div class='card'>{esc(row['who'])} may open<b class='{cls}'>{row['slots']}</b></div>"
        )
    out.append("</div>")
    if slots["hidden"]:
        out.append(
            f"<p class='bad'>{slots['hidden']} session(s) hidden from {esc(server['role'])}: "
            "grant it pg_monitor.</p>"
        )
    if report.recommendations:
        out.append("<h2>What to do</h2><ul>")
        out += [
            f"<li><b>{esc(r['section'])}</b>: {esc(r['text'])}</li>" for r in report.recommendations
        ]
        out.append("</ul>")
    out.append("<h2>Holders, biggest first</h2>")
    out.append(
        "<div id='holders'>"
        + table(
            ["sessions", "user", "application", "database", "states", "longest"],
            [holder_cells(h) for h in report.holders],
            numeric=[0],
        )
        + "</div>"
    )
    out.append("<h2>By state, application, user, client, database</h2><div class='cards'>")
    for key in ("state", "application", "user", "client", "database"):
        cells = [[r["key"] or "-", r["count"]] for r in report.breakdowns[key]]
        out.append(f"<div>{table([key, 'n'], cells, numeric=[1], limit=15)}</div>")
    out.append("</div>")
    for title, rows, age in (
        ("Long-running queries", report.long_running, "query_seconds"),
        ("Idle in transaction, and whom they block", report.idle_in_transaction, "xact_seconds"),
        ("Waiting on locks", report.lock_waits, "state_seconds"),
    ):
        out.append(f"<h2>{esc(title)}</h2>" + _sessions(rows, age, query_text))
    candidates = report.candidates
    idle_age = format_seconds(candidates["criteria"]["idle_seconds"])
    out.append(
        f"<h2>Termination candidates: idle {esc(idle_age)} or more "
        f"({len(candidates['sessions'])})</h2>"
    )
    out.append(
        "<div id='candidates'>"
        + table(
            ["sessions", "user", "application", "database", "states"],
            [
                [
                    h["count"],
                    h["user"],
                    h["application"] or "-",
                    h["database"],
                    ", ".join(f"{k} {v}" for k, v in h["states"].items()),
                ]
                for h in candidates["by_holder"]
            ],
            numeric=[0],
        )
        + "</div>"
    )
    if candidates["statement"]:
        out.append(
            "<p>To end them (re-checked as it runs), as a role allowed to, or with "
            "<code>pg-connections-exporter diagnose --terminate</code>:</p>"
            f"<pre>{esc(candidates['statement'])}</pre>"
        )
    out.append("<h2>Settings</h2>")
    memory = report.memory
    out.append(
        table(
            ["setting", "value"],
            [[s["name"], s["shown"]] for s in report.settings]
            + [
                ["max_connections x 10 MB", format_bytes(memory["connection_overhead_bytes"])],
                [
                    "RAM for work_mem (guide)",
                    format_bytes(memory["ram_implied_by_work_mem_bytes"]),
                ],
            ],
        )
    )
    if not query_text:
        out.append(
            "<p class='muted'>Query texts are hidden "
            "(sessions_page.query_text: true shows them).</p>"
        )
    return "".join(out)


def _sessions(rows: Sequence[dict[str, Any]], age: str, query_text: bool) -> str:
    header = ["pid", "user", "application", "client", "state", "for", "blocks", "blocked by"]
    if query_text:
        header.append("query")
    body = []
    for r in rows:
        row = session_cells(r, age)
        if query_text:
            row.append(r["query"] or "")
        body.append(row)
    return table(header, body, numeric=[0], wrap=[8] if query_text else [])
