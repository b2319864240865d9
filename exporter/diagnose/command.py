"""`pg-connections-exporter diagnose`: the guide's diagnosis of one server, over one connection.

One connection (application_name pg-connections-exporter-diagnose), every statement bounded by
statement and lock timeouts. With `--terminate` it runs the printed pg_terminate_backend
statement, after confirmation, and says which sessions ended. Bad input and unreachable or full
servers get a one-line reason and a non-zero exit, never a traceback or a password.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import psycopg
import psycopg.conninfo

from exporter.config.errors import ConfigError
from exporter.config.model import Target, load_config, parse_duration
from exporter.db import lenienttext
from exporter.db.failures import classify
from exporter.db.redact import describe_conninfo, scrub
from exporter.diagnose.analysis import IDLE_STATES, Criteria, Report, analyze, gather
from exporter.diagnose.poolers import read_poolers, render_poolers, view_of
from exporter.diagnose.text import render_text
from exporter.escaping import json_text, terminal
from exporter.kinds import PGBOUNCER, kind_of
from exporter.kinds.poolerbound import ServerView, view_dict

APPLICATION_NAME = "pg-connections-exporter-diagnose"
EXIT_FAILED = 1
EXIT_USAGE = 2
TERMINABLE_STATES = (*IDLE_STATES, "active")
FULL_REASONS = ("too_many_clients", "reserved_slots_only", "database_limit", "role_limit")
# How long to watch ended sessions leave pg_stat_activity before reporting.
GONE_WAIT = 5.0


class DiagnoseError(Exception):
    """A problem to report in one line, with the exit code it earns."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Source:
    """Where to connect, and how patiently."""

    name: str
    conninfo: str
    connect_timeout: float
    statement_timeout: float
    lock_timeout: float
    # With --config.file: the server's `server` label and the config's PgBouncer targets.
    server: str = ""
    poolers: tuple[Target, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pg-connections-exporter diagnose",
        description="Diagnose a server running out of connection slots: who holds them, who "
        "may still get in, what is stuck, what to end and what to change (one connection).",
    )
    p.add_argument("--dsn", help="libpq DSN or URI (default: $DATA_SOURCE_NAME)")
    p.add_argument("--config.file", dest="config_file", metavar="PATH", help="exporter config")
    p.add_argument("--target", help="the config's target to diagnose (with --config.file)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument(
        "--idle-age",
        default="10m",
        metavar="DURATION",
        help="sessions in a candidate state this long are termination candidates (default 10m)",
    )
    p.add_argument(
        "--long-query-age",
        default="1m",
        metavar="DURATION",
        help="active queries running this long are listed as long-running (default 1m)",
    )
    p.add_argument(
        "--state",
        action="append",
        choices=TERMINABLE_STATES,
        help="candidate state (repeatable; default: idle and both idle in transaction states)",
    )
    p.add_argument("--application", action="append", help="only this application_name (repeatable)")
    p.add_argument("--user", action="append", help="only sessions of this role (repeatable)")
    p.add_argument(
        "--database", action="append", help="only sessions of this database (repeatable)"
    )
    p.add_argument(
        "--terminate", action="store_true", help="end the candidates (asks first, unless --yes)"
    )
    p.add_argument("--yes", action="store_true", help="do not ask before --terminate")
    p.add_argument(
        "--no-query-text", action="store_true", help="leave query texts out of the report"
    )
    p.add_argument(
        "--ram",
        metavar="SIZE",
        help="the server's RAM (8GB, 512MB) for the guide's memory arithmetic",
    )
    p.add_argument("--connect-timeout", metavar="DURATION", help="default 5s, or the target's")
    p.add_argument("--statement-timeout", metavar="DURATION", help="default 5s, or query_timeout")
    return p


