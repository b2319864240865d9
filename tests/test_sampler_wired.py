"""The sampler wired into the exporter (exporter/scrape/samplers.py), against real PostgreSQL
and real Prometheus servers (issue 26, Proof):

- a storm of about 3 s that reaches exhaustion and ends between two scrapes of a Prometheus
  scraping every 15 s: the peak gauge shows the true peak, the seconds at exhaustion grow by
  3 +/- 1, and PostgresConnectionsBrieflyExhausted (the shipped rules) goes pending or firing;
  before it the quiet server reads zeros. A second Prometheus scraping every 2 s reads the same
  totals.
- a full server, a server that stops answering (its backend SIGSTOPped) and one that goes
  down: every scrape keeps its deadline, ticks missed are counted by reason, and neither the
  sampler tasks, the loop's tasks nor the threads pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config.model import parse_config
from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload
from tests.conftest import new_cluster, require_program
from tests.helpers import RunningExporter, Samples, http_get, wait_until
from tests.prometheus_server import PrometheusServer, ServerProcess
from tests.test_alerts_e2e import e2e_rules

ALERT = "PostgresConnectionsBrieflyExhausted"
TARGET = "storm"
ORDINARY_SLOTS = 9  # max_connections 12 - superuser_reserved_connections 3


def client_backends(observer: psycopg.Connection[Any]) -> int:
    row = observer.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def storm(cluster: LocalCluster, observer: psycopg.Connection[Any], hold: float = 3.0) -> int:
    """Open ordinary-role sessions until the server refuses one, hold them `hold` seconds
    from that moment, close them; the client backends counted while full (the true peak)."""
    with Workload(cluster.dsn(user="app")) as workload:
        for _ in range(20):
            try:
                workload.open(SessionSpec("idle", user="app"))
            except psycopg.OperationalError:
                break
        else:
            raise AssertionError("the server took 20 sessions of an ordinary role")
        full_at = time.monotonic()
        # The refused attempt's backend counts until it has exited: the truth is the count
        # once two reads 0.2 s apart agree (as tests/test_sampling.py reads it).
        counts: list[int] = []

        def settled() -> bool:
            counts.append(client_backends(observer))
            return len(counts) > 1 and counts[-1] == counts[-2]

        wait_until(settled, 2.5, 0.2, "the client backends to settle")
        time.sleep(max(0.0, full_at + hold - time.monotonic()))
    wait_until(
        lambda: client_backends(observer) < ORDINARY_SLOTS, what="the storm's backends to exit"
    )
    return counts[-1]


def last(prom: PrometheusServer, expr: str) -> dict[str, float]:
    """An instant query's values by `level` (or "" for series without one)."""
    return {labels.get("level", ""): value for labels, value in prom.vector(expr)}


def scraped_since(prom: PrometheusServer, when: float) -> bool:
    """Whether `prom` has scraped the exporter after wall-clock time `when`."""
    got = prom.vector(f'timestamp(pg_up{{target="{TARGET}"}})')
    return bool(got) and got[0][1] > when


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_storm_between_two_scrapes_is_seen_counted_and_alerted(
    tmp_path: Path, exporter_for
) -> None:
    prometheus_bin = require_program("prometheus")
    cluster = new_cluster("15", max_connections=12)
    servers: list[ServerProcess] = []
    try:
        cluster.execute("CREATE ROLE app LOGIN")
        running: RunningExporter = exporter_for(
            {"targets": [{"name": TARGET, "dsn": cluster.dsn()}]}
        )
        running.scrape_until(lambda s: s.get("pg_up", target=TARGET) == 1, what="pg_up 1")
        address = f"127.0.0.1:{running.exporter.port}"
        job = e2e_rules(tmp_path / "rules.yml", ALERT, **{"for": "0s"})
        slow = PrometheusServer(
            prometheus_bin, [address], job=job, rule_files=[tmp_path / "rules.yml"], interval="15s"
        )
        fast = PrometheusServer(prometheus_bin, [address], job=job, interval="2s")
        servers += [slow, fast]
        slow.start()
        fast.start()
        seconds = f'pg_connections_saturation_seconds_total{{target="{TARGET}"}}'
        peak = f'pg_connections_used_peak{{target="{TARGET}"}}'
        wait_until(lambda: last(slow, seconds), 40, 0.2, "Prometheus to scrape the sampler")

        with psycopg.connect(cluster.dsn(), autocommit=True) as observer:
            # Quiet: zeros at every level, a peak of a few sessions, no alert.
            assert last(slow, seconds) == {"0.8": 0, "0.9": 0, "1": 0}
            assert last(slow, peak)[""] < ORDINARY_SLOTS * 0.8
            # Just after one of the slow Prometheus's scrapes, a storm of 3 s.
            seen = slow.vector(f'timestamp(pg_up{{target="{TARGET}"}})')[0][1]
            wait_until(lambda: scraped_since(slow, seen), 20, 0.05, "the next 15 s scrape")
            scraped_at = slow.vector(f'timestamp(pg_up{{target="{TARGET}"}})')[0][1]
            before = last(slow, seconds)
            assert before == {"0.8": 0, "0.9": 0, "1": 0}
            truth = storm(cluster, observer)
            over = time.time()
            assert over < scraped_at + 15, "the storm did not end between two scrapes"
            wait_until(lambda: scraped_since(slow, over), 20, 0.1, "a scrape after the storm")

        # The scrapes saw an ordinary server; the sampler saw the storm.
        scraped = last(slow, f'max_over_time(pg_connections_used{{target="{TARGET}"}}[5m])')
        assert scraped[""] < ORDINARY_SLOTS, scraped
        # The true peak (a refused attempt's backend, there for a moment, may add one).
        assert truth <= last(slow, peak)[""] <= truth + 1, (truth, last(slow, peak))
        after = last(slow, seconds)
        assert 2.0 <= after["1"] - before["1"] <= 4.0, after  # 3 +/- 1
        assert after["0.8"] >= after["1"] and after["0.9"] >= after["1"]

        def alerted() -> dict[str, Any] | None:
            active = slow.api("alerts")["data"]["alerts"]
            return next((a for a in active if a["labels"]["alertname"] == ALERT), None)

        alert = wait_until(alerted, 30, 0.2, f"{ALERT} pending or firing")
        assert alert["state"] in ("pending", "firing")
        assert alert["labels"]["target"] == TARGET
        description = alert["annotations"]["description"]
        assert f"peak {last(slow, peak)['']:g}" in description, description

        # Two Prometheus servers at 15 s and 2 s read the same totals (nothing resets on read).
        wait_until(lambda: scraped_since(fast, over), 10, 0.1, "the 2 s Prometheus after it")
        assert last(fast, seconds) == after
    except BaseException:
        for server in servers:
            print(f"--- {server.name} log ---\n{server.log_tail(40)}")
        raise
    finally:
        for server in servers:
            server.stop()
        cluster.stop()


