"""The conventions of dashboards/, checked on every panel of every dashboard.

tests/test_dashboards_e2e.py runs the same queries against a real Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

DASHBOARDS = REPO / "dashboards"
OVERVIEW_UID = "pgce-overview"
FLEET_UID = "pgce-fleet"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
VARIABLE_FILTERS = {"job": "$job", "instance": "$instance", "target": "$target"}
# Series without the exporter's target label: Prometheus's own `up`, and the ALERTS series, whose
# job and instance labels depend on how each alert rule aggregates.
NO_TARGET_LABEL = {
    "up",
    "pg_connections_exporter_config_last_reload_successful",
    "pg_connections_exporter_web_config_last_reload_successful",
}
TARGET_ONLY = {"ALERTS", "ALERTS_FOR_STATE"}
# Another exporter's series, joined to a target by the target's node_instance label rather than
# selected by the dashboard's variables (node_exporter has its own job and instance).
JOINED_BY_LABEL = {"node_memory_MemTotal_bytes"}
# Series of every pooler and exporter of the selected server, joined to it by the `server`
# label (pg_connections_server_info of the selected target): only the job is selected.
JOINED_BY_SERVER = {
    "pgbouncer_upstream_server_connections_bound",
    "pgbouncer_upstream_server_connections",
    "pgbouncer_pool_server_connections_bound",
}
# Metrics the brief asks the dashboards to show; each must be in some panel's query.
REQUIRED_METRICS = {
    OVERVIEW_UID: {
        "pg_connections_utilization_ratio",
        "pg_connections_used",
        "pg_connections_used_peak",
        "pg_connections_saturation_seconds_total",
        "pg_connections_available",
        "pg_connections_max",
        "pg_connections_superuser_reserved",
        "pg_connections_reserved",
        "pg_connections",
        "pg_connections_by_database",
        "pg_connections_by_user",
        "pg_connections_by_application",
        "pg_connections_by_client",
        "pg_connections_reclaimable",
        "pg_connections_reclaimable_idle_age_seconds",
        "pg_connections_reclaimable_by_application",
        "pg_connections_reclaimable_by_user",
        "pg_connections_reclaimable_by_client",
        "pg_connections_blockers_by_application",
        "pg_connections_blocked_by_application",
        "pg_connections_idle_in_transaction_oldest_seconds",
        "pg_connections_max_state_duration_seconds",
        "pg_connections_max_transaction_duration_seconds",
        "pg_connections_state_duration_seconds_bucket",
        "pg_connections_waiting",
        "pg_database_connection_limit",
        "pg_database_connection_limit_used",
        "pg_role_connection_limit",
        "pg_role_connection_limit_used",
        "pg_connections_exporter_connect_failures_total",
        "pg_connections_login_check_success",
        "pg_connections_login_check_duration_seconds",
        "pg_up",
        "pg_connections_exporter_scrape_duration_seconds",
        "pg_connections_exporter_query_duration_seconds",
        "pg_connections_exporter_query_errors_total",
        "ALERTS",
        # The PgBouncers in front (issue: PgBouncer pool saturation).
        "pgbouncer_pool_client_waiting_connections",
        "pgbouncer_pool_client_active_connections",
        "pgbouncer_pool_max_wait_seconds",
        "pgbouncer_pool_server_active_connections",
        "pgbouncer_pool_server_idle_connections",
        "pgbouncer_database_pool_size",
        "pgbouncer_client_connections",
        "pgbouncer_max_client_connections",
        "pgbouncer_server_connections",
        "pgbouncer_stats_queries_total",
        "pgbouncer_stats_client_wait_seconds_total",
        # Why so many connections (issue: churn, session outcomes, pooling advisor, memory).
        "target:pg_connections_busy:avg",
        "target:pg_connections_busy:ratio",
        "target:pg_connections_pooler_size:peak",
        "pg_sessions_total",
        "pg_sessions_ended_total",
        "pg_sessions_active_seconds_total",
        "pg_sessions_idle_in_transaction_seconds_total",
        "pg_connections_young_by_application",
        "pg_connections_age_seconds_bucket",
        "pg_connections_memory_setting_bytes",
        "node_memory_MemTotal_bytes",
    },
    FLEET_UID: {
        "pg_connections_utilization_ratio",
        "pg_up",
        "ALERTS",
        "pgbouncer_pool_client_waiting_connections",
        "pgbouncer_client_connections",
    },
}


def load_dashboards() -> dict[str, dict[str, Any]]:
    """{file name: dashboard JSON} for every dashboard in dashboards/."""
    return {
        p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))
    }


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included; rows themselves left out."""
    for p in panels:
        if p.get("type") == "row":
            yield from iter_panels(p.get("panels", []))
        else:
            yield p