def main(argv: Sequence[str], stdin: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    args = build_parser().parse_args(argv)
    try:
        source = _source(args)
        criteria = Criteria(
            idle_seconds=_duration(args.idle_age, "--idle-age"),
            long_query_seconds=_duration(args.long_query_age, "--long-query-age"),
            states=tuple(dict.fromkeys(args.state)) if args.state else IDLE_STATES,
            applications=tuple(args.application or ()),
            users=tuple(args.user or ()),
            databases=tuple(args.database or ()),
        )
        ram = _size(args.ram) if args.ram else None
        with _connect(source) as conn:
            facts = _bounded(source, lambda: gather(conn, query_text=not args.no_query_text))
            report = analyze(facts, criteria, ram)
            view: ServerView | None = None
            unread: dict[str, str] = {}
            if source.poolers:
                poolers, unread = read_poolers(source.poolers)
                view = view_of(source.server, report.slots, poolers)
            if args.format == "text":
                sys.stdout.write(render_text(report, source.name))
                if view is not None:
                    sys.stdout.write(render_poolers(view, unread))
                sys.stdout.flush()
            result: dict[str, Any] | None = None
            if args.terminate:
                result = _terminate(conn, source, report, args.yes, stdin, args.format)
            if args.format == "json":
                doc = {"target": source.name, **report.as_dict()}
                if view is not None:
                    doc["poolers"] = view_dict(view, unread)
                if result is not None:
                    doc["terminated"] = result
                sys.stdout.write(json_text(doc, indent=2) + "\n")
        return 0
    except DiagnoseError as exc:
        print(terminal(f"pg-connections-exporter diagnose: {exc}"), file=sys.stderr)
        return exc.code


def _source(args: argparse.Namespace) -> Source:
    connect_timeout = (
        _duration(args.connect_timeout, "--connect-timeout") if args.connect_timeout else None
    )
    statement_timeout = (
        _duration(args.statement_timeout, "--statement-timeout") if args.statement_timeout else None
    )
    if args.config_file:
        if args.dsn:
            raise DiagnoseError("give --dsn or --config.file with --target, not both", EXIT_USAGE)
        try:
            config = load_config(args.config_file)
        except ConfigError as exc:
            raise DiagnoseError(
                "invalid configuration: " + "; ".join(exc.problems), EXIT_USAGE
            ) from None
        names = [t.name for t in config.targets]
        if not args.target:
            if len(names) != 1:
                raise DiagnoseError(
                    f"--target is needed: {args.config_file} has targets {', '.join(names)}",
                    EXIT_USAGE,
                )
            args.target = names[0]
        target = next((t for t in config.targets if t.name == args.target), None)
        if target is None:
            raise DiagnoseError(
                f"--target {args.target!r}: no such target in {args.config_file} "
                f"(known: {', '.join(names)})",
                EXIT_USAGE,
            )
        if not kind_of(target.kind).policy.offers_sessions:
            raise DiagnoseError(
                f"--target {args.target!r} is a {target.kind} target: diagnose needs PostgreSQL",
                EXIT_USAGE,
            )
        return Source(
            target.name,
            target.conninfo,
            connect_timeout or target.connect_timeout,
            statement_timeout or config.settings.query_timeout,
            config.settings.lock_timeout,
            target.server_label(),
            tuple(t for t in config.targets if t.kind == PGBOUNCER.name),
        )
    if args.target:
        raise DiagnoseError("--target needs --config.file", EXIT_USAGE)
    dsn = args.dsn or os.environ.get("DATA_SOURCE_NAME")
    if not dsn:
        raise DiagnoseError("no server: give --dsn, $DATA_SOURCE_NAME or --config.file", EXIT_USAGE)
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise DiagnoseError(
            "--dsn: not a valid libpq connection string or URI", EXIT_USAGE
        ) from None
    return Source(
        describe_conninfo(dsn), dsn, connect_timeout or 5.0, statement_timeout or 5.0, 1.0
    )


def _duration(value: str, flag: str) -> float:
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise DiagnoseError(f"{flag} {value!r}: {exc}", EXIT_USAGE) from None


def _size(value: str) -> int:
    units = {"TB": 1 << 40, "GB": 1 << 30, "MB": 1 << 20, "KB": 1 << 10, "B": 1}
    text = value.strip().upper()
    for unit, factor in units.items():
        if text.endswith(unit):
            number = text[: -len(unit)].strip()
            try:
                return int(float(number) * factor)
            except ValueError:
                break
    raise DiagnoseError(f"--ram {value!r}: expected a size such as 8GB or 512MB", EXIT_USAGE)


def _secret(source: Source) -> list[str]:
    try:
        return [str(psycopg.conninfo.conninfo_to_dict(source.conninfo).get("password") or "")]
    except psycopg.ProgrammingError:
        return []


def _connect(source: Source) -> psycopg.Connection[Any]:
    where = describe_conninfo(source.conninfo)
    try:
        conn = psycopg.connect(
            source.conninfo,
            autocommit=True,
            application_name=APPLICATION_NAME,
            connect_timeout=max(1, round(source.connect_timeout)),
            context=lenienttext.CONTEXT,  # names that are not UTF-8 must not fail the diagnosis
        )
    except psycopg.Error as exc:
        reason = classify(exc)
        message = scrub(" ".join(str(exc).split()), _secret(source))
        if reason in FULL_REASONS:
            user = psycopg.conninfo.conninfo_to_dict(source.conninfo).get("user") or "(default)"
            raise DiagnoseError(
                f"{where}: the server is full for role {user} ({reason}): {message}. "
                "Diagnose as a role that may use the reserved slots (a superuser, or on 16+ a "
                "member of pg_use_reserved_connections), or open the exporter's /sessions page, "
                "which works through the connection the exporter already holds."
            ) from None
        raise DiagnoseError(f"cannot connect to {where} ({reason}): {message}") from None
    try:
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, "
            "false), set_config('idle_in_transaction_session_timeout', %s, false)",
            (
                _ms(source.statement_timeout),
                _ms(source.lock_timeout),
                _ms(4 * source.statement_timeout),
            ),
        )
    except psycopg.Error as exc:
        conn.close()
        raise DiagnoseError(f"{where}: cannot set timeouts: {_one_line(exc)}") from None
    return conn


