"""Hostile bytes in the files an operator hands the exporter: the config file, the web config
file and password files give a problem naming the file (exit 2 from --check-config, a refused
reload), never a traceback, a hang or unbounded memory. Property-based fuzzing of the loaders
(hypothesis), the known hostile cases through the real command, and a reload of each against a
running exporter process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config.errors import ConfigError
from exporter.config.model import load_config
from exporter.config.safeyaml import MAX_DEPTH, MAX_NODES, MAX_YAML_BYTES, load_yaml_file
from exporter.web.webconfig import load_web_config
from harness.localpg import LocalCluster
from tests.conftest import new_cluster
from tests.helpers import REPO, wait_until

RELOAD_OK = "pg_connections_exporter_config_last_reload_successful"


def _laughs(levels: int = 10, width: int = 10) -> str:
    """Each level an anchored list of `width` aliases of the previous one: width**levels
    values once expanded, in a few hundred bytes."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + f"\ntargets: *l{levels - 1}\n"


# name -> (file content, what the problem must say)
HOSTILE: dict[str, tuple[bytes, str]] = {
    "invalid_utf8": (b"targets:\n  - name: caf\xe9\n    dsn: host=x\n", "not valid UTF-8"),
    "utf16": ("targets: []\n".encode("utf-16"), "not valid UTF-8"),
    "deep_flow": (b"targets: " + b"[" * 100_000, "nest"),
    "deep_block": (
        b"targets:\n" + b"- " * 1000 + b"x\n",
        f"nested more than {MAX_DEPTH} levels deep",
    ),
    "billion_laughs": (_laughs().encode(), "once aliases are expanded"),
    "alias_cycle": (b"targets: &t [{name: a, dsn: *t}]\n", "cycle"),
    "huge": (b"targets: []\n# " + b"x" * MAX_YAML_BYTES + b"\n", "larger than"),
    "many_values": (b"targets: [" + b"1," * (MAX_NODES + 10) + b"1]\n", "values"),
    "control_character": (b"targets: \x01\n", "control characters"),
    "impossible_date": (b"targets: [{name: a, dsn: x, labels: {d: 2020-13-45}}]\n", "month"),
    "huge_integer": (b"targets: " + b"9" * 5000 + b"\n", "digits"),
    "nul_byte": (b"targets:\x00\n", "invalid YAML"),
}


def _check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", *args],
        capture_output=True,
        text=True,
        timeout=60,  # a bound on a hang, not a speed test
        cwd=REPO,
    )


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_check_config_refuses_hostile_config(case: str, tmp_path: Path) -> None:
    content, expected = HOSTILE[case]
    path = tmp_path / f"{case}.yml"
    path.write_bytes(content)
    result = _check_config("--config.file", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{path}: " in result.stderr and expected in result.stderr, result.stderr


@pytest.mark.parametrize("case", ["invalid_utf8", "deep_flow", "billion_laughs", "huge"])
def test_check_config_refuses_hostile_web_config(case: str, tmp_path: Path) -> None:
    content, expected = HOSTILE[case]
    config = tmp_path / "config.yml"
    config.write_text("targets: [{name: a, dsn: 'host=localhost'}]\n")
    web = tmp_path / f"web-{case}.yml"
    web.write_bytes(content)
    result = _check_config("--config.file", str(config), "--web.config.file", str(web))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{web}: " in result.stderr, result.stderr
    if case != "huge":  # the web config's own cap is smaller: "larger than 1 MiB"
        assert expected in result.stderr, result.stderr


def test_files_that_are_not_regular_files_are_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for path, what in ((fifo, "not a regular file"), (tmp_path, "a directory")):
        result = _check_config("--config.file", str(path))
        assert result.returncode == 2 and what in result.stderr, result.stderr
    result = _check_config("--config.file", "/dev/zero")
    assert result.returncode == 2 and "not a regular file" in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"s3cr\xe9t\n", "not valid UTF-8"),
        (b"pass\x00word\n", "NUL byte"),
        (b"x" * (1 << 20), "larger than 64 KiB"),
    ],
)
def test_hostile_password_file(content: bytes, expected: str, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_bytes(content)
    config = tmp_path / "config.yml"
    config.write_text(f"targets: [{{name: a, dsn: 'host=x', password_file: '{secret}'}}]\n")
    result = _check_config("--config.file", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"targets[0].password_file: {secret}" in result.stderr and expected in result.stderr
    # The error never quotes the secret's bytes.
    assert "0xe9" not in result.stderr and "s3cr" not in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"s3cr\xe9t\n", "not valid UTF-8"), (b"pass\x00word\n", "NUL byte")],
)
def test_hostile_auth_module_password_file(content: bytes, expected: str, tmp_path: Path) -> None:
    """/probe's auth modules read their password_file with the same bounds as a target's."""
    secret = tmp_path / "password"
    secret.write_bytes(content)
    config = tmp_path / "config.yml"
    config.write_text(
        "auth_modules: {fleet: {type: userpass, userpass: {username: mon}, "
        f"password_file: '{secret}'}}}}\n"
        "probe: {allowed_hosts: ['127.0.0.1/32']}\n"
    )
    result = _check_config("--config.file", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "auth_modules.fleet.password_file" in result.stderr and expected in result.stderr
    assert "0xe9" not in result.stderr and "s3cr" not in result.stderr


def test_a_fifo_among_the_target_files_is_passed_over_without_waiting(tmp_path: Path) -> None:
    """Only regular files are target files (a FIFO's open would wait for a writer): matched
    by the glob, it is left out, and a file read is opened without blocking in any case."""
    (tmp_path / "sd").mkdir()
    os.mkfifo(tmp_path / "sd" / "targets.yml")  # opening it for reading would wait for a writer
    config = tmp_path / "config.yml"
    config.write_text(f"target_files: ['{tmp_path}/sd/*.yml']\n")
    result = _check_config("--config.file", str(config))
    assert result.returncode == 0, result.stderr
    assert "valid: 0 target(s)" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr


# --- property-based fuzzing of the loaders ---------------------------------------------------

# Characters that steer YAML's grammar, so that generated text reaches the parser's corners.
_YAML_ALPHABET = st.sampled_from(
    [
        *"[]{}:,-?&*!|>'\"#%@`\n\t \\.0123456789abcdenstxyz",
        *("targets", "name", "dsn", "<<", "!!binary", "!!set", "!!omap", "!!python/object"),
        *("&a ", "*a", "~", "null", "true", "2020-13-45", "0x", "1e999", "---", "...", "\r\n"),
        *("\ufeff", "\x85", "\u2028", "\ud800", "\x00", "\x1b", "\U0001f600", "\u00e9"),
    ]
)
_yaml_like = st.lists(_YAML_ALPHABET, max_size=80).map("".join)

# Valid-looking configs with random shapes and values, then mangled.
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
_data = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), children, max_size=4),
    ),
    max_leaves=20,
)
_configs = st.fixed_dictionaries(
    {
        "targets": st.lists(
            st.dictionaries(
                st.sampled_from(
                    [
                        "name",
                        "dsn",
                        "labels",
                        "connect_timeout",
                        "kind",
                        "login_check",
                        "password_file",
                    ]
                ),
                _data,
            ),
            max_size=3,
        )
    },
    optional={"settings": _data, "collectors": _data, "queries": _data, "extra": _data},
)


