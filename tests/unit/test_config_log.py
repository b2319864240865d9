"""A target's `log:` section (README, "Refused connections"): what the model accepts, and each
refusal naming the file, the key path and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.config.errors import ConfigError
from exporter.config.model import parse_config

PG = {"name": "a", "dsn": "host=db1 user=pgce_monitor"}
BOUNCER = {"name": "b", "dsn": "host=pool1 port=6432 dbname=pgbouncer", "kind": "pgbouncer"}
CSV = {"source": "file", "directory": "/var/log/postgresql", "format": "csvlog"}


def problems(*targets: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"targets": list(targets)}, "conf.yaml")
    return info.value.problems


@pytest.mark.parametrize(
    ("target", "key", "words"),
    [
        ({**PG, "log": {**CSV, "source": "remote"}}, "targets[0].log", "directory is for source"),
        (
            {**BOUNCER, "log": {"source": "remote", "format": "pgbouncer"}},
            "targets[0].log.source",
            "cannot be read remotely",
        ),
        ({**PG, "log": {**CSV, "source": "ftp"}}, "targets[0].log.source", "'file'"),
        ({**PG, "log": {"format": "csvlog"}}, "targets[0].log", "directory is required"),
        ({**PG, "log": {**CSV, "directory": "log"}}, "targets[0].log.directory", "absolute"),
        ({**PG, "log": {**CSV, "format": "syslog"}}, "targets[0].log.format", "'csvlog'"),
        (
            {**PG, "log": {k: v for k, v in CSV.items() if k != "format"}},
            "targets[0].log.format",
            "required",
        ),
        (
            {**PG, "log": {**CSV, "format": "stderr", "log_line_prefix": ""}},
            "targets[0].log",
            "log_line_prefix is empty",
        ),
        (
            {**PG, "log": {**CSV, "log_line_prefix": "%m [%p] "}},
            "targets[0].log",
            "for format stderr only",
        ),
        ({**PG, "log": {**CSV, "pattern": "../*.csv"}}, "targets[0].log.pattern", "without '/'"),
        ({**PG, "log": {**CSV, "fromat": "csvlog"}}, "targets[0].log.fromat", "not permitted"),
        ({**PG, "log": {**CSV, "format": "pgbouncer"}}, "targets[0].log.format", "kind: pgbouncer"),
        ({**BOUNCER, "log": CSV}, "targets[0].log.format", "format pgbouncer, not csvlog"),
    ],
)
def test_a_bad_log_section_names_the_key_and_the_problem(
    target: dict[str, Any], key: str, words: str
) -> None:
    found = problems(target)
    assert len(found) == 1, found
    assert found[0].startswith(f"conf.yaml: {key}: "), found[0]
    assert words in found[0], found[0]


def test_the_log_sections_of_each_kind_are_accepted() -> None:
    config = parse_config(
        {
            "targets": [
                {**PG, "log": {"directory": "/logs/pg", "format": "jsonlog"}},
                {
                    **PG,
                    "name": "c",
                    "log": {
                        "directory": "/logs/pg",
                        "format": "stderr",
                        "log_line_prefix": "%m [%p] %q%u@%d %h ",
                        "pattern": "postgresql-*.log",
                    },
                },
                {**BOUNCER, "log": {"directory": "/var/log/pgbouncer", "format": "pgbouncer"}},
                {**PG, "name": "d"},
                {**PG, "name": "e", "log": {"source": "remote", "format": "csvlog"}},
                {**PG, "name": "f", "log": {"directory": "/logs/pg", "format": "stderr"}},
            ]
        },
        "conf.yaml",
    )
    logs = {t.name: t.log for t in config.targets}
    assert logs["a"] is not None and logs["a"].source == "file"
    assert logs["a"].directory == Path("/logs/pg") and logs["a"].pattern is None
    assert logs["c"] is not None and logs["c"].log_line_prefix == "%m [%p] %q%u@%d %h "
    assert logs["b"] is not None and logs["b"].format == "pgbouncer"
    assert logs["d"] is None
    assert logs["e"] is not None and logs["e"].source == "remote" and logs["e"].directory is None
    # stderr without a prefix: the exporter asks the server (SHOW log_line_prefix).
    assert logs["f"] is not None and logs["f"].log_line_prefix is None
