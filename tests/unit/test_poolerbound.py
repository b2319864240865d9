"""The poolers' arithmetic and the server join label, worked out by hand from the settings."""

from __future__ import annotations

import math

import pytest

from exporter.config.errors import ConfigError
from exporter.config.model import parse_config
from exporter.kinds.poolerbound import (
    PooledDatabase,
    PoolerFacts,
    compute,
    facts_from_rows,
    server_view,
)
from exporter.kinds.serveraddress import dsn_server, server_addresses

SERVER = "db1:5432"


def database(name: str, **settings: object) -> PooledDatabase:
    values: dict[str, object] = {
        "host": "db1",
        "port": "5432",
        "upstream_database": name,
        "force_user": "",
        "pool_size": 20,
        "reserve_pool": 5,
        "max_db_connections": 0,
    }
    values.update(settings)
    return PooledDatabase(name, **values)  # type: ignore[arg-type]


def issue_pooler(**facts: object) -> PoolerFacts:
    """The issue's pooler: four databases, two users seen, pool_size 20 plus a reserve of 5."""
    dbs = tuple(database(f"db{i}") for i in range(4))
    values: dict[str, object] = {"pools": frozenset({("db0", "web"), ("db1", "jobs")})}
    values.update(facts)
    return PoolerFacts(dbs, **values)  # type: ignore[arg-type]


def by_server(facts: PoolerFacts) -> float:
    return compute(facts, lambda d: [SERVER]).servers[SERVER]


def test_the_issues_three_replicas_may_open_600() -> None:
    bounds = compute(issue_pooler(), lambda d: [SERVER])
    # 4 databases x 2 users x (20 + 5), six of the eight pools not opened yet.
    assert bounds.servers[SERVER] == 200
    assert len(bounds.pools) == 8 and sum(not p.exists for p in bounds.pools) == 6
    view = server_view(SERVER, 97, 10, {f"pgbouncer-{i}": bounds for i in range(3)})
    assert view.bound == 600
    assert view.overcommit_ratio == pytest.approx(600 / 87)  # 10 direct: 97 - 10 left


def test_a_reserve_without_reserve_pool_timeout_opens_nothing() -> None:
    assert by_server(issue_pooler(reserve_pool_timeout=0)) == 4 * 2 * 20


def test_max_user_connections_is_shared_between_databases() -> None:
    # Each pool alone could open 25; each user at most 30 over the four databases.
    bounds = compute(issue_pooler(max_user_connections=30), lambda d: [SERVER])
    assert {p.bound for p in bounds.pools} == {25}
    assert {d.bound for d in bounds.databases} == {50}
    assert bounds.servers[SERVER] == 60
    # A per-user limit (SHOW USERS, 1.23+) beats the global one: 30 + 10.
    assert by_server(issue_pooler(max_user_connections=30, user_max_connections={"web": 10})) == 40


def test_max_db_connections_caps_a_database_and_names_itself() -> None:
    facts = PoolerFacts(
        (database("a", max_db_connections=12), database("b", pool_size=3, reserve_pool=0)),
        frozenset({("a", "x"), ("a", "y")}),
    )
    bounds = compute(facts, lambda d: [SERVER])
    assert {(d.database, d.bound, d.limited_by) for d in bounds.databases} == {
        ("a", 12, "max_db_connections"),
        ("b", 6, "pool_size+reserve_pool"),
    }
    assert bounds.servers[SERVER] == 18


def test_a_forced_user_is_one_pool_and_the_admin_console_none() -> None:
    facts = PoolerFacts(
        (
            database("app", force_user="svc"),
            PooledDatabase("pgbouncer", "", "6432", "pgbouncer", "pgbouncer", 2, 0, 0),
        ),
        frozenset({("app", "svc"), ("pgbouncer", "pgbouncer")}),
    )
    bounds = compute(facts, lambda d: [SERVER])
    assert [(p.database, p.user, p.bound) for p in bounds.pools] == [("app", "svc", 25)]


def test_pool_size_zero_with_no_other_limit_is_unbounded() -> None:
    facts = PoolerFacts((database("a", pool_size=0),), frozenset({("a", "x")}))
    assert math.isinf(by_server(facts))
    capped = PoolerFacts((database("a", pool_size=0),), frozenset({("a", "x")}), 7)
    assert by_server(capped) == 7


def test_facts_from_show_rows_as_pgbouncer_1_18_answers() -> None:
    facts = facts_from_rows(
        [
            {
                "name": "d",
                "host": "/tmp",
                "port": 5433,
                "database": "d",
                "force_user": None,
                "pool_size": 2,
                "reserve_pool": 1,
                "max_connections": 0,
                "current_connections": 1,
            },
        ],
        [{"database": "d", "user": "u"}],
        [{"name": "u", "pool_mode": None}],
        [
            {"key": "max_user_connections", "value": "0"},
            {"key": "reserve_pool_timeout", "value": "0"},
        ],
    )
    assert compute(facts, lambda d: [SERVER]).servers[SERVER] == 2


@pytest.mark.parametrize(
    ("host", "port", "local_to", "expected"),
    [
        ("DB1.Example.COM.", "5433", None, ["db1.example.com:5433"]),
        ("db1", "", None, ["db1:5432"]),
        ("/var/run/postgresql", "5432", "10.0.0.5", ["10.0.0.5:5432"]),
        ("127.0.0.1", 5432, "pooler.internal", ["pooler.internal:5432"]),
        ("localhost", 5432, "127.0.0.1", ["localhost:5432"]),
        ("", None, None, ["localhost:5432"]),
        ("0:0::1", "6000", None, ["localhost:6000"]),
        ("2001:DB8::0001", "5432", None, ["[2001:db8::1]:5432"]),
        ("a,b", "5432,5433", None, ["a:5432", "b:5433"]),
    ],
)
def test_server_addresses_normalize(host, port, local_to, expected) -> None:
    assert server_addresses(host, port, local_to) == expected


def test_a_dsn_and_a_pooled_database_on_one_machine_agree() -> None:
    assert dsn_server("host=/tmp port=5433 dbname=x") == "localhost:5433"
    assert dsn_server("postgresql://DB1:5432/x") == "db1:5432"
    # The pooler on 10.0.0.7 sees its server on its own socket: the exporter reaches it there.
    assert server_addresses("/tmp", "5432", "10.0.0.7") == [dsn_server("host=10.0.0.7")]


def test_the_join_in_the_config_is_checked_by_kind_and_used() -> None:
    target = {"name": "pool", "kind": "pgbouncer", "dsn": "host=10.0.0.7 port=6432"}
    with pytest.raises(ConfigError) as info:
        parse_config({"targets": [{**target, "server": "main"}]}, "conf.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("conf.yaml: targets[0]: server names a PostgreSQL target's")
    with pytest.raises(ConfigError) as info:
        parse_config({"targets": [{"name": "db", "dsn": "host=db1", "upstreams": {"a": "x"}}]}, "c")
    assert "upstreams maps a pgbouncer target's databases" in info.value.problems[0]
    config = parse_config(
        {
            "targets": [
                {**target, "upstreams": {"app": "main", "*": "other"}},
                {"name": "db", "dsn": "host=db1", "server": "main"},
                {"name": "db2", "dsn": "host=DB2"},
            ]
        },
        "conf.yaml",
    )
    pool, db, db2 = config.targets
    assert pool.upstream_servers("app", "/tmp", "5432") == ["main"]
    assert pool.upstream_servers("reports", "/tmp", "5432") == ["other"]
    assert (db.server_label(), db2.server_label()) == ("main", "db2:5432")
