"""/sessions and the landing page in a real browser, from a running exporter with a real full
server behind it: the page works through the held connection when nobody else can get in."""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest
import yaml

from exporter.config.errors import ConfigError
from exporter.config.model import DEFAULT_DASHBOARDS, DEFAULT_RUNBOOKS, parse_config
from exporter.db.connection import APPLICATION_NAME
from exporter.web.webconfig import WatchedWebConfig
from harness.localpg import LocalCluster, free_port
from harness.workload import SessionSpec, Workload
from tests.browser import chromium, screenshot
from tests.conftest import new_cluster
from tests.helpers import REPO, Samples, http_get, wait_until
from tests.test_diagnose import fill

SECRET_QUERY = "SELECT pg_sleep(86400) /* card 4111-1111 */"


def holders_truth(eye: psycopg.Connection[Any]) -> Counter[tuple[str, str]]:
    rows = eye.execute(
        "SELECT usename::text, application_name FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ).fetchall()
    return Counter((r[0], r[1]) for r in rows)


def exporter_backends(eye: psycopg.Connection[Any]) -> int:
    return eye.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,)
    ).fetchone()[0]


@pytest.fixture(params=["15", "18"])
def full(request: pytest.FixtureRequest, exporter_for):
    """An exporter holding its connection to a server whose every ordinary slot is then
    taken; the test keeps one superuser session (the eye) opened before it filled."""
    cluster = new_cluster(request.param, max_connections=14, superuser_reserved_connections=3)
    try:
        cluster.execute("CREATE ROLE app LOGIN", "CREATE ROLE monitor LOGIN",
                        "GRANT pg_monitor TO monitor")  # fmt: skip
        running = exporter_for(
            {
                "targets": [
                    {"name": "main", "dsn": cluster.dsn(user="monitor", host="127.0.0.1")},
                    {"name": "other", "dsn": cluster.dsn(user="monitor")},
                ],
                "sessions_page": {"enabled": True, "idle_age": "1s"},
            }
        )
        running.scrape_until(lambda s: s.value("pg_up", target="main") == 1, what="target up")
        eye = psycopg.connect(cluster.dsn(application_name="eye"), autocommit=True)
        with Workload(cluster.dsn()) as w:
            active = w.connect(SessionSpec(user="app", application_name="report"))
            active.pgconn.send_query(SECRET_QUERY.encode())
            active.pgconn.flush()
            for _ in range(3):
                w.open(SessionSpec("idle in transaction", user="app", application_name="worker"))
            fill(w, "app", "web")
            time.sleep(1.2)
            yield cluster, running, eye
        eye.close()
    finally:
        cluster.stop()