def all_panels() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, d, p) for name, d in load_dashboards().items() for p in iter_panels(d["panels"])]


def where(name: str, panel: dict[str, Any], ref: str | None = None) -> str:
    at = f"{name}: panel {panel.get('title')!r} (id {panel.get('id')})"
    return f"{at} query {ref}" if ref else at


# --- A small PromQL reader: enough to find every selector and what encloses it. ---------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<braces>\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![a-zA-Z_]))
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>.)
    """,
    re.X,
)
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"}
_AGGREGATIONS |= {"count_values", "bottomk", "topk", "quantile"}


@dataclass
class Selector:
    metric: str
    matchers: dict[str, tuple[str, str]]
    function: str | None  # the function whose argument list directly holds the selector
    range: str | None  # "[...]" right after it, if any


@dataclass
class Call:
    function: str
    ranges: list[str] = field(default_factory=list)


def parse_selectors(expr: str) -> list[Selector]:
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "ws"]
    selectors: list[Selector] = []
    stack: list[str | None] = []
    pending: str | None = None  # an aggregation whose "(" comes after its by (...) clause
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in _GROUPING and nxt[1] == "(":
            depth, i = 0, i + 1
            while i < len(tokens):  # skip the label list
                depth += {"(": 1, ")": -1}.get(tokens[i][1], 0)
                if depth == 0:
                    break
                i += 1
        elif kind == "ident" and nxt[1] == "(":
            stack.append(text)
            i += 1
        elif kind == "ident" and text in _AGGREGATIONS:
            pending = text
        elif kind == "ident" and text.lower() not in _KEYWORDS:
            matchers: dict[str, tuple[str, str]] = {}
            j = i + 1
            if nxt[0] == "braces":
                matchers = {m[0]: (m[1], m[2]) for m in _MATCHER.findall(nxt[1])}
                j += 1
            rng = tokens[j][1] if j < len(tokens) and tokens[j][0] == "range" else None
            selectors.append(Selector(text, matchers, stack[-1] if stack else None, rng))
            i = j - 1
        elif text == "(":
            stack.append(pending)
            pending = None
        elif text == ")" and stack:
            stack.pop()
        i += 1
    return selectors


def test_reader_finds_selectors() -> None:
    found = parse_selectors(
        'max by (a, b) (rate(x_total{job=~"$job"}[$__rate_interval])) '
        'and on (a) topk(3, y{le=~"1(.0)?"}) / ignoring (c) z + sum(w) by (d)'
    )
    assert [(s.metric, s.function, s.range) for s in found] == [
        ("x_total", "rate", "[$__rate_interval]"),
        ("y", "topk", None),
        ("z", None, None),
        ("w", "sum", None),
    ]
    assert found[0].matchers == {"job": ("=~", "$job")}


# --- The conventions. -----------------------------------------------------------------------


def test_dashboards_exist_and_are_generated() -> None:
    names = set(load_dashboards())
    assert {"pg-connections-overview.json", "pg-connections-fleet.json"} <= names, names
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.render().items():
        on_disk = (DASHBOARDS / name).read_text(encoding="utf-8")
        assert on_disk == text, (
            f"{name} differs from generate.py: run python dashboards/generate.py"
        )


def test_dashboard_level_conventions() -> None:
    uids = set()
    for name, d in load_dashboards().items():
        text = json.dumps(d)
        assert "${DS_" not in text and "__inputs" not in d, (
            f"{name}: ${{DS_...}} import placeholders are not resolved by file provisioning"
        )
        assert d.get("uid") and len(d["uid"]) <= 40, f"{name}: needs a fixed uid (<= 40 chars)"
        assert d["uid"] not in uids, f"{name}: uid {d['uid']} is used twice"
        uids.add(d["uid"])
        assert d.get("id") is None, f"{name}: a fixed id breaks imports; leave it out"
        assert d.get("title") and d.get("description"), f"{name}: needs a title and description"
        variables = {v["name"]: v for v in d["templating"]["list"]}
        ds = variables.get("datasource")
        assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", (
            f"{name}: needs a datasource variable of type datasource, query prometheus"
        )
        for var in ("job", "instance", "target"):
            v = variables.get(var)
            assert v and v["type"] == "query", f"{name}: needs a query variable {var!r}"
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            assert re.fullmatch(rf"label_values\(.+, {var}\)", query), (
                f"{name}: variable {var} should use label_values(..., {var}), not {query!r}"
            )
            assert v["datasource"] == DS_REF, f"{name}: variable {var} must use $datasource"
        ids = [p["id"] for p in d["panels"]] + [
            p["id"] for r in d["panels"] for p in r.get("panels", [])
        ]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"


def test_every_panel_has_title_description_unit_and_datasource() -> None:
    problems = []
    for name, _d, p in all_panels():
        at = where(name, p)
        if not p.get("title"):
            problems.append(f"{at}: no title")
        if not (p.get("description") or "").strip():
            problems.append(f"{at}: no description")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{at}: no unit in fieldConfig.defaults.unit")
        if p.get("datasource") != DS_REF:
            problems.append(f"{at}: datasource should be {DS_REF}")
        if not p.get("targets"):
            problems.append(f"{at}: no queries")
        for t in p.get("targets", []):
            if t.get("datasource", DS_REF) != DS_REF:
                problems.append(f"{at} query {t.get('refId')}: datasource should be $datasource")
            if not t.get("expr", "").strip():
                problems.append(f"{at} query {t.get('refId')}: empty expr")
    assert not problems, "\n".join(problems)


def test_every_query_filters_by_the_variables() -> None:
    """PgBouncer metrics filter by the `pgbouncer` variable where a dashboard has one (the
    PgBouncers in front of the one PostgreSQL target of the overview)."""
    problems = []
    for name, d, p in all_panels():
        has_pgbouncer_var = any(v["name"] == "pgbouncer" for v in d["templating"]["list"])
        for t in p["targets"]:
            at = where(name, p, t["refId"])
            selectors = parse_selectors(t["expr"])
            if not selectors:
                problems.append(f"{at}: no metric in {t['expr']!r}")
            for s in selectors:
                wanted = dict(VARIABLE_FILTERS)
                if has_pgbouncer_var and s.metric.startswith("pgbouncer_"):
                    wanted["target"] = "$pgbouncer"
                if s.metric in NO_TARGET_LABEL:
                    del wanted["target"]
                if s.metric in TARGET_ONLY:
                    wanted = {"target": "$target"}
                if s.metric in JOINED_BY_LABEL:
                    wanted = {}
                if s.metric in JOINED_BY_SERVER or s.metric.startswith("server:"):
                    wanted = {"job": "$job"}
                for label, var in wanted.items():
                    if s.matchers.get(label) != ("=~", var):
                        problems.append(f'{at}: {s.metric} lacks {label}=~"{var}"')
    assert not problems, "\n".join(problems)


def test_counters_only_in_rate_or_increase_with_rate_interval() -> None:
    problems = []
    for name, _d, p in all_panels():
        for t in p["targets"]:
            at = where(name, p, t["refId"])
            for s in parse_selectors(t["expr"]):
                if s.metric.endswith("_total") and s.function not in ("rate", "increase"):
                    problems.append(f"{at}: counter {s.metric} outside rate()/increase()")
                if s.function == "rate" and s.range != "[$__rate_interval]":
                    problems.append(f"{at}: rate() over {s.range}, not [$__rate_interval]")
                if s.function == "increase" and s.range not in (
                    "[$__rate_interval]",
                    "[$__range]",
                ):
                    problems.append(f"{at}: increase() over {s.range}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("uid", sorted(REQUIRED_METRICS))
def test_required_metrics_are_shown(uid: str) -> None:
    shown = set()
    for _name, d, p in all_panels():
        if d["uid"] == uid:
            for t in p["targets"]:
                shown |= {s.metric for s in parse_selectors(t["expr"])}
    missing = REQUIRED_METRICS[uid] - shown
    assert not missing, f"dashboard {uid}: no panel shows {sorted(missing)}"


def _panel(uid: str, title: str) -> dict[str, Any]:
    for _name, d, p in all_panels():
        if d["uid"] == uid and p["title"] == title:
            return p
    raise AssertionError(f"dashboard {uid}: no panel titled {title!r}")


def test_utilization_panels_carry_the_alert_thresholds() -> None:
    alerts = yaml.safe_load((REPO / "alerts" / "thresholds.yaml").read_text())["alerts"]
    high = alerts["PostgresConnectionsHigh"]["utilization"]
    critical = alerts["PostgresConnectionsCritical"]["utilization"]
    for _name, d, p in all_panels():
        exprs = " ".join(t["expr"] for t in p["targets"])
        if p["fieldConfig"]["defaults"].get("unit") != "percentunit":
            continue
        if "pg_connections_utilization_ratio" not in exprs:
            continue
        steps = p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
        values = [s["value"] for s in steps]
        assert high in values and critical in values, (
            f"{d['uid']}: panel {p['title']!r}: thresholds {values}, "
            f"want the alerts' {high} and {critical}"
        )
    trend = _panel(OVERVIEW_UID, "Utilization and 1h projection")
    assert "predict_linear" in trend["targets"][1]["expr"]
    assert trend["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    stacked = _panel(OVERVIEW_UID, "Connections by state, under the limits")
    assert stacked["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert "pg_connections_max" in stacked["targets"][1]["expr"]


def test_histogram_is_a_heatmap_of_buckets() -> None:
    heatmaps = [p for _n, d, p in all_panels() if p["type"] == "heatmap"]
    assert heatmaps, "no heatmap panel"
    for p in heatmaps:
        for t in p["targets"]:
            histograms = ("pg_connections_state_duration_seconds", "pg_connections_age_seconds")
            assert any(f"{h}_bucket" in t["expr"] for h in histograms), p["title"]
            assert t["format"] == "heatmap" and "by (le)" in t["expr"], p["title"]
        assert p["options"]["calculate"] is False, p["title"]


def test_fleet_table_links_to_the_overview_with_the_target() -> None:
    table = _panel(FLEET_UID, "Targets by utilization")
    links = [
        link
        for o in table["fieldConfig"]["overrides"]
        if o["matcher"] == {"id": "byName", "options": "target"}
        for prop in o["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    assert links, "fleet table: the target column has no link"
    url = links[0]["url"]
    assert url.startswith(f"/d/{OVERVIEW_UID}/"), url
    assert "var-target=${__data.fields.target}" in url, url
    assert "${datasource:queryparam}" in url and "${job:queryparam}" in url, url
    assert table["options"]["sortBy"] == [{"displayName": "utilization", "desc": True}]
    overview = next(d for d in load_dashboards().values() if d["uid"] == OVERVIEW_UID)
    target_var = next(v for v in overview["templating"]["list"] if v["name"] == "target")
    assert not target_var["multi"], "the overview shows one target at a time"


def test_provisioning_points_at_the_dashboards() -> None:
    config = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards.yaml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file" and provider["folder"]
    path = Path(provider["options"]["path"])
    assert path.is_absolute(), "Grafana resolves the path on its own host: make it absolute"
    assert provider["options"].get("foldersFromFilesStructure") is not True
    readme = (DASHBOARDS / "README.md").read_text()
    assert str(path) in readme, "dashboards/README.md should show where to copy the JSON files"
    for name in load_dashboards():
        assert name in readme, f"dashboards/README.md does not mention {name}"


def test_overview_picks_the_pgbouncers_in_front_with_their_own_variable() -> None:
    overview = next(d for d in load_dashboards().values() if d["uid"] == OVERVIEW_UID)
    variables = {v["name"]: v for v in overview["templating"]["list"]}
    pgbouncer = variables["pgbouncer"]
    assert pgbouncer["datasource"] == DS_REF and pgbouncer["multi"] and pgbouncer["includeAll"]
    query = pgbouncer["query"]["query"]
    assert re.fullmatch(
        r'label_values\(pgbouncer_\w+\{job=~"\$job", instance=~"\$instance"\}, target\)', query
    ), query
    rows = [p["title"] for p in overview["panels"] if p["type"] == "row"]
    # Right after the PostgreSQL saturation row: the same server seen from its pooler.
    assert rows[1].startswith("PgBouncer"), rows
