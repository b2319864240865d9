"""exporter/logs' file tail, remote tail and counters on files this test writes: rotation,
rename, copy-truncate, start at the end, falling behind, a vanished directory; the counters'
bound and monotony; and the parsers over arbitrary bytes (hypothesis)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from exporter.logs.classify import MAX_PENDING, Failure, PostgresClassifier
from exporter.logs.counters import OTHER, FailureCounts
from exporter.logs.csvlog import CsvlogParser
from exporter.logs.filetail import FileTail
from exporter.logs.jsonlog import JsonlogParser
from exporter.logs.pgbouncer import PgbouncerParser
from exporter.logs.prefix import compile_prefix
from exporter.logs.remote import ReadRequest, RemoteTail
from exporter.logs.source import Piece
from exporter.logs.stderr import StderrParser
from exporter.logs.stream import LogStream

LINE = (
    "2026-12-07 02:48:52.015 UTC [{pid}] u@db 10.0.0.{n} FATAL:  sorry, too many clients already\n"
)


def lines(first: int, count: int) -> str:
    return "".join(LINE.format(pid=first + i, n=(first + i) % 250) for i in range(count))


def read_all(tail: FileTail, stream: LogStream, budget: int = 1 << 20) -> int:
    """Failures counted from what the tail gives now."""
    return sum(isinstance(e, Failure) for e in stream.feed(tail.read_available(budget)))


def setup(tmp_path: Path, **kw: object) -> tuple[FileTail, LogStream]:
    tail = FileTail(tmp_path, "*.log", **kw)  # type: ignore[arg-type]
    stream = LogStream(
        {"target": "t"}, "stderr", tail.counts, log_line_prefix="%m [%p] %q%u@%d %h "
    )
    return tail, stream


def test_starts_at_the_end_then_counts_only_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "postgresql-1.log"
    log.write_text(lines(0, 5) + "2026-12-07 02:48:52.015 UTC [1] u@db 10.0.0.1 FATAL:  sorry, too")
    tail, stream = setup(tmp_path)
    assert read_all(tail, stream) == 0
    assert tail.counts.skipped["start"] == log.stat().st_size
    with log.open("a") as f:
        f.write(" many clients already\n" + lines(5, 3))  # the cut line is not counted
    assert read_all(tail, stream) == 3


def test_follows_new_files_renames_and_copy_truncate(tmp_path: Path) -> None:
    first = tmp_path / "postgresql-1.log"
    first.write_text("")
    tail, stream = setup(tmp_path)
    read_all(tail, stream)
    first.write_text(lines(0, 4))
    # The collector starts the next file; the old one got 2 more lines before it was left.
    with first.open("a") as f:
        f.write(lines(4, 2))
    second = tmp_path / "postgresql-2.log"
    second.write_text(lines(6, 3))
    os.utime(second, ns=(first.stat().st_mtime_ns + 1, first.stat().st_mtime_ns + 1))
    assert read_all(tail, stream) == 9
    assert tail.counts.rotations == {"next_file": 1}
    # logrotate's rename: the open file is read to its end, then the new one with the name.
    with second.open("a") as f:
        f.write(lines(9, 1))
    second.rename(tmp_path / "postgresql-2.log.1")
    third = tmp_path / "postgresql-2.log"
    third.write_text(lines(10, 2))
    os.utime(third, ns=(second.with_suffix(".log.1").stat().st_mtime_ns + 1,) * 2)
    assert read_all(tail, stream) == 3
    # copy-truncate: the file shrinks under the reader, which reads it again from its start.
    third.write_text(lines(12, 1))
    assert read_all(tail, stream) == 1
    assert tail.counts.rotations == {"next_file": 2, "truncated": 1}


def test_lines_written_to_the_old_file_as_the_next_appears_are_not_lost(tmp_path: Path) -> None:
    first = tmp_path / "postgresql-1.log"
    first.write_text("")
    tail, stream = setup(tmp_path)
    read_all(tail, stream)
    second = tmp_path / "postgresql-2.log"
    second.write_text(lines(1, 1))
    os.utime(second, ns=(first.stat().st_mtime_ns + 10**9,) * 2)
    following = tail._following

    def late_write():  # the collector's last write to the old file lands after our EOF read
        with first.open("a") as f:
            f.write(lines(0, 1))
        tail._following = following  # type: ignore[method-assign]
        return following()

    tail._following = late_write  # type: ignore[method-assign]
    assert read_all(tail, stream) == 2


def test_a_budget_bounds_each_call_and_a_backlog_is_skipped_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "postgresql-1.log"
    log.write_text("")
    tail, stream = setup(tmp_path, max_backlog=10_000)
    read_all(tail, stream)
    log.write_text(lines(0, 20))
    pieces = tail.read_available(300)
    assert sum(len(p.data) for p in pieces) == 300
    with log.open("a") as f:
        f.write(lines(20, 400))
    read_all(tail, stream, budget=1000)  # far behind: skips to the newest bytes
    assert tail.counts.skipped["behind"] > 10_000
    with log.open("a") as f:
        f.write(lines(420, 2))
    assert read_all(tail, stream) == 2


def test_a_vanished_log_is_a_metric_and_one_log_line(tmp_path: Path, caplog) -> None:
    directory = tmp_path / "log"
    directory.mkdir()
    (directory / "a.log").write_text("")
    tail, stream = setup(directory)
    read_all(tail, stream)
    (directory / "a.log").unlink()
    directory.rmdir()
    for _ in range(3):
        assert tail.read_available(1000) == []
    assert tail.counts.up is False and tail.counts.errors == {"missing": 3}
    assert [r.getMessage() for r in caplog.records] == ["cannot read the log"]
    text = generate_latest(_registry(stream)).decode()
    assert 'pg_connections_exporter_log_up{target="t"} 0.0' in text
    assert 'pg_connections_exporter_log_errors_total{reason="missing",target="t"} 3.0' in text


def _registry(stream: LogStream) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(stream)  # type: ignore[arg-type]
    return registry


def test_label_sets_past_the_bound_go_to_other_and_counts_never_move() -> None:
    counts = FailureCounts(max_series=2)
    for user in ("a", "b", "c", "d", "a"):
        counts.add(Failure("too_many_clients", user, "db", "h"))
    assert counts.counts == {
        ("too_many_clients", "a", "db", "h"): 2,
        ("too_many_clients", "b", "db", "h"): 1,
        ("too_many_clients", OTHER, OTHER, OTHER): 2,
    }


def test_two_readers_of_the_metrics_see_the_same_monotonic_totals(tmp_path: Path) -> None:
    stream = LogStream(
        {"target": "t"}, "stderr", FileTail(tmp_path).counts, log_line_prefix="%m [%p] %q%u@%d %h "
    )
    stream.feed([Piece(lines(0, 3).encode())])
    registry = _registry(stream)
    first, second = generate_latest(registry), generate_latest(registry)
    assert first == second
    assert (
        b'pg_connection_failures_total{client_addr="10.0.0.0",datname="db",'
        b'reason="too_many_clients",target="t",usename="u"} 1.0' in first
    )
    stream.feed([Piece(lines(250, 1).encode())])
    assert (
        b'client_addr="10.0.0.0",datname="db",reason="too_many_clients",target="t",usename="u"} 2.0'
        in generate_latest(registry)
    )


def where(request: ReadRequest | None) -> tuple[str, int, int] | None:
    return None if request is None else (request.name, request.offset, request.length)


def test_remote_tail_plans_reads_from_the_listing() -> None:
    tail = RemoteTail("*.csv")
    # At the end: from its last byte, read again to see whether it ends a line.
    request = tail.plan([("a.csv", 100, 1.0), ("a.log", 50, 2.0)], 1000)
    assert where(request) == ("a.csv", 99, 1) and tail.counts.skipped == {"start": 99}
    assert request is not None
    [piece] = tail.take(request, b"\n")
    assert piece.resync
    request = tail.plan([("a.csv", 160, 3.0)], 1000)
    assert where(request) == ("a.csv", 100, 60) and request is not None
    [piece] = tail.take(request, b"x" * 60)
    assert not piece.resync and not piece.new_file
    # Rotated: once more to the old file's end, then the new one from its start.
    request = tail.plan([("a.csv", 160, 3.0), ("b.csv", 20, 4.0)], 1000)
    assert where(request) == ("a.csv", 160, 1000) and request is not None
    assert tail.take(request, b"") == []
    request = tail.plan([("a.csv", 160, 3.0), ("b.csv", 20, 4.0)], 1000)
    assert where(request) == ("b.csv", 0, 20) and request is not None
    [piece] = tail.take(request, b"y" * 20)
    assert piece.new_file and tail.counts.rotations == {"next_file": 1}
    # Truncated under the same name (copy-truncate): from its start.
    request = tail.plan([("b.csv", 5, 5.0)], 1000)
    assert where(request) == ("b.csv", 0, 5)
    assert tail.counts.rotations == {"next_file": 1, "truncated": 1}


PARSERS = [
    lambda: CsvlogParser(max_line=4096),
    lambda: JsonlogParser(max_line=4096),
    lambda: StderrParser(compile_prefix("%m [%p] %q%u@%d %h "), max_line=4096),
    lambda: PgbouncerParser(max_line=4096),
]
FRAGMENTS = st.sampled_from(
    [
        b"\n",
        b'"',
        b"\t",
        b"\x00",
        b"\xff\xfe",
        b"FATAL",
        b"FATAL:  ",
        b",FATAL,53300,",
        b"connection ",
        b"2026-12-07 02:48:52.015 UTC [12] ",
        b"{",
        b"[",
        b" closing because: ",
        b"x" * 5000,
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(st.binary(max_size=64), FRAGMENTS), max_size=40),
    st.integers(min_value=1, max_value=97),
)
def test_parsers_take_any_bytes_in_any_pieces_with_bounded_state(
    chunks: list[bytes], size: int
) -> None:
    data = b"".join(chunks)
    for make in PARSERS:
        parser = make()
        classifier = PostgresClassifier()
        for i in range(0, len(data), size):
            for entry in parser.feed(data[i : i + size]):
                classifier.classify(entry)
            assert parser.splitter._partial_len <= 4096
            assert sum(map(len, getattr(parser, "_record", []))) <= 2 * 4096 + 1
        parser.end_of_stream()
        assert len(classifier._pending) <= MAX_PENDING


def test_the_readme_lists_every_family_the_stream_yields() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Refused connections\n", 1)[1].split("\n## ", 1)[0]
    table = section[section.index("| Metric |") :]
    listed = set(re.findall(r"`((?:pg|pgbouncer)_[a-z_]+)`", table))
    names = set()
    for log_format in ("csvlog", "pgbouncer"):
        stream = LogStream({"target": "t"}, log_format, FileTail(".").counts)  # type: ignore[arg-type]
        names |= {f.name + ("_total" if f.type == "counter" else "") for f in stream.collect()}
    assert names == listed
