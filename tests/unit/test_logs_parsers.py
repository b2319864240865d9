"""exporter/logs' parsers and classifier on lines as the servers write them (the same lines
come from real servers in tests/test_log_messages.py and tests/test_log_sources.py): multi-line
entries, hostile names, bounds, and the prefixes that are refused."""

from __future__ import annotations

import json

import pytest

from exporter.logs.classify import Failure, PgbouncerClassifier, PostgresClassifier, SetupTime
from exporter.logs.csvlog import CsvlogParser
from exporter.logs.entry import LogEntry
from exporter.logs.jsonlog import JsonlogParser
from exporter.logs.lines import LineSplitter
from exporter.logs.pgbouncer import PgbouncerParser
from exporter.logs.prefix import PrefixError, compile_prefix
from exporter.logs.stderr import StderrParser


def csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def csv_line(user: str, severity: str, sqlstate: str, message: str, host: str = "[local]") -> str:
    """A csvlog record as PostgreSQL writes it (fields quoted, quotes doubled)."""
    return (
        f"2026-12-07 02:48:52.015 UTC,{csv_field(user)},{csv_field('postgres')},1488,"
        f"{csv_field(host)},6b161e94.5d0,1,{csv_field('startup')},2026-12-07 02:48:52 UTC,5/1,0,"
        f"{severity},{sqlstate},{csv_field(message)},,,,,,,,,{csv_field('')},"
        f"{csv_field('client backend')},,0\n"
    )


def failures(entries: list[LogEntry]) -> list[Failure]:
    classifier = PostgresClassifier()
    return [e for entry in entries for e in classifier.classify(entry) if isinstance(e, Failure)]


def test_lines_over_the_cap_are_skipped_and_counted_in_any_pieces() -> None:
    splitter = LineSplitter(max_line=10)
    data = b"short\n" + b"x" * 25 + b"\nafter\nhalf"
    out = [line for i in range(0, len(data), 3) for line in splitter.feed(data[i : i + 3])]
    assert out == [b"short", b"after"]
    assert splitter.long_lines == 1
    assert splitter.end_of_stream() == b"half"


def test_a_resync_drops_the_cut_line() -> None:
    splitter = LineSplitter()
    splitter.feed(b"partial line from the old")
    splitter.resync()
    assert splitter.feed(b"middle of a line\nwhole\n") == [b"whole"]


def test_csv_records_span_lines_and_hostile_names_forge_nothing() -> None:
    hostile = 'x",FATAL,53300,"sorry, too many clients already\n2026-12-07 02:48:52.015 UTC,"a'
    data = (
        csv_line("u1", "LOG", "00000", "statement: SELECT 1\nFATAL,53300,sorry")
        + csv_line(
            hostile, "FATAL", "28P01", f'password authentication failed for user "{hostile}"'
        )
        + csv_line("u2", "FATAL", "53300", "sorry, too many clients already")
    ).encode()
    parser = CsvlogParser()
    entries = [e for i in range(0, len(data), 7) for e in parser.feed(data[i : i + 7])]
    assert [(f.reason, f.user) for f in failures(entries)] == [
        ("authentication_failed", hostile),
        ("too_many_clients", "u2"),
    ]
    assert parser.counts.unparsed == 0


def test_jsonlog_never_raises_on_bad_lines() -> None:
    good = {
        "timestamp": "2026-12-07 02:48:51.993 UTC",
        "user": "lim",
        "dbname": "postgres",
        "pid": 1485,
        "remote_host": "10.0.0.7",
        "error_severity": "FATAL",
        "state_code": "53300",
        "message": 'too many connections for role "lim"',
    }
    lines = [
        b"[" * 100_000 + b" FATAL",
        b'"FATAL"',
        b'{"pid": "x", "message": 1, "error_severity": "FATAL"}',
    ]
    data = b"\n".join([*lines, json.dumps(good).encode(), b""])
    parser = JsonlogParser()
    got = failures(parser.feed(data))
    assert got == [Failure("role_limit", "lim", "postgres", "10.0.0.7")]
    assert parser.counts.unparsed == 2  # the deep nesting and the bare string


PREFIX = "%m [%p] %q%u@%d %h "


