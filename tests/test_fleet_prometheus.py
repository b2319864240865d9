"""The fleet examples (deploy/prometheus/) with a real Prometheus: file_sd feeding /probe
through relabelling, and two Prometheus shards (hashmod) over two exporter replicas, each
server scraped once and each exporter holding only its shard's connections, connections of
servers gone from discovery closed after the idle time."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from exporter.db.connection import APPLICATION_NAME
from harness.localpg import LocalCluster
from tests.conftest import new_cluster, require_program
from tests.helpers import REPO, wait_until
from tests.prometheus_server import PrometheusServer

DATABASES = [f"db{i:02d}" for i in range(1, 21)]
IDLE = 5.0  # five scrape intervals


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = new_cluster("18", max_connections=80)
    try:
        c.execute(
            *(f"CREATE DATABASE {db}" for db in DATABASES),
            "CREATE ROLE replica_0 LOGIN",
            "CREATE ROLE replica_1 LOGIN",
            "GRANT pg_monitor TO replica_0, replica_1",
        )
        yield c
    finally:
        c.stop()


def _held(cluster: LocalCluster) -> dict[str, set[str]]:
    """The exporters' sessions: role (one per replica) -> databases."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT usename, datname FROM pg_stat_activity WHERE application_name = %s",
            (APPLICATION_NAME,),
        ).fetchall()
    out: dict[str, set[str]] = {}
    for user, db in rows:
        out.setdefault(user, set()).add(db)
    return out


def _prometheus_shard(address: str, modulus: int) -> int:
    """Prometheus's hashmod: the last 8 bytes of the MD5 of the value, big-endian, mod N."""
    return int.from_bytes(hashlib.md5(address.encode()).digest()[8:], "big") % modulus


def _example(name: str, sd_file: Path, exporter: str, shard: str | None = None) -> dict:
    """A shipped example with this test's discovery file, exporter address and 1 s scrapes."""
    config: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "prometheus" / name).read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    job = config["scrape_configs"][0]
    job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "1s"}]
    for rule in job["relabel_configs"]:
        if rule.get("target_label") == "__address__":
            rule["replacement"] = exporter
        if shard is not None and rule.get("action") == "keep":
            rule["regex"] = shard
    config["scrape_configs"] = [job]
    return config


def _prometheus(tmp_path: Path, config: dict) -> PrometheusServer:
    server = PrometheusServer(require_program("prometheus"), [])
    (server.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    return server


def _sd(path: Path, targets: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": targets, "labels": {"env": "test"}}]))
    tmp.rename(path)


def _exporter_config(user: str) -> dict:
    return {
        "auth_modules": {"monitoring": {"userpass": {"username": user}}},
        "probe": {"allowed_hosts": ["127.0.0.1/32"], "idle_timeout": IDLE},
    }


def _series_by_target(prom: PrometheusServer, metric: str) -> dict[str, float]:
    return {ls["target"]: v for ls, v in prom.vector(f"count by (target) ({metric})")}


def test_file_sd_feeds_probe(cluster: LocalCluster, exporter_for, tmp_path: Path) -> None:
    exporter = exporter_for(_exporter_config("replica_0"))
    targets = [f"127.0.0.1:{cluster.port}/{db}" for db in DATABASES[:3]]
    sd = tmp_path / "sd.json"
    _sd(sd, targets)
    config = _example("probe-file-sd.yml", sd, f"127.0.0.1:{exporter.exporter.port}")
    with _prometheus(tmp_path, config) as prom:

        def all_up() -> bool:
            ups = {ls["instance"]: v for ls, v in prom.vector("pg_up")}
            return ups == dict.fromkeys(targets, 1.0)

        wait_until(all_up, 60, 0.5, "every discovered server up through /probe")

        def labelled_by_target_and_discovery() -> bool:
            """The series carry the target and the discovery labels (polled, as below)."""
            used = prom.vector("pg_connections_max")
            return {(ls["target"], ls["instance"], ls["env"]) for ls, _ in used} == {
                (t, t, "test") for t in targets
            }

        wait_until(labelled_by_target_and_discovery, 30, 0.5, "series with discovery labels")
    wait_until(lambda: _held(cluster) == {"replica_0": set(DATABASES[:3])}, 10, 0.2, "sessions")


def test_two_shards_two_replicas(cluster: LocalCluster, exporter_for, tmp_path: Path) -> None:
    replicas = [exporter_for(_exporter_config(f"replica_{k}")) for k in (0, 1)]
    targets = {f"127.0.0.1:{cluster.port}/{db}": db for db in DATABASES}
    expected = {
        k: {db for t, db in targets.items() if _prometheus_shard(t, 2) == k} for k in (0, 1)
    }
    assert expected[0] and expected[1], "the test's targets should fall in both shards"
    sd = tmp_path / "sd.json"
    _sd(sd, list(targets))
    shards = [
        _prometheus(
            tmp_path,
            _example(
                "probe-sharded.yml", sd, f"127.0.0.1:{replicas[k].exporter.port}", shard=str(k)
            ),
        )
        for k in (0, 1)
    ]
    try:
        for prom in shards:
            prom.start()

        def every_target_once() -> bool:
            seen = [_series_by_target(prom, "pg_up == 1") for prom in shards]
            return set(seen[0]) | set(seen[1]) == set(targets) and not set(seen[0]) & set(seen[1])

        wait_until(every_target_once, 60, 0.5, "every target up in exactly one shard")

        def each_shard_its_hashmod_share() -> bool:
            """One series per target, in the shard Prometheus's hashmod puts it in. Polled: a
            query that misses its timeout on a loaded machine drops its target's series from
            that one scrape (stale at once), though pg_up stays 1."""
            for k, prom in enumerate(shards):
                counts = _series_by_target(prom, "pg_connections_max")
                if {targets[t] for t in counts} != expected[k] or set(counts.values()) != {1.0}:
                    return False
            return True

        wait_until(each_shard_its_hashmod_share, 30, 0.5, "each shard's series, by hashmod")
        # Each replica holds connections for its shard's servers only, one each.
        shard_sessions = {f"replica_{k}": expected[k] for k in (0, 1)}
        wait_until(lambda: _held(cluster) == shard_sessions, 10, 0.2, "sessions by shard")

        # Five servers leave discovery: their connections close after the idle time, the
        # others' stay.
        removed = sorted(targets)[:5]
        _sd(sd, [t for t in targets if t not in removed])
        kept = {k: expected[k] - {targets[t] for t in removed} for k in (0, 1)}
        wait_until(
            lambda: _held(cluster) == {f"replica_{k}": kept[k] for k in (0, 1) if kept[k]},
            IDLE + 30,
            0.5,
            "the removed servers' connections to close",
        )
        evicted = sum(
            r.scrape().value("pg_connections_exporter_probe_evictions_total", reason="idle")
            for r in replicas
        )
        assert evicted == 5
    finally:
        for prom in shards:
            prom.stop()
