"""The probe's pure logic: the target syntax and the host allow-list (no server needed)."""

from __future__ import annotations

import psycopg.conninfo
import pytest

from exporter.config.allowlist import HostAllowList, parse_rule
from exporter.config.authmodules import AuthModule, BadTarget, ProbeAddress, parse_probe_target


@pytest.mark.parametrize(
    ("text", "host", "port", "db"),
    [
        ("db1", "db1", 5432, None),
        ("DB1.Example.com:6432/shop", "db1.example.com", 6432, "shop"),
        ("10.0.0.5/postgres", "10.0.0.5", 5432, "postgres"),
        ("[::1]:5433/x", "::1", 5433, "x"),
        ("[2001:DB8::1]", "2001:db8::1", 5432, None),
        ("postgresql://db1:5432/orders", "db1", 5432, "orders"),
        ("postgres://db1", "db1", 5432, None),
    ],
)
def test_probe_targets(text: str, host: str, port: int, db: str | None) -> None:
    assert parse_probe_target(text) == ProbeAddress(host, port, db)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a" * 600,
        "db1:0",
        "db1:65536",
        "db1:x",
        "user@db1",
        "db1/shop?sslmode=disable",
        "db1#frag",
        "/var/run/postgresql",
        "db1,db2",
        "-db1",
        "db_1",
        "[::1",
        "[not-v6]",
        "127.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "db1/bad name",
        "db1/" + "d" * 64,
        "mysql://db1",
        "db1\n",
    ],
)
def test_bad_probe_targets(text: str) -> None:
    with pytest.raises(BadTarget):
        parse_probe_target(text)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("db-1.prod.example.com", True),
        ("DB-1.PROD.example.com.", True),
        ("db-1.staging.example.com", False),
        ("prod.example.com.evil.org", False),
        ("10.20.3.4", True),
        ("10.21.0.1", False),
        ("fd00::5", True),
        ("::ffff:10.20.3.4", False),  # an IPv4-mapped address is not an IPv4 one
        ("192.168.1.10", True),
        ("192.168.1.11", False),
        ("localhost", False),
    ],
)
def test_allow_list(host: str, allowed: bool) -> None:
    rules = HostAllowList(
        tuple(parse_rule(r) for r in ("db-*.PROD.example.com", "10.20.0.0/16", "fd00::/8",
                                      "192.168.1.10"))
    )  # fmt: skip
    assert (rules.refusal(host) is None) == allowed


def test_a_pattern_never_matches_an_address() -> None:
    rules = HostAllowList((parse_rule("10.*"),))
    assert rules.refusal("10.0.0.1") is not None
    assert "matches no entry" in str(rules.refusal("10.0.0.1"))


def test_empty_allow_list_allows_nothing() -> None:
    assert "probes of servers are off" in str(HostAllowList().refusal("db1"))


@pytest.mark.parametrize("rule", ["10.0.0.0/33", "db 1", "*", "*.*", "db1;rm", ""])
def test_bad_rules(rule: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(rule)


def test_auth_module_conninfo_takes_where_from_the_target_and_who_from_the_module() -> None:
    module = AuthModule("m", "mon", "s3cret", {"sslmode": "require"}, "postgres", "pg_monitor", 5)
    params = psycopg.conninfo.conninfo_to_dict(module.conninfo(ProbeAddress("db1", 6432, None)))
    assert params == {
        "host": "db1",
        "port": "6432",
        "dbname": "postgres",
        "user": "mon",
        "password": "s3cret",
        "sslmode": "require",
        "options": "-c role=pg_monitor",
    }
    assert "s3cret" not in repr(module)
