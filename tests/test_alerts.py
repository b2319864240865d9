"""The alerting rules in alerts/: generated, lint clean, unit tested, documented.

The rule file and the Kubernetes PrometheusRule are rendered by scripts/render_alerts.py from
alerts/thresholds.yaml; the promtool unit tests are in alerts/tests/. The end-to-end run with
real Prometheus and Alertmanager is tests/test_alerts_e2e.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_program
from tests.helpers import REPO, load_render_alerts

ALERTS_DIR = REPO / "alerts"
RULES = ALERTS_DIR / "pg-connections-exporter.rules.yml"
K8S = ALERTS_DIR / "kubernetes" / "prometheusrule.yaml"
AM_EXAMPLE = ALERTS_DIR / "alertmanager.example.yml"
UNIT_TESTS = sorted((ALERTS_DIR / "tests").glob("*.yml"))
RUNBOOK_BASE = (
    "https://github.com/pg-connections-exporter/pg-connections-exporter/blob/main/docs/runbooks/"
)
JOB_MATCHER = 'job="pg-connections-exporter"'

# The alert set of issue 5 and the severities each alert name may carry.
EXPECTED = {
    "PostgresConnectionsHigh": {"warning"},
    "PostgresConnectionsCritical": {"critical"},
    "PostgresConnectionsExhausted": {"critical"},
    "PostgresConnectionsBrieflyExhausted": {"warning"},
    "PostgresConnectionsRejected": {"critical"},
    "PostgresConnectionsLoginCheckFailing": {"warning"},
    "PostgresAuthenticationFailuresBurst": {"warning"},
    "PostgresConnectionsExporterLogUnreadable": {"warning"},
    "PostgresConnectionsFillingUp": {"warning"},
    "PostgresIdleInTransactionTooLong": {"warning", "critical"},
    "PostgresIdleInTransactionHigh": {"warning"},
    "PostgresLockPileUp": {"warning"},
    "PostgresDatabaseConnectionLimitNear": {"warning"},
    "PostgresRoleConnectionLimitNear": {"warning"},
    "PostgresLongRunningQueries": {"warning"},
    "PostgresConnectionsExporterDown": {"critical"},
    "PostgresDown": {"critical"},
    "PostgresConnectionsExporterQueryFailing": {"critical", "warning"},
    "PostgresConnectionsExporterBadConfig": {"warning"},
    "PgBouncerClientsWaitingTooLong": {"warning", "critical"},
    "PgBouncerClientConnectionsNearLimit": {"warning", "critical"},
    "PgBouncerPoolSaturated": {"warning"},
    # The pooling advisor: tickets, never pages.
    "PostgresConnectionsMostlyIdle": {"warning"},
    "PostgresConnectionChurnHigh": {"warning"},
    "PostgresSessionsAbandoned": {"warning"},
    "PgBouncerPoolsOvercommitServer": {"warning"},
}


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


# --- generated files -------------------------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    """The committed rule file and PrometheusRule equal the generator's output."""
    result = run(sys.executable, "scripts/render_alerts.py", "--check")
    assert result.returncode == 0, (
        "run `python scripts/render_alerts.py`:\n" + result.stdout + result.stderr
    )
    renderer = load_render_alerts()
    for path, text in renderer.render_files(renderer.load_thresholds()).items():
        assert path.read_text() == text, path


def test_thresholds_come_from_the_yaml() -> None:
    """Changing a value in thresholds.yaml changes the rules: nothing is hard-coded twice."""
    renderer = load_render_alerts()
    t = renderer.load_thresholds()
    t["alerts"]["PostgresConnectionsHigh"]["utilization"] = 0.75
    t["alerts"]["PostgresConnectionsHigh"]["for"] = "7m"
    t["alerts"]["PostgresConnectionsExhausted"]["window"] = "3m"
    t["job"] = "pgce"
    groups = renderer.render_groups(t)
    by_name = {r.get("alert", r.get("record")): r for r in groups[0]["rules"]}
    high = by_name["PostgresConnectionsHigh"]
    assert high["expr"].strip().endswith("> 0.75") and high["for"] == "7m"
    assert "above 75%" in high["annotations"]["description"]
    assert "[3m]) >= 1" in by_name["PostgresConnectionsExhausted"]["expr"]
    assert 'job="pg-connections-exporter"' not in yaml.safe_dump(groups)