def _mangled(data: dict, flips: list[tuple[int, int]]) -> bytes:
    raw = bytearray(yaml.safe_dump(data, allow_unicode=True).encode())
    for position, byte in flips:
        if raw:
            raw[position % len(raw)] = byte
    return bytes(raw)


def _load_never_crashes(path: Path) -> None:
    for loader in (load_config, load_web_config):
        try:
            loader(str(path))
        except ConfigError as exc:
            assert exc.problems and all(p.startswith(f"{path}: ") for p in exc.problems), exc


_FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ
@given(content=st.binary(max_size=300))
def test_fuzz_any_bytes(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yml"
    path.write_bytes(content)
    _load_never_crashes(path)


@_FUZZ
@given(text=_yaml_like)
def test_fuzz_yaml_like_text(text: str, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _load_never_crashes(path)


@_FUZZ
@given(
    data=_configs,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
)
def test_fuzz_mangled_configs(data: dict, flips: list[tuple[int, int]], tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yml"
    path.write_bytes(_mangled(data, flips))
    _load_never_crashes(path)


@_FUZZ
@given(content=st.binary(max_size=200))
def test_fuzz_password_files(content: bytes, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_bytes(content)
    config = tmp_path / "config.yml"
    config.write_text(f"targets: [{{name: a, dsn: 'host=x', password_file: '{secret}'}}]\n")
    try:
        load_config(str(config))
    except ConfigError as exc:
        assert all(p.startswith(f"{config}: targets[0].password_file: ") for p in exc.problems)


def test_aliases_within_the_bounds_still_work(tmp_path: Path) -> None:
    """The bounds refuse abuse, not YAML: anchors, aliases and merge keys load as before."""
    path = tmp_path / "config.yml"
    path.write_text(
        "common: &common {env: prod, team: db}\n"
        "base: &base {connect_timeout: 3s, labels: *common}\n"
        "targets:\n"
        "  - {<<: *base, name: a, dsn: 'host=a'}\n"
        "  - {<<: *base, name: b, dsn: 'host=b'}\n"
    )
    data = load_yaml_file(path)
    assert data["targets"][1]["labels"] == {"env": "prod", "team": "db"}
    assert data["targets"][1]["connect_timeout"] == "3s"


# --- a reload of each hostile file, against a running exporter process ------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = new_cluster("18", max_connections=20)
    try:
        yield c
    finally:
        c.stop()


def test_reload_of_hostile_files_is_refused_and_serving_goes_on(
    cluster: LocalCluster, exporter_process, tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    good = f"targets: [{{name: a, dsn: '{cluster.dsn()}'}}]\n"
    config.write_text(good)
    proc = exporter_process("--config.file", str(config))
    proc.wait_ready()
    assert proc.scrape().value(RELOAD_OK) == 1
    for case in sorted(HOSTILE):
        config.write_bytes(HOSTILE[case][0])
        proc.proc.send_signal(signal.SIGHUP)
        s = wait_until(
            lambda: (s := proc.scrape()).value(RELOAD_OK) == 0 and s, 30, what=f"{case} refused"
        )
        assert s.value("pg_up", target="a") == 1, case
        assert proc.proc.poll() is None, proc.output()
        config.write_text(good)  # back to good, so that the next case's refusal is its own
        proc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: proc.scrape().value(RELOAD_OK) == 1, 30, what=f"good after {case}")
    assert "Traceback" not in proc.output()
    assert "not valid UTF-8" in proc.output() and "once aliases are expanded" in proc.output()
