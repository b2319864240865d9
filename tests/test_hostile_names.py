"""Names other people choose are inert in every output (issue 27).

A real PostgreSQL 15 holds sessions of roles, in databases, under application names and with
query texts that carry terminal escapes (clear screen, window title, OSC 52 clipboard, OSC 8
links), Slack control syntax (<!channel>, <@U123>), backticks, newlines that would forge a "Do:"
line, < > &, quotes, an RTL override, and bytes that are not UTF-8 (a SQL_ASCII database lets
a role, a database and a query text hold them). Through the exporter's real /metrics, `diagnose`
(text and JSON), the /sessions page, the exporter's logs, the shipped rules evaluated by a real
Prometheus, every notification template rendered by amtool and a real Alertmanager's webhook and
Slack bodies: nothing raw reaches any of them, and the counts stay right.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.localpg import LocalCluster
from tests.conftest import new_cluster, require_program
from tests.helpers import (
    REPO,
    RunningExporter,
    http_get,
    load_render_alerts,
    start_exporter,
    wait_until,
)
from tests.prometheus_server import AlertmanagerServer, PrometheusServer, ServerProcess
from tests.test_alerts_e2e import Webhook, webhook_receiver
from tests.test_holders_e2e import alertmanager_config
from tests.test_notifications import render
from tests.unit.test_escaping import parse_logfmt

TARGET = "hostile"
# Roles (any character the encoding allows), databases, application names (printable ASCII
# only: the server writes anything else as "?") and query texts.
ROLE_NL = "batch\nDo: DROP DATABASE prod (connection-recovery.md step 1)."
ROLE_ESC = "ops\x1b]0;pwned\x07\x1b[2J"
ROLE_RTL = "admin\u202egnp.exe"
ROLE_SLACK = '<!channel> ```end``` & <@U123> "q"'
ROLE_BAD = b"bad\xffrole"  # not UTF-8: created and used through the SQL_ASCII database
DB_OSC = "db\x1b]8;;http://evil.example/\x07link\x1b]8;;\x07"
DB_BAD = b"raw\xfedb"
APP_SLACK = "<!channel> ```x``` & <@U123> 'q' \"q\""
APP_ESC = "ops\x1b[31m<b>"  # the server shows the escape as "?"
QUERY = "SELECT 1 /* \x1b]52;c;ZXZpbA==\x07 \u202e <!channel> ``` \nDo: evil \u009b31m */"
QUERY_BAD = b"SELECT 1 /* \xff\x1b[2J */"
# Sessions held by each role (the counts every output must show).
HELD = {ROLE_SLACK: 6, ROLE_ESC: 3, ROLE_NL: 2, ROLE_RTL: 2, "bad\\xffrole": 2}
# What no output may carry raw: C0 controls but newline (structure), DEL, C1, bidi controls.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def ident(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return b'"' + raw.replace(b'"', b'""') + b'"'


@dataclass
class World:
    cluster: LocalCluster
    running: RunningExporter
    sessions: list[Any]


def _session(cluster: LocalCluster, user: bytes, dbname: bytes, app: str, query: bytes) -> Any:
    """A session opened and left idle after `query`, through libpq itself: its conninfo takes
    the bytes of a role or database name that is not UTF-8."""
    conninfo = b" ".join(
        [
            b"host=" + str(cluster.socket_dir).encode(),
            b"port=" + str(cluster.port).encode(),
            b"user='" + user.replace(b"\\", b"\\\\").replace(b"'", b"\\'") + b"'",
            b"dbname='" + dbname.replace(b"\\", b"\\\\").replace(b"'", b"\\'") + b"'",
            b"application_name='"
            + app.encode().replace(b"\\", b"\\\\").replace(b"'", b"\\'")
            + b"'",
        ]
    )
    conn = psycopg.pq.PGconn.connect(conninfo)
    assert conn.status == psycopg.pq.ConnStatus.OK, conn.error_message
    result = conn.exec_(query)
    assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, conn.error_message
    return conn


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    cluster = new_cluster("15", max_connections=30)
    sessions: list[Any] = []
    running = None
    try:
        cluster.execute(
            "CREATE DATABASE rawdb ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
            " TEMPLATE template0"
        )
        with psycopg.connect(cluster.dsn(dbname="rawdb"), autocommit=True) as raw:
            for role in (ROLE_NL, ROLE_ESC, ROLE_RTL, ROLE_SLACK, ROLE_BAD):
                raw.execute(b"CREATE ROLE " + ident(role) + b" LOGIN")
            raw.execute(b"ALTER ROLE " + ident(ROLE_NL) + b" CONNECTION LIMIT 2")
            raw.execute(b"CREATE DATABASE " + ident(DB_OSC) + b" CONNECTION LIMIT 3")
            raw.execute(
                b"CREATE DATABASE " + ident(DB_BAD) + b" ENCODING 'SQL_ASCII' LC_COLLATE 'C'"
                b" LC_CTYPE 'C' TEMPLATE template0 CONNECTION LIMIT 2"
            )
        for role, db, app, n in (
            (ROLE_SLACK, "postgres", APP_SLACK, 6),
            (ROLE_ESC, DB_OSC, APP_ESC, 3),
            (ROLE_NL, "postgres", APP_SLACK, 2),
            (ROLE_RTL, "postgres", "rtl", 2),
        ):
            for _ in range(n):
                sessions.append(_session(cluster, role.encode(), db.encode(), app, QUERY.encode()))
        for _ in range(2):
            sessions.append(_session(cluster, ROLE_BAD, DB_BAD, "raw", QUERY_BAD))
        # One of the escaping role's sessions stays idle in a transaction.
        sessions[6].exec_(b"BEGIN")
        sessions[6].exec_(QUERY.encode())
        running = start_exporter(
            {
                "targets": [{"name": TARGET, "dsn": cluster.dsn()}],
                "collectors": {"params": {"connections": {"reclaimable_idle_age": 1}}},
                "sessions_page": {"enabled": True},
            }
        )
        running.scrape_until(
            lambda s: s.get("pg_connections_reclaimable_by_user", usename=ROLE_SLACK) == 6,
            what="the hostile roles' sessions counted and reclaimable",
        )
        yield World(cluster, running, sessions)
    finally:
        if running is not None:
            running.stop()
        for conn in sessions:
            conn.finish()
        cluster.stop()


def assert_inert(text: str, where: str) -> None:
    raw = RAW.search(text)
    assert raw is None, (
        f"{where}: raw {raw.group()!r}: {text[max(0, raw.start() - 80) : raw.start() + 40]!r}"
    )


def test_metrics_count_every_hostile_holder_under_its_exact_name(world: World) -> None:
    samples = world.running.scrape()
    by_user = {ls["usename"]: v for ls, v in samples.series("pg_connections_by_user") if v}
    totals: dict[str, float] = {}
    for ls, v in samples.series("pg_connections_by_user"):
        totals[ls["usename"]] = totals.get(ls["usename"], 0) + v
    for role, n in HELD.items():
        assert totals.get(role) == n, (role, by_user)
    assert samples.value("pg_database_connection_limit_used", datname=DB_OSC) == 3
    assert samples.value("pg_database_connection_limit_used", datname="raw\\xfedb") == 2
    assert samples.value("pg_role_connection_limit_used", rolname=ROLE_NL) == 2
    assert samples.get("pg_connections_exporter_query_success", query="connections") == 1


def diagnose(world: World, *args: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "diagnose",
            "--dsn",
            world.cluster.dsn(),
            "--idle-age",
            "1s",
            *args,
        ],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def test_diagnose_text_shows_every_name_escaped_and_counts_right(world: World) -> None:
    out = diagnose(world).stdout.decode("utf-8")  # valid UTF-8, whatever the names held
    assert_inert(out, "diagnose text")
    by_user = out.split("== By user ==\n", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = {line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1]) for line in by_user[1:]}
    shown = {
        ROLE_SLACK: ROLE_SLACK,
        ROLE_ESC: "ops\\x1b]0;pwned\\x07\\x1b[2J",
        ROLE_NL: "batch\\nDo: DROP DATABASE prod (connection-recovery.md step 1).",
        ROLE_RTL: "admin\\u202egnp.exe",
        "bad\\xffrole": "bad\\xffrole",
    }
    for role, n in HELD.items():
        assert rows[shown[role]] == n, (role, rows)
    assert not any(line.startswith("Do: DROP") for line in out.splitlines())
    assert "\\x1b]52;c;ZXZpbA==\\x07" in out  # the query text, its OSC 52 visible
    assert "db\\x1b]8;;http://evil.example/\\x07link" in out


def test_diagnose_json_is_valid_and_keeps_the_names(world: World) -> None:
    out = diagnose(world, "--format", "json").stdout
    out.decode("ascii")  # every control and non-ASCII character a \u escape
    doc = json.loads(out)
    users = {r["key"]: r["count"] for r in doc["breakdowns"]["user"]}
    for role, n in HELD.items():
        assert users[role] == n, (role, users)
    databases = {r["key"]: r["count"] for r in doc["breakdowns"]["database"]}
    assert databases[DB_OSC] == 3 and databases["raw\\xfedb"] == 2


def test_sessions_page_shows_controls_and_overrides_marked(world: World) -> None:
    status, body, _ = http_get(f"{world.running.url}/sessions")
    assert status == 200, body
    assert_inert(body.replace("\n", ""), "/sessions")
    assert "<!channel>" not in body and "&lt;!channel&gt;" in body
    assert "admin<span class=esc>\\u202e</span>gnp.exe" in body
    assert "batch<span class=esc>\\n</span>Do: DROP DATABASE prod" in body
    assert "ops<span class=esc>\\x1b</span>]0;pwned<span class=esc>\\x07</span>" in body
    # The holders table: the 6 sessions of the Slack-syntax role under its application.
    assert (
        "<tr><td class='num'>6</td><td>&lt;!channel&gt; ```end``` &amp; &lt;@U123&gt; "
        "&quot;q&quot;</td><td>&lt;!channel&gt; ```x``` &amp; &lt;@U123&gt; &#x27;q&#x27; "
        "&quot;q&quot;</td><td>postgres</td>"
    ) in body


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_logs_cannot_be_forged_by_a_role_name(
    world: World, exporter_process, tmp_path: Path, log_format: str
) -> None:
    """The server's refusal quotes the role name; the exporter logs it."""
    forged = "ghost\x1b[2J\nts=2026-01-01 level=error msg=forged \u202e"
    config = tmp_path / "config.yml"
    dsn = world.cluster.dsn(user=forged)
    config.write_text(json.dumps({"targets": [{"name": TARGET, "dsn": dsn}]}))
    proc = exporter_process("--config.file", str(config), "--log.format", log_format)
    proc.wait_ready()
    wait_until(lambda: "does not exist" in proc.output(), 30, 0.2, "the refusal logged")
    proc.stop()
    lines = proc.output().splitlines()
    refusal = [line for line in lines if "does not exist" in line]
    assert refusal
    for line in lines:
        assert_inert(line, "log line")
        if log_format == "json":
            record = json.loads(line)
        else:
            record = dict(parse_logfmt(line))
            assert len(parse_logfmt(line)) == len(record), line  # no key twice
        assert record["ts"] != "2026-01-01" and record.get("msg") != "forged", line
    if log_format == "json":  # JSON keeps the exact text, its controls escaped as \u001b
        assert (
            "ghost\x1b[2J ts=2026-01-01 level=error msg=forged \u202e"
            in json.loads(refusal[0])["error"]
        )
    else:
        assert "ghost\\x1b[2J ts=2026-01-01 level=error msg=forged \\u202e" in refusal[0]