def test_kubernetes_prometheusrule_holds_the_same_groups(tmp_path: Path) -> None:
    promtool = require_program("promtool")
    obj = yaml.safe_load(K8S.read_text())
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["kind"] == "PrometheusRule"
    assert obj["metadata"]["name"]
    assert obj["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    extracted = tmp_path / "from-prometheusrule.yml"
    extracted.write_text(yaml.safe_dump({"groups": obj["spec"]["groups"]}))
    result = run(promtool, "check", "rules", str(extracted))
    assert result.returncode == 0, result.stdout + result.stderr


# --- promtool and amtool ---------------------------------------------------------------------


def test_promtool_check_rules_lint_clean() -> None:
    promtool = require_program("promtool")
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "warning" not in (result.stdout + result.stderr).lower()


def test_promtool_unit_tests_pass() -> None:
    promtool = require_program("promtool")
    assert UNIT_TESTS
    result = run(promtool, "test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """Each alert (and each severity of it) fires in some case, and stays quiet in another."""
    fired: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        data = yaml.safe_load(path.read_text())
        for test in data["tests"]:
            series = [s["series"] for s in test.get("input_series", [])]
            targets = {m for s in series for m in re.findall(r'target="([^"]+)"', s)}
            for case in test.get("alert_rule_test", []):
                if not case.get("exp_alerts"):
                    quiet.add(case["alertname"])
                for exp in case.get("exp_alerts") or []:
                    labels = exp["exp_labels"]
                    fired.add((case["alertname"], labels["severity"]))
                    # Firing cases spell out every annotation and run with two targets.
                    assert set(exp["exp_annotations"]) == {"summary", "description", "runbook_url"}
                    if "target" in labels:
                        assert len(targets) >= 2, f"{path.name}: {test['name']}: one target"
    expected = {(name, sev) for name, sevs in EXPECTED.items() for sev in sevs}
    assert expected <= fired, f"never shown firing: {sorted(expected - fired)}"
    assert set(EXPECTED) <= quiet, f"never shown quiet: {sorted(set(EXPECTED) - quiet)}"


def test_amtool_check_config() -> None:
    amtool = require_program("amtool")
    result = run(amtool, "check-config", str(AM_EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=PostgresConnectionsExhausted"], "pager"),
        (["severity=warning", "alertname=PostgresConnectionsHigh"], "ticket"),
        (["severity=info"], "null"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    amtool = require_program("amtool")
    result = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={AM_EXAMPLE}",
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_critical_inhibits_warning_of_the_same_target() -> None:
    config = yaml.safe_load(AM_EXAMPLE.read_text())
    assert {
        "source_matchers": ['severity="critical"'],
        "target_matchers": ['severity="warning"'],
        "equal": ["job", "instance", "target"],
    } in config["inhibit_rules"]


# --- the rules themselves --------------------------------------------------------------------


def test_the_alert_set_and_severities() -> None:
    seen: dict[str, set[str]] = {}
    for rule in alerts():
        seen.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    assert seen == EXPECTED


def test_every_alert_is_documented_and_annotated() -> None:
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule.get("for"), f"{name}: no for duration"
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, name
        assert ann["summary"] and "{{" not in ann["summary"], f"{name}: summary must be static"
        assert "$value" in ann["description"], f"{name}: description lacks the value"
        # Alerts about the exporter itself have no target; the rest name theirs.
        exporter_wide = {"PostgresConnectionsExporterDown", "PostgresConnectionsExporterBadConfig"}
        # The per-server alerts (over every pooler and exporter) name their server.
        per_server = {"PgBouncerPoolsOvercommitServer"}
        where = (
            "$labels.instance"
            if name in exporter_wide
            else "$labels.server"
            if name in per_server
            else "$labels.target"
        )
        assert where in ann["description"], f"{name}: description lacks {where}"
        assert ann["runbook_url"] == f"{RUNBOOK_BASE}{name}.md"


def test_every_runbook_url_points_at_a_file_in_this_repository() -> None:
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        path = REPO / "docs" / "runbooks" / url.removeprefix(RUNBOOK_BASE)
        assert path.is_file(), f"{rule['alert']}: {path} does not exist"
        text = path.read_text()
        assert text.startswith(f"# {rule['alert']}"), path
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Recovery", "## Lasting fix"):
            assert section in text, f"{path.name}: no {section!r} section"


def test_every_selector_is_limited_to_the_exporter_job() -> None:
    """Same-named metrics of other jobs (postgres_exporter's pg_up) never mix in."""
    for rule in rules():
        expr = re.sub(r"#.*", "", rule["expr"])
        selectors = re.findall(r"(?<![:\w])(pg_[a-z_]+|pgbouncer_[a-z_]+|up)\b(\{[^}]*\})?", expr)
        assert selectors or re.search(r"(target|server):pg(bouncer)?_", expr), rule
        for name, matchers in selectors:
            assert JOB_MATCHER in matchers, f"{rule.get('alert') or rule['record']}: {name}"


def test_vector_matching_names_job_and_instance() -> None:
    """Every on(...) keeps job and instance, so several exporters and jobs never collide (the
    promtool tests run every alert with two targets to show the matching at work)."""
    clauses = 0
    for rule in rules():
        expr = re.sub(r"#.*", "", rule["expr"])
        for clause in re.findall(r"\b(?:on|ignoring)\(([^)]*)\)", expr):
            clauses += 1
            labels = {x.strip() for x in clause.split(",")}
            # Rules per PostgreSQL server sum over every pooler and exporter (instance): they
            # match on the server label both sides carry instead.
            if rule.get("record", "").startswith("server:") and "instance" not in expr:
                assert {"job", "server"} <= labels, (rule["record"], clause)
                continue
            assert {"job", "instance"} <= labels, (rule.get("alert") or rule["record"], clause)
    assert clauses >= 5


SATURATION = ("High", "Critical", "Exhausted", "Rejected", "FillingUp")


@pytest.mark.parametrize("name", [f"PostgresConnections{s}" for s in SATURATION])
def test_saturation_alerts_name_the_holders(name: str) -> None:
    """Each saturation alert's description carries the holder lines that
    alerts/tests/holders_test.yml renders for Critical, Exhausted and High (one template)."""
    (rule,) = [r for r in alerts() if r["alert"] == name]
    description = rule["annotations"]["description"]
    for needle in ("\nApps: ", "\nUsers: ", "\nClients: ", "\nBlocking: ", "step 2).", "step 3)."):
        assert needle in description, (name, needle)


def test_advisor_busy_window_must_be_a_state_duration_bound() -> None:
    """The advisor adds the sessions busy for longer than its window from the state-duration
    histogram, so the window must be one of its bounds: anything else is a clear error."""
    renderer = load_render_alerts()
    thresholds = renderer.load_thresholds()
    thresholds["advisor"]["busy_window"] = "2m"
    with pytest.raises(ValueError, match=r"advisor.busy_window 2m: must be one of the bounds"):
        renderer.render_groups(thresholds)
    thresholds["advisor"]["busy_window"] = "10m"
    long_busy = next(
        r
        for r in renderer.render_groups(thresholds)[0]["rules"]
        if r.get("record") == "target:pg_connections_busy:long"
    )
    assert 'le="600.0"' in long_busy["expr"]
