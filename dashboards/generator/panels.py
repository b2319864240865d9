"""Panel builders and the grid layout: one function per panel type, each returning the
panel's JSON as a dict, and `Layout`, which places panels left to right and numbers them."""

from __future__ import annotations

from typing import Any

from .common import DS, F


def q(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series") -> dict:
    """One panel query (refId is set by the panel)."""
    target: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        target.update(instant=True, range=False)
    else:
        target.update(instant=False, range=True)
    target["format"] = fmt
    return target


class Layout:
    """Places panels left to right on Grafana's 24-column grid, with ids."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: dict, w: int, h: int) -> dict:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)
        return panel

    def _newline(self) -> None:
        self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    *,
    defaults: dict | None = None,
    options: dict | None = None,
    overrides: list | None = None,
    **extra: Any,
) -> dict:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, **(defaults or {})},
            "overrides": overrides or [],
        },
        "options": options or {},
        **extra,
    }


def timeseries(
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    *,
    stack: bool = False,
    thresholds: dict | None = None,
    overrides: list | None = None,
    minimum: float | None = 0,
    maximum: float | None = None,
) -> dict:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
    if stack:
        custom.update(stacking={"mode": "normal", "group": "A"}, fillOpacity=60)
    defaults: dict[str, Any] = {"custom": custom}
    if thresholds:
        custom["thresholdsStyle"] = {"mode": "line+area"}
        defaults["thresholds"] = thresholds
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return panel(
        "timeseries",
        title,
        description,
        targets,
        unit,
        defaults=defaults,
        overrides=overrides,
        options={
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def stat(
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    *,
    thresholds: dict | None = None,
    mappings: list | None = None,
    no_value: str | None = None,
    decimals: int | None = None,
) -> dict:
    defaults: dict[str, Any] = {
        "thresholds": thresholds
        or {"mode": "absolute", "steps": [{"color": "text", "value": None}]},
        "mappings": mappings or [],
    }
    if no_value is not None:
        defaults["noValue"] = no_value
    if decimals is not None:
        defaults["decimals"] = decimals
    return panel(
        "stat",
        title,
        description,
        targets,
        unit,
        defaults=defaults,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background" if thresholds or mappings else "value",
            "graphMode": "area",
            "textMode": "value_and_name",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    )


def bargauge(title: str, description: str, targets: list[dict], unit: str, **kw: Any) -> dict:
    return panel(
        "bargauge",
        title,
        description,
        targets,
        unit,
        defaults={"min": 0, **kw.pop("defaults", {})},
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
        },
        **kw,
    )


def table(
    title: str,
    description: str,
    targets: list[dict],
    unit: str,
    *,
    renames: dict[str, str],
    units: dict[str, str] | None = None,
    sort_by: str | None = None,
    links: dict[str, list] | None = None,
    cell_thresholds: dict[str, dict] | None = None,
) -> dict:
    overrides = []
    for field, field_unit in (units or {}).items():
        overrides.append(
            {
                "matcher": {"id": "byName", "options": field},
                "properties": [{"id": "unit", "value": field_unit}],
            }
        )
    for field, field_links in (links or {}).items():
        overrides.append(
            {
                "matcher": {"id": "byName", "options": field},
                "properties": [{"id": "links", "value": field_links}],
            }
        )
    for field, steps in (cell_thresholds or {}).items():
        overrides.append(
            {
                "matcher": {"id": "byName", "options": field},
                "properties": [
                    {"id": "thresholds", "value": steps},
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                ],
            }
        )
    return panel(
        "table",
        title,
        description,
        targets,
        unit,
        overrides=overrides,
        options={
            "showHeader": True,
            "sortBy": [{"displayName": sort_by, "desc": True}] if sort_by else [],
        },
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "renameByName": renames},
            },
        ],
    )


def heatmap(title: str, description: str, expr: str) -> dict:
    return panel(
        "heatmap",
        title,
        description,
        [q(expr, "{{le}}", fmt="heatmap")],
        "short",
        options={
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": "s"},
            "rowsFrame": {"layout": "le"},
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "cellValues": {"unit": "short"},
            "tooltip": {"show": True, "yHistogram": True},
        },
    )


def variables(*, target_multi: bool, pgbouncer: bool = False) -> list[dict]:
    def query_var(name: str, label: str, query: str, multi: bool, include_all: bool) -> dict:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-variable"},
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": include_all,
            **({"allValue": ".*"} if include_all else {}),
            "current": {},
            "hide": 0,
            "regex": "",
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "multi": False,
            "includeAll": False,
        },
        query_var("job", "Job", "label_values(pg_up, job)", True, True),
        query_var("instance", "Instance", 'label_values(pg_up{job=~"$job"}, instance)', True, True),
        query_var(
            "target",
            "Target",
            'label_values(pg_up{job=~"$job", instance=~"$instance"}, target)',
            target_multi,
            target_multi,
        ),
    ] + (
        [
            query_var(
                "pgbouncer",
                "PgBouncer",
                'label_values(pgbouncer_max_client_connections{job=~"$job", '
                'instance=~"$instance"}, target)',
                True,
                True,
            )
        ]
        if pgbouncer
        else []
    )


def dashboard(uid: str, title: str, description: str, panels: list[dict], **kw: Any) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["postgresql", "connections", "pg-connections-exporter"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "panels": panels,
        **kw,
    }


def by_label(metric: str, label: str, name: str) -> dict:
    """Top 10 holders of `label` (database, user, ...) with each one's sessions by state."""
    expr = (
        f"max by ({label}, state) ({metric}{{{F}}}) "
        f"and on ({label}) topk(10, sum by ({label}) (max by ({label}, state) ({metric}{{{F}}})))"
    )
    return timeseries(
        f"Top {name} by state",
        f"Client backends of the 10 {name} holding the most slots, stacked by state ({metric}). "
        f'Past the exporter\'s max_series the tail is folded into {label}="other". '
        "The exporter's own session is not counted.",
        [q(expr, f"{{{{{label}}}}} · {{{{state}}}}")],
        "short",
        stack=True,
    )
