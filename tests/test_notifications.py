"""The Alertmanager notification templates of alerts/notifications.tmpl, rendered by amtool
(Alertmanager's own template engine) from a notification's data: what the on-call engineer
reads. The end-to-end run through a real Alertmanager is in tests/test_alerts_e2e.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import require_program
from tests.helpers import REPO, load_render_alerts

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
    return render_text(f"{{{{ template {json.dumps(template)} . }}}}", tmp_path, data, kind)


def render_text(text: str, tmp_path: Path, data: dict[str, Any], kind: str = "text") -> str:
    """`text` (a template over the templates of notifications.tmpl) rendered by amtool."""
    amtool = require_program("amtool")
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data))
    result = subprocess.run(
        [
            amtool,
            "template",
            "render",
            f"--template.glob={TEMPLATES}",
            f"--template.text={text}",
            f"--template.type={kind}",
            f"--template.data={data_file}",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    # Decoded here, not with text=True: universal newlines would read a name's \r as \n.
    return result.stdout.decode()


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


# --- the escaping rules of the templates and the rules, over arbitrary strings -----------------

# Label values are UTF-8 (no lone surrogates); the record separator splits amtool's output.
SEP = "\x1e"
NAMES = st.lists(
    st.text(
        st.one_of(
            st.characters(blacklist_categories=("Cs",), blacklist_characters=SEP),
            st.sampled_from(list("\n\r\t\x1b\x07\x7f\x85\x9b\u202e\u2066`<>&\"'\\!@ ")),
        )
    ),
    min_size=1,
    max_size=8,
)
# What no name may show raw: controls (C0, DEL, C1), bidi controls, line separators.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def render_each(tmp_path: Path, body: str, names: list[str]) -> list[str]:
    """`body` (a template over one alert, `.`) rendered by amtool for an alert per name, the
    name as its description and its application_name label."""
    data = {
        **NOTIFICATION,
        "alerts": [
            {
                **NOTIFICATION["alerts"][0],
                "labels": {"application_name": n},
                "annotations": {"description": n},
            }
            for n in names
        ],
    }
    out = render_text(f"{{{{ range .Alerts }}}}{body}{SEP}{{{{ end }}}}", tmp_path, data)
    return out.split(SEP)[:-1]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(NAMES)
def test_slack_escape_leaves_no_markup_and_no_code_fence(tmp_path: Path, names: list[str]) -> None:
    shown = render_each(
        tmp_path, '{{ template "pgce.slack.escape" .Annotations.description }}', names
    )
    assert len(shown) == len(names)
    for name, text in zip(names, shown, strict=True):
        assert "<" not in text and ">" not in text and "`" not in text
        assert not re.search(r"&(?!amp;|lt;|gt;)", text)
        # Slack reads &amp; &lt; &gt; back: the name, its backticks as U+02CB.
        read = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        assert read == name.replace("`", "\u02cb")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(NAMES)
def test_rule_names_are_bare_or_quoted_never_raw(tmp_path: Path, names: list[str]) -> None:
    """The name template of scripts/render_alerts.py (the text the rules carry), run by Go's
    text/template as in Prometheus: one line, nothing unsafe, and it reads back as the name."""
    shown = render_each(
        tmp_path, load_render_alerts().shown('(index .Labels "application_name")'), names
    )
    for name, text in zip(names, shown, strict=True):
        assert "\n" not in text and not UNSAFE.search(text), (name, text)
        if text == name:
            assert re.fullmatch(r"[A-Za-z0-9_.:/@+-]+", name)
            continue
        assert text.startswith('"') and text.endswith('"'), text
        # A Go string literal (%q): Python's unicode_escape reads its escapes.
        inner = text[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        assert inner == name
