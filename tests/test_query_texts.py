"""What the exporter keeps of each query's text: one copy however many targets send it."""

from __future__ import annotations

import time

import psycopg

from exporter.config.model import parse_config
from exporter.db.connection import TargetConnection
from harness.localpg import LocalCluster


async def test_targets_sending_the_same_query_share_its_text(pg: LocalCluster) -> None:
    """The built-in queries are ~14 KB of text with their parameters written in: at 1,000
    targets a copy each would be 14 MB. Each target writes the text for its own connection,
    and keeps the one copy every target shares."""
    config = parse_config(
        {"targets": [{"name": "a", "dsn": pg.dsn()}, {"name": "b", "dsn": pg.dsn()}]}, "t"
    )
    query = next(q for q in config.queries if q.name == "connections")
    assert query.params, "the connections query has parameters to write in"
    texts = []
    for target in config.targets:
        connection = TargetConnection(target, statement_timeout=5.0, lock_timeout=1.0)
        async with await psycopg.AsyncConnection.connect(pg.dsn(), autocommit=True) as conn:
            limit = time.monotonic() + 10
            rows, _ = await connection.query(conn, query.sql, query.params, limit)
            assert rows, "the query ran"
            texts.append(connection._text(conn, query.sql, query.params))
    assert texts[0] == texts[1]
    assert texts[0] is texts[1]
