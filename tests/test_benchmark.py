"""The benchmark script runs end to end in its quick mode. Its timings are not checked (they
depend on the machine); what it reports about connections held is."""

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

PEER_BINARY = "/usr/bin/prometheus-postgres-exporter"
OURS, PEER = "pg-connections-exporter", "postgres_exporter"


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_quick_benchmark_reports_both_exporters_with_one_connection_per_target(
    tmp_path: Path,
) -> None:
    require(debian_bindir(15) is not None, "PostgreSQL 15 server binaries")
    require(Path(PEER_BINARY).exists(), f"program {PEER_BINARY}")
    # Its own TMPDIR, so that other runs on the machine do not count.
    scratch = Path(tempfile.mkdtemp(prefix="pgce-bench-test-"))
    report = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "benchmarks/scrape_cost.py", "--quick", "--write", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = report.read_text()

    sizes = table_rows(text, "| N |")
    by_who = {(row[0], row[1].split(" (")[0]): row for row in sizes}
    for n in ("20", "60"):
        for who in ("raw query", OURS, PEER):
            assert float(by_who[(n, who)][2]) > 0, (n, who)
        # Twenty clients scraping at once share one run, on the one held connection.
        assert by_who[(n, OURS)][-1] == "1 / 1"
        assert by_who[(n, PEER)][-1] != ""

    targets = {(row[0], row[1]): row for row in table_rows(text, "| exporter | targets |")}
    assert targets[(OURS, "1")][-1] == "1 / 1"
    assert targets[(OURS, "3")][-1] == "3 / 3"
    assert set(targets) == {(OURS, "1"), (OURS, "3"), (PEER, "1"), (PEER, "3")}

    # Its working directory (exporter logs and configs) and its cluster are gone.
    assert list(scratch.iterdir()) == []
    scratch.rmdir()
