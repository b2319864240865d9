"""Why the slots are full, against real servers (PostgreSQL 15 and 18, both 14+): connection
churn, how sessions end, how old connections are, and the pooling advisor through a real
Prometheus with the shipped recording rules.

The session counters of pg_stat_database exist from PostgreSQL 14; their query is gated with
min_version, so on 12 and 13 the series are absent (test_version_gate_*: the gate itself with
the servers we have; the 12/13 side runs once fixtures for those majors exist).
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.config.errors import ConfigError
from exporter.config.model import builtin_queries, parse_config
from harness.localpg import LocalCluster
from tests.conftest import require_program
from tests.helpers import RunningExporter, load_render_alerts, wait_until
from tests.prometheus_server import PrometheusServer

TARGET = "t"


def new_database(pg: LocalCluster) -> str:
    """A database of this test alone, so that other tests' sessions do not count."""
    name = f"s14_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE DATABASE {name}")
    return name


def ended(running: RunningExporter, db: str) -> dict[str, float]:
    return running.scrape().by("pg_sessions_ended_total", "outcome", datname=db)


def test_session_outcomes_abandoned_killed_fatal(pg: LocalCluster, exporter_for) -> None:
    """SIGKILL of a client mid-session is abandoned, pg_terminate_backend killed, a FATAL
    (idle_in_transaction_session_timeout) fatal: each counted once, in its own outcome."""
    db = new_database(pg)
    running = exporter_for({"targets": [{"name": TARGET, "dsn": pg.dsn()}]})
    assert ended(running, db) == {"abandoned": 0, "fatal": 0, "killed": 0}

    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, psycopg\n"
            "conn = psycopg.connect(sys.argv[1])\n"
            "conn.execute('SELECT 1')\n"
            "print('connected', flush=True)\n"
            "time.sleep(600)\n",
            pg.dsn(dbname=db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
    finally:
        client.kill()
        client.wait(10)
    wait_until(lambda: ended(running, db)["abandoned"] == 1, 20, 0.2, "an abandoned session")

    victim = psycopg.connect(pg.dsn(dbname=db), autocommit=True)
    try:
        pg.execute(f"SELECT pg_terminate_backend({victim.info.backend_pid})")
        wait_until(lambda: ended(running, db)["killed"] == 1, 20, 0.2, "a killed session")
    finally:
        victim.close()

    idler = psycopg.connect(pg.dsn(dbname=db, options="-c idle_in_transaction_session_timeout=200"))
    try:
        idler.execute("SELECT 1")  # a transaction left open: ended by the timeout
        wait_until(lambda: ended(running, db)["fatal"] == 1, 20, 0.2, "a fatal session")
    finally:
        idler.close()
    assert ended(running, db) == {"abandoned": 1, "fatal": 1, "killed": 1}


def test_version_gate_leaves_the_series_out_quietly(pg: LocalCluster, exporter_for) -> None:
    """The session counters' query is gated at 14 (the columns are new in 14); a gated query
    does not run, and neither its series nor an error appear. The gate's other side, with the
    built-in query itself, needs a 12 or 13 server."""
    (stats,) = [q for q in builtin_queries() if q.name == "session_statistics"]
    assert stats.min_version == 140000
    # The same query gated above the server: what a 13 server makes of the built-in one.
    gated = stats.model_dump(exclude_defaults=True) | {"name": "gated_stats", "min_version": 99}
    gated["metrics"] = [m | {"name": f"gated_{m['name']}"} for m in gated["metrics"]]
    running = exporter_for({"targets": [{"name": TARGET, "dsn": pg.dsn()}], "queries": [gated]})
    scraped = running.scrape()
    assert scraped.value("pg_up", target=TARGET) == 1
    assert not [row for row in scraped.rows if row[0].startswith("gated_")]
    assert scraped.get("pg_connections_exporter_query_success", query="gated_stats") is None
    assert scraped.get("pg_connections_exporter_query_success", query="session_statistics") == 1
    assert scraped.series("pg_sessions_total")


# --- churn and connection age through a real Prometheus -------------------------------------

CHURN_PER_SECOND = 10
CHURN_HELD = 5  # the reconnecting application holds each connection for 0.5 s


class Churn:
    """An application that connects per request: a new connection every 1/rate seconds, each
    closed `held` connections later, on a fixed schedule."""

    def __init__(self, dsn: str, rate: float, held: int) -> None:
        self.dsn, self.rate, self.held = dsn, rate, held
        self.opened: list[float] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        open_now: deque[psycopg.Connection[Any]] = deque()
        start = time.monotonic()
        try:
            for i in range(10**9):
                delay = start + i / self.rate - time.monotonic()
                if self.stop.wait(max(delay, 0)):
                    break
                open_now.append(psycopg.connect(self.dsn, autocommit=True))
                self.opened.append(time.time())
                if len(open_now) > self.held:
                    open_now.popleft().close()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            for conn in open_now:
                conn.close()

    def opened_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.opened if start < t <= end)


