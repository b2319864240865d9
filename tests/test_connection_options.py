"""Per-target connection options, checked on the real session: prepared statements can be
switched off, and TCP liveness (keepalives, user timeout) is on unless the DSN says otherwise."""

from __future__ import annotations

import socket
import time

from exporter.config.model import parse_config
from exporter.scrape.target import TargetScraper
from harness.localpg import LocalCluster

TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)


async def _scraper(dsn: str, **target: object) -> TargetScraper:
    config = parse_config({"targets": [{"name": "t", "dsn": dsn, **target}]}, "test")
    scraper = TargetScraper(config.targets[0], config.queries, config.settings)
    await scraper.open()
    return scraper


async def test_prepared_statements_can_be_switched_off(pg: LocalCluster) -> None:
    for enabled in (True, False):
        scraper = await _scraper(pg.dsn(), prepared_statements=enabled)
        try:
            result = await scraper.scrape(time.monotonic() + 10)
            assert result.up and all(q.error is None for q in result.queries)
            async with scraper.connection.connection(timeout=10) as conn:
                cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
                row = await cur.fetchone()
            assert row is not None
            assert (row[0] > 0) is enabled, (enabled, row[0])
        finally:
            await scraper.close()


async def _socket_options(pg: LocalCluster, dsn: str) -> tuple[int, int]:
    scraper = await _scraper(dsn)
    try:
        assert (await scraper.scrape(time.monotonic() + 10)).up
        async with scraper.connection.connection(timeout=10) as conn:
            sock = socket.socket(fileno=conn.fileno())
            try:
                return (
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT),
                )
            finally:
                sock.detach()  # the descriptor stays libpq's
    finally:
        await scraper.close()


async def test_tcp_liveness_on_the_held_connection_unless_the_dsn_sets_it(
    pg: LocalCluster,
) -> None:
    assert await _socket_options(pg, pg.dsn(host="127.0.0.1")) == (1, 15000)
    own = pg.dsn(host="127.0.0.1", tcp_user_timeout=3000)
    assert await _socket_options(pg, own) == (1, 3000)
