"""End to end: the notifications name the culprits.

A real PostgreSQL 18 (max_connections=30: 27 slots for ordinary roles) is filled by a big idle
holder (storefront, 18 sessions idle past the reclaimable age), a smaller one (web-batch, 4
sessions idle in transaction, the oldest), and a lock pile-up (migrate holds a lock that 3 api
sessions wait for). The exporter scrapes it with the reclaimable age set to 2 s; a real
Prometheus evaluates the shipped rules (rendered by scripts/render_alerts.py, only the `for`
and thresholds of the three alerts shortened); a real Alertmanager with the example's
templates delivers to a webhook receiver and a Slack endpoint inside the test.

The notifications must say: Exhausted names storefront first with its 18 sessions, 18 of them
reclaimable, and the runbook link; the idle-in-transaction alert names web-batch; the lock
pile-up names migrate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from harness.workload import SessionSpec, Workload
from tests.conftest import new_cluster, require_program
from tests.helpers import REPO, load_render_alerts, wait_until
from tests.prometheus_server import AlertmanagerServer, PrometheusServer, ServerProcess
from tests.test_alerts_e2e import Webhook, webhook_receiver

TARGET = "e2e"
AGE = 2  # seconds: the reclaimable age of this test's exporter (10 minutes by default)
RUNBOOKS = (
    "https://github.com/pg-connections-exporter/pg-connections-exporter/blob/main/docs/runbooks"
)


def shortened_rules(path: Path) -> str:
    """The shipped rules with the three alerts under test made fast; the job they select."""
    renderer = load_render_alerts()
    t = renderer.load_thresholds()
    t["alerts"]["PostgresConnectionsExhausted"].update({"window": "5s", "for": "3s"})
    t["alerts"]["PostgresIdleInTransactionTooLong"].update(
        {"warning_seconds": 2, "critical_seconds": 86400, "for": "2s"}
    )
    t["alerts"]["PostgresLockPileUp"].update({"waiting": 3, "for": "2s"})
    path.write_text(renderer.dump({"groups": renderer.render_groups(t)}))
    return t["job"]


def alertmanager_config(hook: Webhook) -> dict[str, Any]:
    """The example's routes and templates; every receiver a webhook to the test (path = the
    receiver's name), the pager also posting the example's Slack message to /slack. No
    inhibition: here the warnings are wanted next to the page."""
    example = yaml.safe_load((REPO / "alerts" / "alertmanager.example.yml").read_text())
    (slack,) = next(r for r in example["receivers"] if r["name"] == "pager")["slack_configs"]
    receivers = []
    for r in example["receivers"]:
        receiver: dict[str, Any] = {
            "name": r["name"],
            "webhook_configs": [{"url": f"{hook.url}/{r['name']}"}],
        }
        if r["name"] == "pager":
            receiver["slack_configs"] = [{**slack, "api_url": f"{hook.url}/slack"}]
        receivers.append(receiver)
    route = example["route"]
    route.update(group_wait="0s", group_interval="1s", repeat_interval="1h")
    for child in route.get("routes", []):
        for key in ("group_wait", "group_interval", "repeat_interval"):
            child.pop(key, None)
    return {
        "templates": [str(REPO / "alerts" / t) for t in example["templates"]],
        "route": route,
        "receivers": receivers,
    }


def firing(hook: Webhook, alertname: str) -> dict[str, Any] | None:
    for note in hook.notifications():
        for alert in note.get("alerts", []):
            labels = alert["labels"]
            if labels.get("alertname") == alertname and alert["status"] == "firing":
                return alert
    return None


def slack_message(hook: Webhook) -> dict[str, Any] | None:
    for note in hook.notifications():
        if note["_path"] == "/slack" and "PostgresConnectionsExhausted" in str(note):
            return note
    return None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_notifications_name_the_holders_the_idle_in_transaction_and_the_blocker(
    tmp_path: Path, exporter_for
) -> None:
    prometheus_bin = require_program("prometheus")
    alertmanager_bin = require_program("prometheus-alertmanager")
    cluster = new_cluster("18", max_connections=30)
    servers: list[ServerProcess] = []
    try:
        cluster.execute(
            "CREATE ROLE shop LOGIN",
            "CREATE ROLE batch LOGIN",
            "CREATE TABLE orders (x int)",
            "GRANT SELECT ON orders TO shop, batch",
            "GRANT ALL ON orders TO batch",
        )
        cluster.hba_prepend("host all all 127.0.0.1/32 trust", "host all all ::1/128 trust")
        config = {
            "targets": [{"name": TARGET, "dsn": cluster.dsn()}],
            "collectors": {"params": {"connections": {"reclaimable_idle_age": AGE}}},
        }
        running = exporter_for(config)
        running.scrape_until(lambda s: s.get("pg_up") == 1, what="pg_up 1")

        with webhook_receiver() as hook, Workload(cluster.dsn()) as w:
            am = AlertmanagerServer(alertmanager_bin, alertmanager_config(hook))
            servers.append(am)
            am.start()
            job = shortened_rules(tmp_path / "rules.yml")
            prom = PrometheusServer(
                prometheus_bin,
                [f"127.0.0.1:{running.exporter.port}"],
                job=job,
                rule_files=[tmp_path / "rules.yml"],
                alertmanager=f"127.0.0.1:{am.port}",
            )
            servers.append(prom)
            prom.start()

            # The smaller holder first, so that its transactions are the oldest; then the big
            # one, left idle until the exporter counts all of it reclaimable.
            w.open_many(
                [SessionSpec("idle in transaction", "batch", application_name="web-batch")] * 4
            )
            w.open_many(
                [SessionSpec("idle", "shop", application_name="storefront", host="127.0.0.1")] * 18
            )
            running.scrape_until(
                lambda s: (
                    s.get(
                        "pg_connections_reclaimable_by_application", application_name="storefront"
                    )
                    == 18
                ),
                what="storefront's 18 sessions reclaimable",
            )
            w.hold_lock(
                "orders", SessionSpec("idle in transaction", "batch", application_name="migrate")
            )
            for _ in range(3):
                w.wait_for_lock(
                    "orders", SessionSpec("active", "shop", application_name="api", host="::1")
                )
            with pytest.raises(psycopg.OperationalError):  # 1 + 4 + 18 + 1 + 3 = 27: full
                w.open(SessionSpec("idle", "shop", application_name="one-too-many"))
            running.scrape_until(
                lambda s: (
                    s.get("pg_connections_available") == 0
                    and s.get("pg_connections_blocked_by_application", application_name="migrate")
                    == 3
                ),
                what="no slot left and the pile-up behind migrate",
            )

            exhausted = wait_until(
                lambda: firing(hook, "PostgresConnectionsExhausted"), 60, 0.2, "Exhausted"
            )
            lines = exhausted["annotations"]["description"].split("\n")
            assert lines[1] == f"27 of 27 slots in use, 18 idle >{AGE}s (reclaimable).", lines
            apps = re.fullmatch(
                rf"Apps: storefront 18 \(18 idle >{AGE}s\), "
                r"web-batch 4 \(4 idle in transaction, oldest (\d+)s\), api 3",
                lines[2],
            )
            assert apps, lines[2]
            assert lines[3] == f"Users: shop 21 (18 idle >{AGE}s), batch 5", lines
            assert lines[4] == f"Clients: 127.0.0.1 18 (18 idle >{AGE}s), local 5, ::1 3", lines
            assert lines[5] == "Blocking: migrate (1 session(s)) blocks 3", lines
            assert lines[6] == (
                f"Do: terminate the sessions of storefront idle >{AGE}s"
                " (connection-recovery.md step 2)."
            )
            assert lines[7] == (
                "Do: end the blockers, not their waiters (connection-recovery.md step 3)."
            )
            assert exhausted["annotations"]["runbook_url"] == (
                f"{RUNBOOKS}/PostgresConnectionsExhausted.md"
            )

            slack = wait_until(lambda: slack_message(hook), 30, 0.2, "the Slack message")
            (attachment,) = slack["attachments"]
            assert attachment["title"].startswith(f"[FIRING:1] {TARGET}: PostgreSQL has no")
            assert attachment["title_link"] == f"{RUNBOOKS}/PostgresConnectionsExhausted.md"
            # Slack's text escapes > as &gt; (Slack reads a raw one as markup).
            shown = f"```{lines[0]}\n{lines[1]}\nApps: storefront 18".replace(">", "&gt;")
            assert shown in attachment["text"]

            idle_tx = wait_until(
                lambda: firing(hook, "PostgresIdleInTransactionTooLong"), 60, 0.2, "idle in tx"
            )
            tx_lines = idle_tx["annotations"]["description"].split("\n")
            assert re.fullmatch(
                r"Oldest: web-batch, idle in transaction for \d+s"
                r" \(4 session\(s\) of it idle in transaction\)\.",
                tx_lines[1],
            ), tx_lines
            assert tx_lines[2].startswith("Do: end that application's idle-in-transaction")

            pile_up = wait_until(lambda: firing(hook, "PostgresLockPileUp"), 60, 0.2, "pile-up")
            assert pile_up["annotations"]["description"].split("\n")[1:] == [
                "Blocking: migrate (1 session(s)) blocks 3",
                "Do: end the blocking session(s) of migrate, not their waiters"
                " (connection-recovery.md step 3).",
            ]
    except BaseException:
        for server in servers:
            print(f"--- {server.name} log ---\n{server.log_tail(60)}")
        raise
    finally:
        for server in servers:
            server.stop()
        cluster.stop()