def test_sessions_page_in_a_browser_on_a_full_server(full) -> None:
    cluster, running, eye = full
    # Nobody else gets in.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn(user="app"), connect_timeout=3).close()
    truth = holders_truth(eye)
    assert truth[("app", "web")] >= 3

    from selenium.webdriver.common.by import By

    with chromium() as driver:
        driver.get(f"{running.url}/sessions?target=main")
        rows = driver.find_elements(By.CSS_SELECTOR, "#holders tr")
        cells = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows[1:]]
        shown = {(c[1], c[2]): int(c[0]) for c in cells}
        # The page leaves out its own session: main's held connection (other's is a holder).
        want = {k: v for k, v in (truth - Counter({("monitor", APPLICATION_NAME): 1})).items()}
        want = {k: v for k, v in want.items() if k[1] != "eye"}
        assert {k: v for k, v in shown.items() if k[1] != "eye"} == want
        counts = [int(c[0]) for c in cells]
        assert counts == sorted(counts, reverse=True)  # biggest holders first
        assert cells[0][2] == "web"
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "ordinary roles may open\n0" in body
        assert "pg_terminate_backend" in body
        candidates = driver.find_element(By.ID, "candidates").text
        assert "web" in candidates and "worker" in candidates
        assert "pg-connections-exporter" not in candidates  # the other target's connection
        assert "pg_sleep" not in driver.page_source  # query texts are off by default
        # Usable on a phone: nothing but the tables' own boxes is wider than the screen.
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
        )
        shot = screenshot(driver, f"sessions-page-{cluster.version_num // 10000}")
        assert shot.stat().st_size > 10_000

        # Refreshed on demand, through the one held connection: scrapes at the same time
        # take turns with it, and the exporter never opens a second one.
        errors: list[BaseException] = []
        stop = threading.Event()

        def scrape_meanwhile() -> None:
            while not stop.is_set():
                try:
                    assert running.scrape().value("pg_up", target="main") == 1
                except BaseException as exc:
                    errors.append(exc)

        scrapers = [threading.Thread(target=scrape_meanwhile) for _ in range(3)]
        for t in scrapers:
            t.start()
        try:
            for _ in range(5):
                driver.find_element(By.ID, "refresh").click()
                wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#holders tr"))
                assert exporter_backends(eye) == 2  # main and other: one each
                time.sleep(0.3)
        finally:
            stop.set()
            for t in scrapers:
                t.join()
        assert not errors, errors[0]

        driver.get(f"{running.url}/")
        rows = driver.find_elements(By.CSS_SELECTOR, "#targets tr")
        by_name = {r.find_elements(By.TAG_NAME, "td")[0].text: r for r in rows[1:]}
        assert set(by_name) == {"main", "other"}
        main = by_name["main"].text
        assert "up, full" in main and "/ 14" in main
        link = by_name["main"].find_element(By.LINK_TEXT, "sessions")
        assert link.get_attribute("href").endswith("/sessions?target=main")
        for text in ("Metrics", "Sessions", "Dashboards", "Runbooks"):
            assert driver.find_element(By.LINK_TEXT, text)
        screenshot(driver, f"landing-page-{cluster.version_num // 10000}")
        link = driver.find_element(By.LINK_TEXT, "sessions")
        link.click()
        assert "Sessions: PostgreSQL" in driver.find_element(By.TAG_NAME, "h1").text


def test_query_texts_only_when_turned_on_and_the_page_is_off_by_default(
    pg: LocalCluster, exporter_for
) -> None:
    on = exporter_for(
        {
            "targets": [{"name": "db", "dsn": pg.dsn()}],
            "sessions_page": {"enabled": True, "query_text": True, "long_query_age": "1s"},
        }
    )
    off = exporter_for({"targets": [{"name": "db", "dsn": pg.dsn()}]})
    with Workload(pg.dsn()) as w:
        conn = w.connect(SessionSpec(application_name="secretive"))
        conn.pgconn.send_query(SECRET_QUERY.encode())
        conn.pgconn.flush()
        time.sleep(1.2)
        status, body, headers = http_get(f"{on.url}/sessions")
        assert status == 200, body
        assert "4111-1111" in body and "secretive" in body
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "<script" not in body and "http" not in body.split("<body", 1)[1].split("href")[0]
        status, body, _ = http_get(f"{off.url}/sessions")
        assert status == 404 and "sessions_page.enabled" in body
        status, body, _ = http_get(f"{on.url}/sessions?target=nope")
        assert status == 404


