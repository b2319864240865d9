"""Configuration: one ConfigError with every problem, each naming file and key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exporter.config.errors import ConfigError
from exporter.config.model import (
    Config,
    builtin_queries,
    load_config,
    parse_config,
    parse_duration,
    parse_max_server_version,
)

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_config_gets_every_builtin_query(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
        targets:
          - name: main
            dsn: host=db1 user=monitor
    """,
        )
    )
    assert [t.name for t in config.targets] == ["main"]
    assert {q.name for q in config.queries} == {q.name for q in builtin_queries()}
    assert config.settings.scrape_timeout == 10.0


def test_env_expansion_and_password_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_HOST", "db.example")
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-from-file\n")
    config = load_config(
        write(
            tmp_path,
            f"""
        targets:
          - name: main
            dsn: "host=${{PG_HOST}} user=monitor"
            password_file: {secret}
            labels: {{env: prod, cost: "$$5"}}
    """,
        )
    )
    target = config.targets[0]
    assert "host=db.example" in target.conninfo
    assert "password=s3cr3t-from-file" in target.conninfo
    assert target.labels == {"env": "prod", "cost": "$5"}
    assert "s3cr3t" not in repr(target)


def test_every_problem_is_reported_at_once_with_file_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets:
          - name: a
            dsn: "host=x"
            connect_timeout: soon
          - name: a
            dsn: "host=y"
            password_file: /nonexistent/pw
            labels: {target: nope}
        settings:
          query_timeout: -1
        collectors:
          disable: [no_such_query]
        queries:
          - name: mine
            sql: SELECT 1 AS x
            metrics:
              - name: "bad name"
                help: h
                value: x
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    expected = [
        "targets[0].connect_timeout",
        "targets[1].labels",
        "settings.query_timeout",
        "queries[0].metrics[0].name",
    ]
    for key in expected:
        assert f"{path}: {key}:" in text, text
    assert all(p.startswith(str(path)) for p in err.value.problems)


def test_cross_field_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets:
          - {name: a, dsn: "host=x", password_file: /nonexistent/pw}
          - {name: a, dsn: "host=y"}
        collectors:
          disable: [no_such_query]
        queries:
          - name: connections
            sql: SELECT 1 AS x
            metrics: [{name: pg_connections, help: h, value: x}]
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "targets[1].name: target name 'a' is used twice" in text
    assert "targets[0].password_file: cannot read /nonexistent/pw" in text
    assert "collectors.disable[0]: no built-in query named 'no_such_query'" in text
    assert "queries[0].name: 'connections' is a built-in query name" in text
    assert "metric pg_connections is produced by both" in text


def test_unset_environment_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write(
        tmp_path,
        """
        targets: [{name: a, dsn: "host=${NOT_SET_ANYWHERE}"}]
    """,
    )
    with pytest.raises(
        ConfigError,
        match=r"targets\[0\]\.dsn: environment variable "
        "NOT_SET_ANYWHERE is not set",
    ):
        load_config(path)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "targets:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config.yaml: line \d+, column \d+: invalid YAML"):
        load_config(path)


def test_bad_dsn_error_does_not_echo_the_password(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets: [{name: a, dsn: "host=x password=hunter2-secret 'unterminated"}]
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "targets[0].dsn: not a valid libpq connection string" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_histogram_metric_must_name_ascending_bucket_param(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets: [{name: a, dsn: "host=x"}]
        queries:
          - name: h
            params: {b: [5, 1]}
            sql: SELECT 1 AS n, 0 AS i
            metrics:
              - {name: my_hist, help: h, type: gauge_histogram, value: n, bucket_column: i,
                 buckets_param: b}
    """,
    )
    with pytest.raises(ConfigError, match=r"params\.b must be an ascending list"):
        load_config(path)


def test_builtin_params_can_be_overridden_and_checked(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
        targets: [{name: a, dsn: "host=x"}]
        collectors:
          params: {connections: {duration_buckets: [1, 60, 600]}}
    """,
        )
    )
    connections = next(q for q in config.queries if q.name == "connections")
    assert connections.params["duration_buckets"] == [1, 60, 600]
    with pytest.raises(
        ConfigError,
        match=r"collectors.params.connections.nope: query "
        "connections has no parameter",
    ):
        load_config(
            write(
                tmp_path,
                """
            targets: [{name: a, dsn: "host=x"}]
            collectors: {params: {connections: {nope: 1}}}
        """,
            )
        )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5), ("2m", 120), ("1h", 3600), (3, 3.0), ("1.5", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 parsecs", "-1s", 0, True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_check_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets:
          - name: a
            dsn: "host=x"
            bogus_key: 1
    """,
    )
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(path), "--check-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert f"{path}: targets[0].bogus_key: Extra inputs are not permitted" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, "targets: [{name: a, dsn: 'host=x'}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(path), "--check-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "valid: 1 target(s)" in result.stdout


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "nope.yaml: cannot read: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_pgbouncer_target_connects_to_the_admin_console(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
        targets:
          - {name: db, dsn: "host=db1 user=monitor"}
          - {name: pool, kind: pgbouncer, dsn: "host=db1 port=6432 user=monitor"}
          - {name: pool2, kind: pgbouncer, dsn: "postgresql://monitor@db2:6432/pgbouncer"}
    """,
        )
    )
    kinds = {t.name: t.kind for t in config.targets}
    assert kinds == {"db": "postgres", "pool": "pgbouncer", "pool2": "pgbouncer"}
    assert "dbname=pgbouncer" in config.targets[1].conninfo
    assert "dbname" not in config.targets[0].conninfo
    by_kind = {q.target_kind for q in config.queries}
    assert by_kind == {"postgres", "pgbouncer"}


