"""The landing page: every target with its utilization and state, and the way to the sessions
page, the metrics, the dashboards and the runbooks. Never a DSN."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from exporter.config.model import Config
from exporter.scrape.target import TargetResult
from exporter.web.webpage import HEADERS, HTML, bar, esc, page

_SLOT_METRICS = ("pg_connections_used", "pg_connections_max", "pg_connections_utilization_ratio")

Response = tuple[int, str, bytes, dict[str, str]]


def slot_figures(result: TargetResult | None) -> dict[str, float]:
    """used, max and utilization from a target's last scrape (empty when it has none)."""
    out: dict[str, float] = {}
    if result is None or not result.up:
        return out
    for query in result.queries:
        for metric in query.metrics:
            name = metric.spec.name
            if name in _SLOT_METRICS and metric.samples:
                out[name] = metric.samples[0][1]
    return out


class LandingPage:
    """The handler of `/`."""

    def __init__(
        self,
        config: Callable[[], Config],
        status: Callable[[], list[dict[str, Any]]],
        telemetry_path: str,
        notes: Callable[[], list[str]] | None = None,
    ) -> None:
        self._config = config
        self._status = status
        self._telemetry_path = telemetry_path
        # Lines under the targets (the probe targets held, closed and refused).
        self._notes = notes or (lambda: [])

    def __call__(self, query: str) -> Response:
        return 200, HTML, self.render(self._config(), self._status()), HEADERS

    def render(self, config: Config, targets: Sequence[dict[str, Any]]) -> bytes:
        links = config.links
        grafana = links.grafana.rstrip("/") if links.grafana else None
        sessions = config.sessions_page.enabled
        nav = [f"<a href='{esc(self._telemetry_path)}'>Metrics</a>"]
        if sessions:
            nav.append("<a href='/sessions'>Sessions</a>")
        if grafana:
            nav.append(f"<a href='{esc(grafana)}/d/pgce-fleet'>Dashboards</a>")
        else:
            nav.append(f"<a href='{esc(links.dashboards)}'>Dashboards</a>")
        nav.append(f"<a href='{esc(links.runbooks)}'>Runbooks</a>")
        nav.append("<a href='/healthz'>Health</a>")
        rows = []
        for t in targets:
            name = t["name"]
            used, limit, ratio = t.get("used"), t.get("max"), t.get("utilization")
            state = t["state"]
            if ratio is not None and ratio >= 1:
                state += ", full"
            elif ratio is not None and ratio >= 0.8:
                state += ", high"
            cls = "ok" if state == "up" else "bad"
            target_links = []
            if sessions and t.get("sessions"):
                target_links.append(f"<a href='/sessions?target={quote(name)}'>sessions</a>")
            if grafana:
                target_links.append(
                    f"<a href='{esc(grafana)}/d/pgce-overview?var-target={quote(name)}'>"
                    "dashboard</a>"
                )
            shown = esc(name)
            if sessions and t.get("sessions"):
                shown = f"<a href='/sessions?target={quote(name)}'>{shown}</a>"
            rows.append(
                f"<tr><td>{shown}</td>"
                f"<td>{bar(ratio)} {'' if ratio is None else f'{ratio:.0%}'}</td>"
                f"<td class='{cls}'>{esc(state)}</td>"
                f"<td class='num'>{'' if used is None else f'{used:.0f} / {limit:.0f}'}</td>"
                f"<td>{' '.join(target_links)}</td><td>{esc(t['detail'])}</td>"
                f"<td>{esc(t.get('kind', ''))}</td></tr>"
            )
        body = (
            "<h1>pg-connections-exporter</h1>"
            "<p>PostgreSQL connection saturation for Prometheus: who holds the slots, and how "
            "close the server is to &ldquo;too many clients&rdquo;.</p>"
            f"<nav>{''.join(nav)}</nav><h2>Targets</h2><div class='scroll'><table id='targets'>"
            "<tr><th>Target</th><th>Utilization</th><th>State</th>"
            "<th class='num'>Used / max</th><th>Links</th><th>Detail</th><th>Kind</th></tr>"
            f"{''.join(rows)}</table></div>"
            "<p class='muted'>Utilization is of the slots ordinary roles may use; as of the last "
            "scrape.</p>" + "".join(f"<p>{esc(line)}</p>" for line in self._notes())
        )
        return page("pg-connections-exporter", body)
