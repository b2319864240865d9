"""Per-target connection options: prepared statements can be switched off, TCP liveness is on."""

from __future__ import annotations

from exporter.config import parse_config
from exporter.connection import TargetConnection
from exporter.localpg import LocalCluster

BUILTIN_SQL = "SELECT 1 AS one"


def _connection(dsn: str, **target: object) -> TargetConnection:
    config = parse_config({"targets": [{"name": "t", "dsn": dsn, **target}]}, "test")
    return TargetConnection(config.targets[0], 5.0, 1.0)


def test_prepared_statements_can_be_switched_off(pg: LocalCluster) -> None:
    for enabled in (True, False):
        tc = _connection(pg.dsn(), prepared_statements=enabled)
        tc.open()
        try:
            with tc.connection(timeout=10) as conn:
                assert tc.prepared(conn, BUILTIN_SQL) is enabled
                # Several statements never run prepared (the extended protocol refuses them).
                assert tc.prepared(conn, "SELECT 1; SELECT 2") is False
        finally:
            tc.close()


def test_tcp_liveness_defaults_unless_the_dsn_sets_them() -> None:
    kwargs = _connection("host=127.0.0.1 dbname=x").pool.kwargs
    assert kwargs["keepalives"] == 1 and kwargs["tcp_user_timeout"] == 15000
    own = _connection("host=127.0.0.1 dbname=x tcp_user_timeout=3000").pool.kwargs
    assert "tcp_user_timeout" not in own  # the DSN's value is the one libpq uses
    assert own["keepalives_idle"] == 10