def test_pgbouncer_problems_name_file_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets:
          - {name: a, kind: mysql, dsn: "host=x"}
          - {name: b, kind: pgbouncer, dsn: "host=x dbname=app"}
        queries:
          - name: mine
            target_kind: redis
            sql: SHOW POOLS
            metrics: [{name: my_m, help: h, value: cl_active}]
          - name: mine2
            target_kind: pgbouncer
            sql: SHOW POOLS
            metrics:
              - {name: my_n, help: h, value: []}
              - {name: my_o, help: h, value: x, labels: [db], label_columns: {user: name}}
    """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert f"{path}: targets[0].kind: Input should be 'postgres' or 'pgbouncer'" in text
    assert f"{path}: queries[0].target_kind: Input should be 'postgres' or 'pgbouncer'" in text
    assert f"{path}: queries[1].metrics[0].value:" in text
    assert f"{path}: queries[1].metrics[1]: label_columns ['user'] are not among labels" in text
    # The target problem is found once the file's shape is valid.
    ok_shape = path.read_text().replace("kind: mysql", "kind: postgres")
    ok_shape = ok_shape[: ok_shape.index("queries:")]
    path.write_text(ok_shape)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: targets[1].dsn: a pgbouncer target connects to the admin console: dbname must "
        "be pgbouncer, not 'app'"
    )


@pytest.mark.parametrize(
    ("text", "last"),
    [
        ("13", 139999),
        (13, 139999),
        ("15.2", 150002),
        (160000, 160000),
        ("160000", 160000),
        ("9.6", 90699),
        ("1.18", 11899),  # a PgBouncer release
    ],
)
def test_max_version_covers_every_release_of_what_it_names(text: object, last: int) -> None:
    assert parse_max_server_version(text) == last


def _parse(extra: dict) -> Config:
    return parse_config({"targets": [{"name": "t", "dsn": "host=db"}], **extra}, "exporter.yaml")


def test_a_rows_from_query_gets_no_sql_and_lends_its_params_to_its_source() -> None:
    """connection_age's metrics read the rows of connections, whose SQL takes
    connection_age's parameters, overridden where connection_age's are."""
    queries = {q.name: q for q in _parse({}).queries}
    assert queries["connection_age"].rows_from == "connections"
    assert queries["connection_age"].sql == ""
    assert queries["connections"].params["young_seconds"] == 60
    overrides = {"connection_age": {"young_seconds": 5, "age_buckets": [5, 3600]}}
    queries = {q.name: q for q in _parse({"collectors": {"params": overrides}}).queries}
    assert queries["connections"].params["young_seconds"] == 5
    assert queries["connections"].params["age_buckets"] == [5, 3600]
    assert queries["connections"].params["reclaimable_idle_age"] == 600
    assert queries["connection_age"].params["young_seconds"] == 5
    # Disabled, its parameters are still there for the SQL of connections.
    queries = {q.name: q for q in _parse({"collectors": {"disable": ["connection_age"]}}).queries}
    assert "connection_age" not in queries
    assert queries["connections"].params["age_buckets"][0] == 1


def test_a_rows_from_query_needs_its_source_before_it() -> None:
    # A built-in one goes with its source (configs disabling connections stay valid).
    names = {q.name for q in _parse({"collectors": {"disable": ["connections"]}}).queries}
    assert "connections" not in names and "connection_age" not in names
    assert "connection_slots" in names
    metric = {"name": "my_n", "help": "n.", "value": "n"}
    later = [
        {"name": "reader", "rows_from": "source", "metrics": [metric]},
        {"name": "source", "sql": "SELECT 1 AS n", "metrics": [{**metric, "name": "my_m"}]},
    ]
    with pytest.raises(ConfigError) as err:
        _parse({"queries": later})
    assert "query reader reads the rows of 'source', which is not a query" in str(err.value)
    cached = [{**later[1], "cache": "30s"}, later[0]]
    with pytest.raises(ConfigError) as err:
        _parse({"queries": cached})
    assert "must be for the same target kind and not cached" in str(err.value)
    assert [q.name for q in _parse({"queries": later[::-1]}).queries][-2:] == ["source", "reader"]
    # The reader's params go to its source's SQL.
    later[1]["sql"], later[0]["params"] = "SELECT %(k)s AS n", {"k": 3}
    queries = _parse({"queries": later[::-1]}).queries
    assert queries[-2].params == {"k": 3}


@pytest.mark.parametrize(
    "query",
    [
        {"name": "both", "sql": "SELECT 1 AS n", "rows_from": "connections"},
        {"name": "neither"},
    ],
)
def test_a_query_has_sql_or_rows_from(query: dict) -> None:
    query["metrics"] = [{"name": "my_n", "help": "n.", "value": "n"}]
    with pytest.raises(ConfigError) as err:
        _parse({"queries": [query]})
    assert "a query has either sql or rows_from (another query's rows)" in str(err.value)