def timed_scrape(running: RunningExporter, timeout: float) -> tuple[float, Samples]:
    """A scrape with Prometheus's timeout header; how long it took and what it read."""
    start = time.monotonic()
    status, body, _ = http_get(
        f"{running.url}/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": f"{timeout:g}"}, 30
    )
    assert status == 200, body
    return time.monotonic() - start, Samples(body)


def missed(s: Samples) -> dict[str, float]:
    return s.by("pg_connections_exporter_samples_missed_total", "reason", target=TARGET)


def loop_tasks(running: RunningExporter) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return running.exporter.scraper.call(count())


def exporter_backend(observer: psycopg.Connection[Any]) -> int:
    """The exporter's one backend (sampling never opens a second)."""
    rows = observer.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg-connections-exporter'"
    ).fetchall()
    assert len(rows) == 1, rows
    return int(rows[0][0])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_full_silent_and_down_servers_keep_scrape_deadlines_and_nothing_piles_up(
    exporter_for,
) -> None:
    cluster = new_cluster("15", max_connections=12)
    stopped: int | None = None
    try:
        cluster.execute("CREATE ROLE app LOGIN")
        running: RunningExporter = exporter_for(
            {
                "targets": [{"name": TARGET, "dsn": cluster.dsn(), "connect_timeout": "2s"}],
                "settings": {"query_timeout": "1s", "scrape_timeout": "4s"},
            }
        )
        running.scrape_until(
            lambda s: (s.get("pg_connections_exporter_samples_total", target=TARGET) or 0) >= 2,
            what="samples taken",
        )
        threads, tasks = threading.active_count(), loop_tasks(running)
        samplers = running.exporter.samplers
        assert samplers.tasks == 1
        deadline = 3.0  # the Prometheus timeout each scrape below is given

        def scrapes_for(seconds: float) -> Samples:
            """Scrape for `seconds`: each answered within its deadline (plus the HTTP
            round trip), the tasks and threads bounded throughout."""
            end = time.monotonic() + seconds
            while True:
                took, s = timed_scrape(running, deadline)
                assert took < deadline + 0.5, took
                assert samplers.tasks == 1
                assert loop_tasks(running) <= tasks + 3  # a scrape's own runs, at most
                assert threading.active_count() <= max(threads, 7) + 2
                if time.monotonic() >= end:
                    return s
                time.sleep(0.3)

        with psycopg.connect(cluster.dsn(), autocommit=True) as observer:
            backend = exporter_backend(observer)
            # Full: the sampler keeps sampling on its held connection, never gives up its slot.
            with Workload(cluster.dsn(user="app")) as workload:
                with contextlib.suppress(psycopg.OperationalError):
                    for _ in range(20):
                        workload.open(SessionSpec("idle", user="app"))
                taken = running.scrape().value(
                    "pg_connections_exporter_samples_total", target=TARGET
                )
                s = scrapes_for(4.0)
                assert s.value("pg_connections_exporter_samples_total", target=TARGET) >= taken + 2
                assert s.value("pg_connections_used_peak", target=TARGET) >= ORDINARY_SLOTS
                assert exporter_backend(observer) == backend
            # Silent: the exporter's backend stopped mid-session (no answer, no error).
            before = missed(running.scrape())
            stopped = backend
            os.kill(backend, signal.SIGSTOP)
            s = scrapes_for(9.0)  # past query_timeout + 5 s: the watchdog has cut it
            assert sum(missed(s).values()) > sum(before.values()), (before, missed(s))
            os.kill(backend, signal.SIGCONT)
            stopped = None
            # A new connection and samples again.
            running.scrape_until(lambda s: s.get("pg_up", target=TARGET) == 1, 20, "pg_up 1")
        # Down: missed as `down`, every scrape still on time.
        down_before = missed(running.scrape())["down"]
        cluster.shutdown()
        # Unscraped a while: a scrape waiting for the connection makes a tick `busy`.
        time.sleep(3.0)
        s = scrapes_for(4.0)
        assert s.value("pg_up", target=TARGET) == 0
        assert missed(s)["down"] >= down_before + 2, missed(s)
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        cluster.stop()