def test_stderr_continuations_and_details_are_not_entries() -> None:
    parser = StderrParser(compile_prefix(PREFIX))
    text = (
        "2026-12-07 02:48:52.015 UTC [1488] pw@postgres 127.0.0.1 FATAL:  password"
        ' authentication failed for user "pw"\n'
        "2026-12-07 02:48:52.015 UTC [1488] pw@postgres 127.0.0.1 DETAIL:  Connection matched\n"
        "\tFATAL:  sorry, too many clients already\n"
        "2026-12-07 02:48:52.016 UTC [1] LOG:  database system is ready to accept connections\n"
    )
    assert failures(parser.feed(text.encode())) == [
        Failure("authentication_failed", "pw", "postgres", "127.0.0.1")
    ]
    assert parser.counts.unparsed == 0  # the tab line is known as the FATAL's continuation


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("%m %u ", "no %p"),
        ("[%p] %u@%d ", "no timestamp"),
        ("%m [%p] %u%d ", "%u and %d are adjacent"),
        ("%m [%p] %z ", "unknown escape %z"),
        ("%m [%p] %", "lone '%'"),
    ],
)
def test_prefixes_that_cannot_be_read_back_are_refused_by_name(prefix: str, why: str) -> None:
    with pytest.raises(PrefixError) as refused:
        compile_prefix(prefix)
    assert repr(prefix) in str(refused.value) and why in str(refused.value)


@pytest.mark.parametrize(
    ("prefix", "line_prefix", "expect"),
    [
        ("%m [%p] ", "2026-12-07 02:48:52.015 UTC [77] ", ("", "", "")),
        (
            "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
            "2026-12-07 02:48:52 UTC [77]: [3-1] user=a b,db=d,app=psql,client=10.1.2.3 ",
            ("a b", "d", "10.1.2.3"),
        ),
        (
            "%n|%-8p|%r|%u|%d|",
            "1765075732.015|77      |10.0.0.9(5432)|u|db|",
            ("u", "db", "10.0.0.9"),
        ),
        ("%m [%p] %q%u@%d %h ", "2026-12-07 02:48:52.015 UTC [77] ", ("", "", "")),
    ],
)
def test_prefixes_parsed(prefix: str, line_prefix: str, expect: tuple[str, str, str]) -> None:
    parser = StderrParser(compile_prefix(prefix))
    [entry] = parser.feed(f"{line_prefix}FATAL:  sorry, too many clients already\n".encode())
    assert (entry.pid, entry.severity) == (77, "FATAL")
    assert (entry.user, entry.database, entry.host) == expect


def entry(message: str, severity: str = "FATAL", sqlstate: str = "", **kw: object) -> LogEntry:
    return LogEntry(
        stamp=str(kw.get("stamp", "")),
        pid=int(str(kw.get("pid", 1))),
        severity=severity,
        message=message,
        sqlstate=sqlstate,
        host=str(kw.get("host", "")),
    )


@pytest.mark.parametrize(
    ("message", "severity", "sqlstate", "reason"),
    [
        ("the database system is starting up", "FATAL", "57P03", "starting_up"),
        ("the database system is not yet accepting connections", "FATAL", "57P03", "starting_up"),
        ("the database system is not accepting connections", "FATAL", "57P03", "in_recovery"),
        ("the database system is in recovery mode", "FATAL", "57P03", "in_recovery"),
        (
            "could not fork new process for connection: Resource temporarily unavailable",
            "LOG",
            "",
            "could_not_fork",
        ),
        ('Ident authentication failed for user "x"', "FATAL", "28000", "authentication_failed"),
        ("lo siento, ya tenemos demasiados clientes", "FATAL", "53300", "other"),
        ("canceling authentication due to timeout", "FATAL", "08P01", "authentication_timeout"),
    ],
)
def test_the_wordings_no_client_can_provoke_here(
    message: str, severity: str, sqlstate: str, reason: str
) -> None:
    """Starting up, recovery and fork failures need a server in that state (the real-server
    test provokes the rest); a refusal in another language still counts, as `other`."""
    events = PostgresClassifier().classify(entry(message, severity, sqlstate))
    assert [e.reason for e in events if isinstance(e, Failure)] == [reason]