@contextmanager
def prometheus_with_advisor(
    tmp_path: Path, port: int, **advisor: str
) -> Iterator[tuple[PrometheusServer, str]]:
    """A real Prometheus scraping the exporter every second with the shipped rules, rendered by
    the same generator, the advisor's windows shortened to seconds."""
    renderer = load_render_alerts()
    thresholds = renderer.load_thresholds()
    thresholds["advisor"].update(advisor)
    (tmp_path / "rules.yml").write_text(
        renderer.dump({"groups": renderer.render_groups(thresholds)})
    )
    prom = PrometheusServer(
        require_program("prometheus"),
        [f"127.0.0.1:{port}"],
        job=thresholds["job"],
        rule_files=[tmp_path / "rules.yml"],
    )
    try:
        prom.start()
        yield prom, thresholds["job"]
    except BaseException:
        print(f"--- prometheus log ---\n{prom.log_tail(60)}")
        raise
    finally:
        prom.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_churn_rate_and_young_connections_through_prometheus(
    tmp_path: Path, pg: LocalCluster, exporter_for
) -> None:
    """10 new connections a second: the rate Prometheus computes from pg_sessions_total is
    within 10% of what the client did in the same window; the young-connection breakdown names
    the reconnecting application, not the pooled one beside it."""
    db = new_database(pg)
    running = exporter_for(
        {
            "targets": [{"name": TARGET, "dsn": pg.dsn()}],
            "collectors": {"params": {"connection_age": {"young_seconds": 3}}},
        }
    )
    pooled = [
        psycopg.connect(pg.dsn(dbname=db, application_name="pooled"), autocommit=True)
        for _ in range(5)
    ]
    churn = Churn(pg.dsn(dbname=db, application_name="reconnector"), CHURN_PER_SECOND, CHURN_HELD)
    window = 10
    try:
        with prometheus_with_advisor(tmp_path, running.exporter.port) as (prom, _job):
            wait_until(
                lambda: prom.vector(f'pg_sessions_total{{datname="{db}"}}'),
                30,
                0.2,
                "prometheus to scrape the exporter",
            )
            time.sleep(3)  # the pooled connections are older than young_seconds
            churn.thread.start()
            time.sleep(window + 5)
            assert churn.error is None, churn.error
            end = time.time() - 1.5  # the last scrapes have the sessions of this window
            rate = prom.query(f'rate(pg_sessions_total{{datname="{db}"}}[{window}s])', end)
            ((_, value),) = [(s["metric"], float(s["value"][1])) for s in rate["data"]["result"]]
            truth = churn.opened_between(end - window, end) / window
            print(f"churn: Prometheus {value:.2f}/s, the client {truth:.2f}/s")
            assert abs(truth - CHURN_PER_SECOND) <= 1, f"the churn fell behind: {truth}/s"
            assert value == pytest.approx(truth, rel=0.10), (value, truth)

            young = dict(
                by_app(prom.vector(f'pg_connections_young_by_application{{target="{TARGET}"}}'))
            )
            assert young["pooled"] == 0
            assert 1 <= young["reconnector"] <= CHURN_HELD + 1
            top = by_app(prom.vector('topk(1, pg_connections_young_by_application{target="t"})'))
            assert top == [("reconnector", young["reconnector"])]
            # Its connections are all under a second old; the pooled ones are not.
            under_10s = prom.vector('pg_connections_age_seconds_bucket{target="t", le="10.0"}')
            assert under_10s and under_10s[0][1] >= 1
    finally:
        churn.stop.set()
        if churn.thread.is_alive():
            churn.thread.join(10)
        for conn in pooled:
            conn.close()


def by_app(samples: list[tuple[dict[str, str], float]]) -> list[tuple[str, float]]:
    return [(labels["application_name"], value) for labels, value in samples]


# --- the pooling advisor on a known duty cycle ----------------------------------------------

SESSIONS = 20
DUTY = 0.25  # each session busy a quarter of the time: 5 busy on average


