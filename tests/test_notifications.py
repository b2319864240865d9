"""The Alertmanager notification templates of alerts/notifications.tmpl, rendered by amtool
(Alertmanager's own template engine) from a notification's data: what the on-call engineer
reads. The end-to-end run through a real Alertmanager is in tests/test_alerts_e2e.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_program
from tests.helpers import REPO

TEMPLATES = REPO / "alerts" / "notifications.tmpl"
RUNBOOKS = "https://example.org/runbooks"
DESCRIPTION = (
    "db1 (exp:9832): connection slot utilization reached 100%.\n"
    "57 of 60 slots in use, 39 idle >10m (reclaimable).\n"
    "Apps: storefront 41 (33 idle >10m), web-batch 9 (6 idle in transaction, oldest 14m)\n"
    "Do: terminate the sessions of storefront idle >10m (connection-recovery.md step 2)."
)


def alert(name: str, severity: str, summary: str, description: str, status: str) -> dict:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": severity, "target": "db1"},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{RUNBOOKS}/{name}.md",
        },
        "startsAt": "2026-12-03T08:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-03T08:30:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": name,
    }


NOTIFICATION: dict[str, Any] = {
    "receiver": "pager",
    "status": "firing",
    "alerts": [
        alert(
            "PostgresConnectionsExhausted",
            "critical",
            "PostgreSQL has no connection slot left for ordinary roles.",
            DESCRIPTION,
            "firing",
        ),
        alert(
            "PostgresLockPileUp",
            "warning",
            "PostgreSQL sessions are piling up behind a lock.",
            "db1 (exp:9832): 6 sessions wait on a lock.\n"
            "Blocking: <migrate> (1 session(s)) blocks 6",
            "firing",
        ),
        alert("PostgresConnectionsHigh", "warning", "Slots are filling up.", "x", "resolved"),
    ],
    "groupLabels": {"job": "pg-connections-exporter", "instance": "exp:9832", "target": "db1"},
    "commonLabels": {"target": "db1"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager",
}


def render(template: str, tmp_path: Path, data: dict[str, Any], kind: str = "text") -> str:
    amtool = require_program("amtool")
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data))
    result = subprocess.run(
        [
            amtool,
            "template",
            "render",
            f"--template.glob={TEMPLATES}",
            f"--template.text={{{{ template {json.dumps(template)} . }}}}",
            f"--template.type={kind}",
            f"--template.data={data_file}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_title_says_status_count_target_and_the_first_summary(tmp_path: Path) -> None:
    assert render("pgce.title", tmp_path, NOTIFICATION) == (
        "[FIRING:2] db1: PostgreSQL has no connection slot left for ordinary roles."
    )
    resolved = {
        **NOTIFICATION,
        "status": "resolved",
        "alerts": [NOTIFICATION["alerts"][2]],
    }
    assert render("pgce.email.subject", tmp_path, resolved) == (
        "[RESOLVED] db1: Slots are filling up."
    )


def test_text_puts_the_holders_of_each_alert_under_its_summary(tmp_path: Path) -> None:
    assert render("pgce.text", tmp_path, NOTIFICATION) == (
        "CRITICAL PostgresConnectionsExhausted: PostgreSQL has no connection slot left for"
        " ordinary roles.\n"
        f"{DESCRIPTION}\n"
        f"Runbook: {RUNBOOKS}/PostgresConnectionsExhausted.md\n"
        "\n"
        "WARNING PostgresLockPileUp: PostgreSQL sessions are piling up behind a lock.\n"
        "db1 (exp:9832): 6 sessions wait on a lock.\n"
        "Blocking: <migrate> (1 session(s)) blocks 6\n"
        f"Runbook: {RUNBOOKS}/PostgresLockPileUp.md\n"
        "\n"
        "RESOLVED PostgresConnectionsHigh: Slots are filling up."
    )


def test_slack_text_keeps_the_lines_in_a_code_block_and_links_the_runbook(
    tmp_path: Path,
) -> None:
    text = render("pgce.slack.text", tmp_path, NOTIFICATION)
    in_slack = DESCRIPTION.replace(">", "&gt;")  # Slack reads a raw > as markup
    assert text.startswith(
        "*CRITICAL* PostgresConnectionsExhausted: PostgreSQL has no connection slot left for"
        f" ordinary roles.\n```{in_slack}```\n<{RUNBOOKS}/PostgresConnectionsExhausted.md|"
        "Runbook>\n\n*WARNING* PostgresLockPileUp"
    )
    assert text.endswith("\n\nRESOLVED PostgresConnectionsHigh: Slots are filling up.")


def test_email_html_escapes_what_the_holders_are_named(tmp_path: Path) -> None:
    html = render("pgce.email.html", tmp_path, NOTIFICATION, kind="html")
    assert "<h3>[FIRING:2] db1: PostgreSQL has no connection slot left" in html
    assert "Apps: storefront 41 (33 idle &gt;10m)" in html
    assert "Blocking: &lt;migrate&gt; (1 session(s)) blocks 6" in html  # no markup injected
    assert f'<a href="{RUNBOOKS}/PostgresConnectionsExhausted.md">Runbook</a>' in html
    assert "<p>RESOLVED PostgresConnectionsHigh: Slots are filling up.</p>" in html


def test_example_config_uses_the_templates_for_every_human_receiver() -> None:
    config = yaml.safe_load((REPO / "alerts" / "alertmanager.example.yml").read_text())
    assert config["templates"] == ["notifications.tmpl"]
    receivers = {r["name"]: r for r in config["receivers"]}
    (slack,) = receivers["pager"]["slack_configs"]
    assert slack["text"] == '{{ template "pgce.slack.text" . }}'
    (email,) = receivers["ticket"]["email_configs"]
    assert email["html"] == '{{ template "pgce.email.html" . }}'
    assert email["headers"]["Subject"] == '{{ template "pgce.email.subject" . }}'
    (pagerduty,) = receivers["pager"]["pagerduty_configs"]
    assert pagerduty["details"]["holders"] == '{{ template "pgce.text" . }}'


@pytest.mark.parametrize("template", ["pgce.text", "pgce.slack.text"])
def test_a_resolved_only_notification_says_what_resolved(template: str, tmp_path: Path) -> None:
    data = {**NOTIFICATION, "status": "resolved", "alerts": [NOTIFICATION["alerts"][2]]}
    assert render(template, tmp_path, data) == (
        "RESOLVED PostgresConnectionsHigh: Slots are filling up."
    )