@pytest.mark.timeout(120)
def test_reload_keeps_totals_and_probe_targets_are_sampled_while_held(tmp_path: Path) -> None:
    cluster = new_cluster("15")
    current: list[dict[str, Any]] = []
    exporter: Exporter | None = None
    try:
        one = {"name": "a", "dsn": cluster.dsn()}
        two = {"name": "b", "dsn": cluster.dsn(host="127.0.0.1")}
        current.append(
            {
                "targets": [one],
                "auth_modules": {"m": {"userpass": {"username": "postgres"}}},
                "probe": {"allowed_hosts": ["127.0.0.0/8"], "idle_timeout": "3s"},
            }
        )
        exporter = Exporter(
            parse_config(current[0], "test config"),
            "127.0.0.1",
            0,
            load_config=lambda: parse_config(current[-1], "test config"),
        )
        exporter.start()
        running = RunningExporter(exporter)

        def taken(s: Samples, target: str) -> float:
            return s.get("pg_connections_exporter_samples_total", target=target) or 0

        before = running.scrape_until(lambda s: taken(s, "a") >= 3, what="a sampled").value(
            "pg_connections_exporter_samples_total", target="a"
        )
        # A reload adding b: a keeps its totals (never backwards), b is sampled too.
        current.append({**current[0], "targets": [one, two]})
        assert exporter.reload() == []
        s = running.scrape_until(lambda s: taken(s, "b") >= 2, what="b sampled")
        assert taken(s, "a") >= before
        assert exporter.samplers.tasks == 2
        # A /probe server from discovery: sampled while held, its figures in its answer only.
        address = f"127.0.0.1:{cluster.port}/postgres"
        probe_url = f"{running.url}/probe?target={address}&auth_module=m"

        def probed() -> Samples | None:
            status, body, _ = http_get(probe_url)
            assert status == 200, body
            found = Samples(body)
            return found if taken(found, address) >= 2 else None

        wait_until(probed, 20, 0.3, "the probe target sampled")
        assert exporter.samplers.tasks == 3
        assert taken(running.scrape(), address) == 0  # not on /metrics
        # Not probed for idle_timeout: swept, and its sampler stops; a reload removing b
        # stops b's.
        current.append(current[0])
        assert exporter.reload() == []
        wait_until(lambda: exporter.samplers.tasks == 1, 20, 0.2, "only a's sampler left")
        s = running.scrape()
        assert s.get("pg_connections_exporter_samples_total", target="b") is None
        assert taken(s, "a") >= before
    finally:
        if exporter is not None:
            exporter.stop()
        cluster.stop()


@pytest.mark.timeout(120)
def test_a_pgbouncer_target_is_sampled_on_its_console(
    pg: LocalCluster, pgbouncer_for, exporter_for
) -> None:
    bouncer = pgbouncer_for(pg)
    running: RunningExporter = exporter_for(
        {"targets": [{"name": "bouncer", "kind": "pgbouncer", "dsn": bouncer.dsn()}]}
    )
    with Workload(bouncer.dsn("postgres", "app")) as clients:
        clients.open_many([SessionSpec("idle", dbname="app")] * 3)

        def sampled(s: Samples) -> bool:
            return (s.get("pgbouncer_client_connections_peak", target="bouncer") or 0) >= 3 and (
                s.get("pg_connections_exporter_samples_total", target="bouncer") or 0
            ) >= 3

        s = running.scrape_until(sampled, 20, "the console sampled with 3 clients")
    # The clients and the exporter's own console connection; max_client_conn read from
    # SHOW CONFIG; nothing failed.
    assert s.value("pgbouncer_clients_waiting_peak", target="bouncer") == 0
    assert s.by("pgbouncer_client_connections_saturation_seconds_total", "level", target="bouncer")
    errors = s.by("pg_connections_exporter_samples_missed_total", "reason", target="bouncer")
    assert errors["error"] == 0 and errors["timeout"] == 0, errors