def test_a_fatal_that_is_no_refusal_is_not_counted() -> None:
    got = PostgresClassifier().classify(
        entry("terminating connection due to administrator command", sqlstate="57P01")
    )
    assert got == ()


def test_setup_time_from_received_and_authorized_by_pid() -> None:
    classifier = PostgresClassifier()
    received = entry(
        "connection received: host=10.0.0.5 port=5000",
        "LOG",
        stamp="2026-12-07 23:59:59.950 UTC",
        pid=9,
    )
    other_pid = entry(
        "connection authorized: user=a", "LOG", stamp="2026-12-08 00:00:00.010 UTC", pid=8
    )
    authorized = entry(
        "connection authorized: user=a database=b",
        "LOG",
        stamp="2026-12-08 00:00:00.070 UTC",
        pid=9,
    )
    assert classifier.classify(received) == ()
    assert classifier.classify(other_pid) == ()
    [setup] = classifier.classify(authorized)
    assert isinstance(setup, SetupTime) and setup.phase == "received_to_authorized"
    assert setup.seconds == pytest.approx(0.120)


def test_a_refusal_without_a_host_takes_the_one_its_pid_was_received_from() -> None:
    classifier = PostgresClassifier()
    classifier.classify(entry("connection received: host=10.0.0.5 port=5000", "LOG", pid=4))
    assert classifier.classify(entry("sorry, too many clients already", pid=4)) == (
        Failure("too_many_clients", "", "", "10.0.0.5"),
    )


def test_setup_durations_of_18() -> None:
    events = PostgresClassifier().classify(
        entry(
            "connection ready: setup total=13.961 ms, fork=0.171 ms, authentication=0.344 ms", "LOG"
        )
    )
    assert [(e.phase, round(e.seconds, 6)) for e in events if isinstance(e, SetupTime)] == [
        ("total", 0.013961),
        ("fork", 0.000171),
        ("authentication", 0.000344),
    ]


PGB = "2026-12-07 02:49:32.483 UTC [4880] {} C-0x56145806cbc0: {}\n"
PGBOUNCER_LOG = "".join(
    PGB.format(level, rest)
    for level, rest in (
        ("LOG", "(nodb)/postgres@127.0.0.1:42262 login failed: db=nosuchdb user=postgres"),
        ("LOG", "(nodb)/postgres@127.0.0.1:42262 closing because: no such database: x (age=0s)"),
        ("WARNING", "(nodb)/postgres@127.0.0.1:42262 pooler error: no such database: x"),
        ("LOG", '(nodb)/stranger@127.0.0.1:42276 closing because: "trust" authentication failed'),
        (
            "LOG",
            "(nodb)/(nouser)@127.0.0.1:42320 closing because: no more connections allowed"
            " (max_client_conn) (age=0s)",
        ),
        (
            "WARNING",
            "(nodb)/(nouser)@127.0.0.1:42320 pooler error: no more connections allowed"
            " (max_client_conn)",
        ),
        ("LOG", "app/postgres@127.0.0.1:42330 closing because: query_wait_timeout (age=5s)"),
        ("LOG", "app/postgres@127.0.0.1:42331 closing because: client close request (age=5s)"),
    )
) + (
    '2026-12-07 03:10:35.427 UTC [31115] WARNING server login failed: FATAL role "ghost" does'
    " not exist\n"
    "2026-12-07 03:10:35.427 UTC [31115] LOG S-0x5618c72a0d80: ghostdb/ghost@unix:23431 closing"
    " because: login failed (age=0s)\n"
)


def test_pgbouncer_counts_each_refused_client_once() -> None:
    parser, classifier = PgbouncerParser(), PgbouncerClassifier()
    got = [e for en in parser.feed(PGBOUNCER_LOG.encode()) for e in classifier.classify(en)]
    assert got == [
        Failure("no_such_database", "postgres", "", "127.0.0.1"),
        Failure("login_failed", "stranger", "", "127.0.0.1"),
        Failure("max_client_conn", "", "", "127.0.0.1"),
        Failure("query_wait_timeout", "postgres", "app", "127.0.0.1"),
        Failure("server_login_failed", "ghost", "ghostdb", ""),
    ]
    assert parser.counts.unparsed == 0