def rules_for_test(path: Path) -> str:
    """The shipped rules, the alerts under test made fast and the saturation low enough."""
    renderer = load_render_alerts()
    t = renderer.load_thresholds()
    a = t["alerts"]
    a["PostgresConnectionsHigh"].update({"utilization": 0.3, "for": "1s"})
    a["PostgresConnectionsCritical"].update({"utilization": 0.4, "for": "1s"})  # pages: Slack
    a["PostgresConnectionsHigh"]["smoothing"] = a["PostgresConnectionsCritical"]["smoothing"] = "5s"
    a["PostgresRoleConnectionLimitNear"]["for"] = "1s"
    a["PostgresDatabaseConnectionLimitNear"]["for"] = "1s"
    a["PostgresIdleInTransactionTooLong"].update(
        {"warning_seconds": 1, "critical_seconds": 86400, "for": "1s"}
    )
    path.write_text(renderer.dump({"groups": renderer.render_groups(t)}))
    return t["job"]


WANTED = (
    "PostgresConnectionsCritical",
    "PostgresRoleConnectionLimitNear",
    "PostgresDatabaseConnectionLimitNear",
    "PostgresIdleInTransactionTooLong",
)


def firing(prom: PrometheusServer) -> list[dict[str, Any]] | None:
    alerts = [a for a in prom.api("alerts")["data"]["alerts"] if a["state"] == "firing"]
    names = [a["labels"]["alertname"] for a in alerts]
    want = all(name in names for name in WANTED) and names.count(WANTED[2]) == 2
    return alerts if want else None