def _bounded(source: Source, work: Any) -> Any:
    try:
        return work()
    except psycopg.errors.QueryCanceled:
        raise DiagnoseError(
            f"{source.name}: a query took longer than {source.statement_timeout:g}s "
            "(statement_timeout) or waited on a lock past lock_timeout; try again or raise "
            "--statement-timeout"
        ) from None
    except psycopg.Error as exc:
        raise DiagnoseError(f"{source.name}: query failed: {_one_line(exc)}") from None


def _terminate(
    conn: psycopg.Connection[Any],
    source: Source,
    report: Report,
    yes: bool,
    stdin: TextIO,
    output_format: str,
) -> dict[str, Any]:
    """Run the report's statement once confirmed; which sessions ended, and which were left."""
    statement = report.candidates["statement"]
    listed = [row["pid"] for row in report.candidates["sessions"]]
    say = sys.stderr if output_format == "json" else sys.stdout
    if statement is None:
        print("nothing to terminate: no session matches the criteria", file=say)
        return {"ended": [], "left": [], "statement": None}
    if not yes:
        if not stdin.isatty():
            raise DiagnoseError(
                f"refusing to end {len(listed)} session(s) without confirmation: stdin is not "
                "a terminal; add --yes to confirm on the command line"
            )
        print(f"End these {len(listed)} session(s)? [y/N] ", end="", file=sys.stderr, flush=True)
        answer = stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            raise DiagnoseError("not confirmed: nothing was ended")
    rows = _bounded(source, lambda: conn.execute(statement).fetchall())
    signalled = [r[0] for r in rows if r[4]]
    gone = _wait_gone(conn, source, signalled)
    result = {
        "statement": statement,
        "ended": [
            {"pid": r[0], "user": r[1], "application": r[2], "state": r[3]}
            for r in sorted(rows)
            if r[4] and r[0] in gone
        ],
        "still_present": sorted(set(signalled) - gone),
        "left": sorted(set(listed) - set(signalled)),
    }
    print(
        f"ended {len(result['ended'])} session(s): "
        + (" ".join(str(r["pid"]) for r in result["ended"]) or "-"),
        file=say,
    )
    if result["left"]:
        print(
            f"left alone {len(result['left'])} listed session(s) that no longer matched (or "
            f"were gone already): {' '.join(map(str, result['left']))}",
            file=say,
        )
    if result["still_present"]:
        print(
            "signalled but still present after "
            f"{GONE_WAIT:g}s: {' '.join(map(str, result['still_present']))}",
            file=say,
        )
    return result


def _wait_gone(conn: psycopg.Connection[Any], source: Source, pids: list[int]) -> set[int]:
    """Which of `pids` have left pg_stat_activity, watched for up to GONE_WAIT seconds."""
    if not pids:
        return set()
    deadline = time.monotonic() + GONE_WAIT
    while True:
        present = {
            r[0]
            for r in _bounded(
                source,
                lambda: conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
                ).fetchall(),
            )
        }
        if not present or time.monotonic() > deadline:
            return set(pids) - present
        time.sleep(0.05)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"
