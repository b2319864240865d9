"""A bad configuration is one ConfigError naming the file, the key path and the problem, never
a traceback; the checks of the model (no file, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.config.errors import ConfigError
from exporter.config.model import parse_config

TARGET = {"name": "a", "dsn": "host=db1 user=pgce_monitor"}


def problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "conf.yaml")
    return info.value.problems


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        (["a list"], "(top level)", "mapping"),
        ({"targets": []}, "targets", "none"),
        ({"targets": [{"name": "a"}]}, "targets[0].dsn", "required"),
        (
            {"targets": [TARGET, {**TARGET, "dsn": "host=db2"}]},
            "targets[1].name",
            "used twice",
        ),
        (
            {"targets": [TARGET], "settings": {"scrape_concurrency": 0}},
            "settings.scrape_concurrency",
            "greater than or equal to 1",
        ),
        (
            {"targets": [TARGET], "settings": {"scrape_timout": "1s"}},
            "settings.scrape_timout",
            "not permitted",
        ),
        (
            {"targets": [TARGET], "settings": {"scrape_timeout": "soon"}},
            "settings.scrape_timeout",
            "soon",
        ),
        (
            {
                "targets": [TARGET],
                "queries": [
                    {
                        "name": "q",
                        "help": "h",
                        "sql": "SELECT 1 AS v",
                        "metrics": [
                            {"name": "bad name", "type": "gauge", "help": "h", "value": "v"}
                        ],
                    }
                ],
            },
            "queries[0].metrics[0].name",
            "not a valid Prometheus metric name",
        ),
        (
            {
                "targets": [TARGET],
                "queries": [
                    {
                        "name": "connections",
                        "help": "h",
                        "sql": "SELECT 1 AS v",
                        "metrics": [{"name": "x", "type": "gauge", "help": "h", "value": "v"}],
                    }
                ],
            },
            "queries[0].name",
            "built-in",
        ),
    ],
)
def test_a_problem_names_the_file_the_key_and_what_is_wrong(
    data: Any, key: str, words: str
) -> None:
    found = problems(data)
    assert len(found) == 1, found
    assert found[0].startswith(f"conf.yaml: {key}: "), found[0]
    assert words in found[0], found[0]


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        {
            "targets": [{"name": "a"}, {"name": "b", "dsn": "host=x", "connect_timeout": "later"}],
            "settings": {"scrape_concurrency": 0},
        }
    )
    keys = sorted(p.split(": ")[1] for p in found)
    assert keys == ["settings.scrape_concurrency", "targets[0].dsn", "targets[1].connect_timeout"]


def test_a_password_in_a_bad_dsn_is_not_echoed() -> None:
    found = problems({"targets": [{"name": "a", "dsn": "host=x password=hunter2 bogus"}]})
    assert found and "hunter2" not in " ".join(found)
    assert "targets[0].dsn" in found[0]


def test_a_readers_parameter_is_refused_under_the_query_it_reads() -> None:
    """connection_age's young_seconds reaches the connections SQL, but set under connections it
    would be overwritten by connection_age's own value: an error naming where it belongs."""
    data = {"targets": [TARGET], "collectors": {"params": {"connections": {"young_seconds": 5}}}}
    (problem,) = problems(data)
    assert problem.startswith("conf.yaml: collectors.params.connections.young_seconds: ")
    assert "collectors.params.connection_age.young_seconds" in problem


def test_a_readers_parameter_set_under_the_reader_reaches_the_sql() -> None:
    data = {"targets": [TARGET], "collectors": {"params": {"connection_age": {"young_seconds": 5}}}}
    queries = {q.name: q for q in parse_config(data, "conf.yaml").queries}
    assert queries["connections"].params["young_seconds"] == 5
