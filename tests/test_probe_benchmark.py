"""benchmarks/probe_cost.py runs end to end in its quick mode. Timings are not checked (they
depend on the machine); the sessions each way of covering the servers holds are."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness.localpg import debian_bindir
from tests.conftest import require
from tests.helpers import REPO
from tests.test_benchmark import PEER_BINARY, table_rows


@pytest.mark.slow
def test_quick_probe_benchmark(tmp_path: Path) -> None:
    require(debian_bindir(15) is not None, "PostgreSQL 15 server binaries")
    require(Path(PEER_BINARY).exists(), f"program {PEER_BINARY}")
    scratch = Path(tempfile.mkdtemp(prefix="pgce-probe-bench-test-"))
    report = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "benchmarks/probe_cost.py", "--quick", "--write", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row[0]: row for row in table_rows(report.read_text(), "| how |")}
    assert set(rows) == {
        "pg-connections-exporter /probe",
        "pg-connections-exporter /metrics (static list)",
        "postgres_exporter /metrics (DSN list)",
    }
    # Three servers: one held session each, whichever way they are covered.
    assert {row[-1] for row in rows.values()} == {"3"}
    assert rows["pg-connections-exporter /probe"][1] == "3"  # one request per server
    for row in rows.values():
        assert float(row[2]) > 0 and float(row[4]) >= 0
    assert list(scratch.iterdir()) == []
    scratch.rmdir()