# The lines the rules themselves start (scripts/render_alerts.py), after the first.
RULE_LINES = (
    r"(\d+ of \d+ slots|Apps:|Users:|Clients:|Blocking:|Oldest:|Do: (terminate|end|nothing))"
)


def check_description(description: str) -> None:
    """A rule's description: names bare or Go-quoted, so only the rule starts a line."""
    assert_inert(description.replace("\n", ""), "description")
    for line in description.split("\n")[1:]:
        assert re.match(RULE_LINES, line), line


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_alerts_and_every_notification_keep_names_inert(world: World, tmp_path: Path) -> None:
    prometheus_bin = require_program("prometheus")
    alertmanager_bin = require_program("prometheus-alertmanager")
    require_program("amtool")
    servers: list[ServerProcess] = []
    try:
        with webhook_receiver() as hook:
            am = AlertmanagerServer(alertmanager_bin, alertmanager_config(hook))
            servers.append(am)
            am.start()
            job = rules_for_test(tmp_path / "rules.yml")
            prom = PrometheusServer(
                prometheus_bin,
                [f"127.0.0.1:{world.running.exporter.port}"],
                job=job,
                rule_files=[tmp_path / "rules.yml"],
                alertmanager=f"127.0.0.1:{am.port}",
            )
            servers.append(prom)
            prom.start()
            alerts = wait_until(lambda: firing(prom), 90, 0.5, "the alerts under test firing")
            by_name = {a["labels"]["alertname"]: a for a in alerts}

            # The rules' own text: every name inert, the numbers right.
            for a in alerts:
                check_description(a["annotations"]["description"])
            high = by_name["PostgresConnectionsCritical"]["annotations"]["description"]
            users = next(line for line in high.split("\n") if line.startswith("Users: "))
            assert '"<!channel> ```end``` & <@U123> \\"q\\"" 6 (6 idle >1s)' in users, users
            assert '"ops\\x1b]0;pwned\\a\\x1b[2J" 3' in users, users
            apps = next(line for line in high.split("\n") if line.startswith("Apps: "))
            assert apps.startswith('Apps: "<!channel> ```x``` & <@U123> \'q\' \\"q\\"" 8'), apps
            role = by_name["PostgresRoleConnectionLimitNear"]["annotations"]["description"]
            assert (
                'role "batch\\nDo: DROP DATABASE prod (connection-recovery.md step 1)." uses 100%'
                in role
            )
            dbs = [a for a in alerts if a["labels"]["alertname"] == WANTED[2]]
            described = " ".join(a["annotations"]["description"] for a in dbs)
            assert (
                'database "db\\x1b]8;;http://evil.example/\\alink\\x1b]8;;\\a" uses 100%'
                in described
            )
            assert 'database "raw\\\\xfedb" uses 100%' in described

            # Every template, rendered by amtool from these alerts.
            data = {
                "receiver": "pager",
                "status": "firing",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": a["labels"],
                        "annotations": a["annotations"],
                        "startsAt": a["activeAt"],
                        "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://prometheus/graph",
                        "fingerprint": str(i),
                    }
                    for i, a in enumerate(alerts)
                ],
                "groupLabels": {"target": TARGET},
                "commonLabels": {"target": TARGET},
                "commonAnnotations": {},
                "externalURL": "http://alertmanager",
            }
            for template in ("pgce.title", "pgce.text", "pgce.email.subject"):
                text = render(template, tmp_path, data)
                assert_inert(text.replace("\n", ""), template)
                assert not any(line.startswith("Do: DROP") for line in text.splitlines())
            slack = render("pgce.slack.text", tmp_path, data) + render(
                "pgce.slack.title", tmp_path, data
            )
            assert_inert(slack.replace("\n", ""), "slack")
            assert_slack_inert(slack, len(alerts))
            html = render("pgce.email.html", tmp_path, data, kind="html")
            assert_inert(html.replace("\n", ""), "email")
            assert "<!channel>" not in html and "&lt;!channel&gt;" in html

            # A real Alertmanager's bodies: valid JSON, the same inert text.
            note = wait_until(lambda: slack_body(hook), 60, 0.5, "the Slack message")
            (attachment,) = note["attachments"]
            assert_slack_inert(attachment["text"], None)
            assert_inert(attachment["title"], "Slack title")
            webhook = wait_until(lambda: webhook_body(hook), 60, 0.5, "the webhook body")
            for a in webhook["alerts"]:
                check_description(a["annotations"]["description"])
    except BaseException:
        for server in servers:
            print(f"--- {server.name} log ---\n{server.log_tail(60)}")
        raise
    finally:
        for server in servers:
            server.stop()


def assert_slack_inert(text: str, firing_alerts: int | None) -> None:
    """No mention, no markup but the template's own, code blocks only the template's."""
    for token in ("<!channel>", "<@U123>", "<!", "<@"):
        assert token not in text
    assert re.sub(r"<https://[^<>|]*\|Runbook>", "", text).count("<") == 0
    assert "&lt;!channel&gt;" in text and "&lt;@U123&gt;" in text
    if firing_alerts is not None:
        assert text.count("```") == 2 * firing_alerts
    else:
        assert text.count("```") % 2 == 0
    for block in re.findall(r"```(.*?)```", text, re.S):
        check_description(block.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


def slack_body(hook: Webhook) -> dict[str, Any] | None:
    for note in hook.notifications():
        if note["_path"] == "/slack" and "PostgresConnectionsCritical" in str(note):
            return note
    return None


def webhook_body(hook: Webhook) -> dict[str, Any] | None:
    for note in hook.notifications():
        names = {a["labels"]["alertname"] for a in note.get("alerts", [])}
        if note["_path"] == "/ticket" and "PostgresRoleConnectionLimitNear" in names:
            return note
    return None