def test_the_page_refuses_without_credentials(
    pg: LocalCluster, exporter_for, tmp_path: Path
) -> None:
    hashed = bcrypt.hashpw(b"oncall-pw", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  oncall: '{hashed}'\n")
    running = exporter_for(
        {"targets": [{"name": "db", "dsn": pg.dsn()}], "sessions_page": True},
        WatchedWebConfig(str(web)),
    )
    for path in ("/sessions", "/"):
        status, body, headers = http_get(f"{running.url}{path}")
        assert status == 401 and "Basic" in headers["WWW-Authenticate"], path
        assert "Holders" not in body
    auth = {"Authorization": "Basic " + base64.b64encode(b"oncall:oncall-pw").decode()}
    status, body, _ = http_get(f"{running.url}/sessions", auth)
    assert status == 200 and "Holders, biggest first" in body

    from selenium.webdriver.common.by import By

    with chromium() as driver:
        driver.get(f"{running.url}/sessions")
        assert "Holders" not in driver.page_source
        host = running.url.removeprefix("http://")
        driver.get(f"http://oncall:oncall-pw@{host}/sessions")
        assert driver.find_element(By.ID, "holders")


def test_landing_page_shows_utilization_from_the_last_scrape(pg: LocalCluster, exporter_for):
    running = exporter_for(
        {
            "targets": [{"name": "db", "dsn": pg.dsn()}],
            "links": {"grafana": "https://grafana.example/"},
        }
    )
    s: Samples = running.scrape()
    used, limit = (
        s.value("pg_connections_used", target="db"),
        s.value("pg_connections_max", target="db"),
    )
    status, body, _ = http_get(f"{running.url}/")
    assert status == 200
    assert f"{used:.0f} / {limit:.0f}" in body
    assert "https://grafana.example/d/pgce-overview?var-target=db" in body
    assert "/sessions" not in body  # off: no link to it


def test_a_locked_catalog_bounds_the_page_and_leaves_the_held_connection_usable(
    exporter_for,
) -> None:
    """The page's statements wait on a lock no longer than lock_timeout; the held connection
    comes back clean (no transaction left open) and the next scrape and page are whole."""
    cluster = new_cluster("18", max_connections=20)
    try:
        running = exporter_for(
            {
                "targets": [{"name": "db", "dsn": cluster.dsn()}],
                "settings": {"lock_timeout": "300ms"},
                "sessions_page": {"enabled": True, "timeout": "2s"},
            }
        )
        patient = exporter_for(
            {
                "targets": [{"name": "db", "dsn": cluster.dsn()}],
                "settings": {"lock_timeout": "20s", "query_timeout": "20s"},
                "sessions_page": {"enabled": True, "timeout": "500ms"},
            }
        )
        for exporter in (running, patient):
            exporter.scrape_until(lambda s: s.value("pg_up", target="db") == 1, what="up")
        with Workload(cluster.dsn()) as w:
            w.hold_lock("pg_catalog.pg_authid")
            # The page's statements share one budget, whatever the session's timeouts.
            start = time.monotonic()
            status, body, _ = http_get(f"{patient.url}/sessions")
            assert time.monotonic() - start < 3
            assert status == 200 and "did not answer in 0.5s" in body, body
            start = time.monotonic()
            status, body, _ = http_get(f"{running.url}/sessions")
            assert time.monotonic() - start < 5
            assert status == 200 and "waited past lock_timeout" in body, body
            assert "Holders" not in body
        s = running.scrape()
        assert s.value("pg_up", target="db") == 1
        success = s.by("pg_connections_exporter_query_success", "query", target="db")
        assert set(success.values()) == {1.0}, success
        time.sleep(1.1)  # past the reuse of the last page
        for exporter in (running, patient):
            status, body, _ = http_get(f"{exporter.url}/sessions")
            assert status == 200 and "Holders, biggest first" in body
        assert patient.scrape().value("pg_up", target="db") == 1
    finally:
        cluster.stop()


def test_sessions_page_settings_are_validated_and_links_match_the_alerts() -> None:
    base = {"targets": [{"name": "a", "dsn": "host=db"}]}
    assert parse_config({**base, "sessions_page": True}, "t").sessions_page.enabled
    assert not parse_config(base, "t").sessions_page.enabled  # off by default
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "sessions_page": {"idle_age": "soon", "query_texts": True}}, "t")
    assert err.value.problems == [
        "t: sessions_page.idle_age: expected a duration such as 5s, 500ms or 2m, got 'soon'",
        "t: sessions_page.query_texts: Extra inputs are not permitted",
    ]
    thresholds = yaml.safe_load((REPO / "alerts" / "thresholds.yaml").read_text())
    assert thresholds["runbook_base"] == DEFAULT_RUNBOOKS
    assert DEFAULT_DASHBOARDS.startswith(thresholds["runbook_base"].split("/docs/")[0])
    assert (REPO / "dashboards" / "README.md").exists()


def test_the_page_says_why_when_the_target_is_down(exporter_for) -> None:
    running = exporter_for(
        {
            "targets": [
                {"name": "gone", "dsn": f"host=127.0.0.1 port={free_port()} user=u password=pw-9"}
            ],
            "sessions_page": True,
        }
    )
    running.scrape_until(lambda s: s.value("pg_up", target="gone") == 0, what="target down")
    wait_until(lambda: running.exporter.scraper.targets[0].connection.last_failure, what="failure")
    status, body, _ = http_get(f"{running.url}/sessions?target=gone")
    assert status == 200 and "no connection to the target (unreachable)" in body, body
    assert "pw-9" not in body
    status, body, _ = http_get(f"{running.url}/")
    assert "down" in body and "pw-9" not in body