def duty_cycle(dsn: str, stop: threading.Event, errors: list[BaseException]) -> None:
    """One session: busy (a statement) for a quarter of each cycle, idle the rest; cycles of
    random length (0.6 to 1.4 s) so that scrapes do not fall in step with them."""
    rng = random.Random()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            stop.wait(rng.uniform(0, 1))
            while not stop.is_set():
                cycle = rng.uniform(0.6, 1.4)
                # Reading a table, as real work does: a backend that has touched none sends
                # its active time only when it ends.
                conn.execute("SELECT pg_sleep(%s) FROM duty", [cycle * DUTY])
                stop.wait(cycle * (1 - DUTY))
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_pooling_advisor_on_a_known_duty_cycle(
    tmp_path: Path, pg: LocalCluster, exporter_for
) -> None:
    """20 sessions each busy 25% of the time: the advisor's busy sessions are within 20% of 5
    (from the server's counted time; the sampled states too), and the pooler size it suggests
    is the peak of that, far under the 20 slots held."""
    db = new_database(pg)
    with psycopg.connect(pg.dsn(dbname=db), autocommit=True) as conn:
        conn.execute("CREATE TABLE duty AS SELECT 1 AS one")
    running = exporter_for({"targets": [{"name": TARGET, "dsn": pg.dsn()}]})
    stop = threading.Event()
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=duty_cycle,
            args=(pg.dsn(dbname=db, application_name="duty"), stop, errors),
            daemon=True,
        )
        for _ in range(SESSIONS)
    ]
    busy_window, sampled_window = 30, 60
    try:
        with prometheus_with_advisor(
            tmp_path, running.exporter.port, busy_window=f"{busy_window}s", peak_window="20s"
        ) as (prom, _job):
            for thread in threads:
                thread.start()
            sel = f'target="{TARGET}"'
            wait_until(
                lambda: prom.vector(
                    f'pg_connections_by_application{{{sel}, application_name="duty"}}'
                ),
                30,
                0.2,
                "prometheus to see the sessions",
            )
            time.sleep(busy_window + 5)
            assert not errors, errors
            want = SESSIONS * DUTY
            counted = only(
                prom.vector(f'target:pg_sessions_busy_by_database:rate{{{sel}, datname="{db}"}}')
            )
            busy = only(prom.vector(f"target:pg_connections_busy:avg{{{sel}}}"))
            print(f"busy: counted {counted:.2f}, advisor {busy:.2f}")
            assert counted == pytest.approx(want, rel=0.2), counted
            # No session stays busy longer than the window: the advisor takes the count.
            assert only(prom.vector(f"target:pg_connections_busy:long{{{sel}}}")) == 0
            assert busy == pytest.approx(want, rel=0.2), busy
            held = only(prom.vector(f"pg_connections_used{{{sel}}}"))
            assert held == SESSIONS + 1  # the exporter's own too
            ratio = only(prom.vector(f"target:pg_connections_busy:ratio{{{sel}}}"))
            assert ratio == pytest.approx(want / held, rel=0.25)
            size = only(prom.vector(f"target:pg_connections_pooler_size:peak{{{sel}}}"))
            print(f"pooler size {size:g}, slots held {held:g}")
            assert math.ceil(want * 0.8) <= size <= math.ceil(want * 1.2) + 1, size
            assert size < held / 2
            # The sampled states (what the advisor uses before 14) estimate the same 5, more
            # noisily: a sample a second, averaged over a minute.
            time.sleep(sampled_window - busy_window)
            sampled = only(
                prom.vector(
                    f"avg_over_time(target:pg_connections_busy:sampled{{{sel}}}[{sampled_window}s])"
                )
            )
            print(f"busy: sampled {sampled:.2f}")
            assert sampled == pytest.approx(want, rel=0.2), sampled
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def only(samples: list[tuple[dict[str, str], float]]) -> float:
    assert len(samples) == 1, samples
    return samples[0][1]


def test_a_non_numeric_young_seconds_is_a_config_error() -> None:
    config = {
        "targets": [{"name": TARGET, "dsn": "host=localhost"}],
        "collectors": {"params": {"connection_age": {"young_seconds": "1m"}}},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(config, "exporter.yaml")
    assert err.value.problems == [
        "exporter.yaml: collectors.params.connection_age.young_seconds: expected a number "
        "(default 60), got '1m'"
    ]
    config["collectors"]["params"]["connection_age"]["young_seconds"] = 5
    (query,) = [q for q in parse_config(config, "x").queries if q.name == "connection_age"]
    assert query.params["young_seconds"] == 5


def test_builtin_gates() -> None:
    """Every new query runs on every version the exporter supports but the 14+ counters."""
    gates = {q.name: q.min_version for q in builtin_queries()}
    assert gates["session_statistics"] == 140000
    assert gates["connection_age"] == gates["memory_settings"] == 120000


def test_session_counters_on_both_sides_of_their_gate(
    pg_any_major: LocalCluster, exporter_for
) -> None:
    """On every major: the pg_stat_database session counters from 14 on, and on 12 and 13
    simply absent (the query is skipped, not failed); connection age and the memory settings
    everywhere."""
    running = exporter_for({"targets": [{"name": TARGET, "dsn": pg_any_major.dsn()}]})
    scraped = running.scrape()
    assert scraped.value("pg_up", target=TARGET) == 1
    counters = [row for row in scraped.rows if row[0].startswith("pg_sessions_")]
    success = scraped.get("pg_connections_exporter_query_success", query="session_statistics")
    if pg_any_major.version_num >= 140000:
        assert success == 1
        assert scraped.series("pg_sessions_total")
        assert scraped.series("pg_sessions_ended_total")
    else:
        assert success is None, "a gated query neither runs nor fails"
        assert not counters, counters
    for query in ("connection_age", "memory_settings"):
        assert scraped.value("pg_connections_exporter_query_success", query=query) == 1, query
    assert scraped.series("pg_connections_memory_setting_bytes")
