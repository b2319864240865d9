"""target_files: YAML lists of targets picked up on change without a restart, unchanged targets
keeping their connections, and hostile files refused with the file named."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from exporter.app import Exporter
from exporter.config.errors import ConfigError
from exporter.config.model import load_config
from exporter.db.connection import APPLICATION_NAME
from harness.localpg import LocalCluster
from tests.conftest import new_cluster
from tests.helpers import wait_until

RELOAD_OK = "pg_connections_exporter_config_last_reload_successful"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = new_cluster("18", max_connections=30)
    try:
        yield c
    finally:
        c.stop()


def _held(cluster: LocalCluster) -> dict[str, int]:
    """The exporter's sessions: datname -> pid."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, pid FROM pg_stat_activity WHERE application_name = %s",
            (APPLICATION_NAME,),
        ).fetchall()
    return dict(rows)


def _config(tmp_path: Path) -> Path:
    (tmp_path / "targets").mkdir()
    path = tmp_path / "config.yml"
    path.write_text(
        yaml.safe_dump(
            {"target_files": ["targets/*.yml"], "settings": {"target_files_refresh": "200ms"}}
        )
    )
    return path


def _targets(path: Path, *targets: tuple[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump([{"name": n, "dsn": dsn} for n, dsn in targets]))
    tmp.rename(path)


def test_target_files_followed_without_restart(
    cluster: LocalCluster, exporter_process, tmp_path: Path
) -> None:
    config = _config(tmp_path)
    files = tmp_path / "targets"
    _targets(files / "a.yml", ("a", cluster.dsn()))
    proc = exporter_process("--config.file", str(config))
    proc.wait_ready()
    wait_until(lambda: proc.scrape().get("pg_up", target="a") == 1, what="a up")
    pid_a = _held(cluster)["postgres"]

    # A new file: its target appears, a keeps its very connection.
    _targets(files / "b.yml", ("b", cluster.dsn(dbname="template1")))
    wait_until(lambda: proc.scrape().get("pg_up", target="b") == 1, what="b from b.yml")
    assert _held(cluster) == {"postgres": pid_a, "template1": _held(cluster)["template1"]}

    # Hostile files: refused with the file named, the running targets stay.
    bad = files / "c.yml"
    for content, problem in [
        (b"\xff\xfe\x00binary", "not valid UTF-8"),
        (b"- &a [x, x]\n- &b [*a, *a]\n- [*b, *b]\n", "aliases (*name) are not allowed"),
        (b"{targets: [", "invalid YAML"),
        (b"- {name: c, dsn: 'host=/tmp', colour: red}\n", "colour: Extra inputs"),
        (b"- {name: a, dsn: 'host=/tmp'}\n", "target name 'a' is used twice"),
        (b"x" * (1 << 20) + b"x", "larger than"),
    ]:
        bad.write_bytes(content)
        wait_until(lambda: proc.scrape().value(RELOAD_OK) == 0, what=f"refusal of {problem}")
        wait_until(lambda p=problem: p in proc.output(), what=problem)
        assert f"{bad}: " in proc.output()
        s = proc.scrape()
        assert (s.value("pg_up", target="a"), s.value("pg_up", target="b")) == (1, 1)
        bad.unlink()
        wait_until(lambda: proc.scrape().value(RELOAD_OK) == 1, what="good again")

    # A file removed: its target goes, and with it its connection; a still untouched.
    (files / "b.yml").unlink()
    wait_until(lambda: proc.scrape().get("pg_up", target="b") is None, what="b gone")
    wait_until(lambda: _held(cluster) == {"postgres": pid_a}, what="b's connection closed")


def test_target_file_problems_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "one.yaml").write_text("- {name: x, dsn: 'host=/tmp'}\n")
    (tmp_path / "t" / "two.yaml").write_text("- {name: x, dsn: 'host=/tmp'}\n- {name: y}\n")
    (tmp_path / "t" / "three.yaml").write_text("name: z\n")
    config = tmp_path / "c.yml"
    config.write_text("target_files: ['t/*.yaml']\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    problems = "\n".join(err.value.problems)
    two = tmp_path / "t" / "two.yaml"
    assert f"{two}: [0].name: target name 'x' is used twice" in problems
    assert f"{tmp_path / 't' / 'one.yaml'}: [0]" in problems
    assert f"{two}: [1].dsn: Field required" in problems
    assert f"{tmp_path / 't' / 'three.yaml'}: (top level): expected a list of targets" in problems


def test_no_files_yet_is_a_valid_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("target_files: ['targets/*.yml']\n")
    assert load_config(config).targets == ()
    config.write_text("settings: {}\n")
    with pytest.raises(ConfigError, match="targets: none: give targets, target_files or"):
        load_config(config)


def test_the_watcher_is_a_task_of_the_event_loop(cluster: LocalCluster, tmp_path: Path) -> None:
    """No thread of its own: it runs on the exporter's event loop (here the thread start()
    gives it) and still follows the files."""
    config = _config(tmp_path)
    _targets(tmp_path / "targets" / "a.yml", ("a", cluster.dsn()))
    exporter = Exporter(
        load_config(str(config)), "127.0.0.1", 0, load_config=lambda: load_config(str(config))
    )
    exporter.start()
    try:
        names = [t.name for t in threading.enumerate()]
        assert "target-files" not in names, names
        _targets(tmp_path / "targets" / "b.yml", ("b", cluster.dsn(dbname="template1")))
        wait_until(
            lambda: [t.target.name for t in exporter.scraper.targets] == ["a", "b"],
            what="b from b.yml",
        )
    finally:
        exporter.stop()
