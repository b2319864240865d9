"""`diagnose --config.file`: the PgBouncer targets of the config pointing at the diagnosed
server, read once each (SHOW DATABASES, POOLS, USERS, CONFIG on the admin console) and set
against its slots (kinds/poolerbound.py), as text for the report.

Each pooler is read on a thread of its own and waited for at most its connect timeout plus a
few seconds: a stalled PgBouncer answers nothing (it has no statement_timeout), and the report
then names it instead of waiting."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from exporter.config.model import Target
from exporter.db.failures import classify
from exporter.escaping import terminal
from exporter.kinds.poolerbound import (
    PoolerBounds,
    ServerView,
    compute,
    facts_from_rows,
    ordinary_slots,
    server_view,
)

COMMANDS = ("SHOW DATABASES", "SHOW POOLS", "SHOW USERS", "SHOW CONFIG")
READ_GRACE = 5.0


def _read(target: Target) -> PoolerBounds:
    with psycopg.connect(
        target.conninfo,
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,
        connect_timeout=max(1, round(target.connect_timeout)),
        application_name="pg-connections-exporter-diagnose",
    ) as conn:
        rows: list[list[dict[str, Any]]] = []
        for command in COMMANDS:
            cur = conn.execute(command)
            names = [c.name for c in cur.description or ()]
            rows.append([dict(zip(names, r, strict=True)) for r in cur.fetchall()])
    facts = facts_from_rows(*rows)
    return compute(facts, lambda d: target.upstream_servers(d.name, d.host, d.port))


def read_poolers(targets: Sequence[Target]) -> tuple[dict[str, PoolerBounds], dict[str, str]]:
    """Each pooler's figures, and why any could not be read (never a password)."""
    read: dict[str, PoolerBounds] = {}
    unread: dict[str, str] = {}

    def one(target: Target) -> None:
        try:
            read[target.name] = _read(target)
        except psycopg.Error as exc:
            unread[target.name] = f"cannot read its console ({classify(exc)})"

    threads = [threading.Thread(target=one, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for target, thread in zip(targets, threads, strict=True):
        thread.join(target.connect_timeout + READ_GRACE)
        if thread.is_alive():
            unread[target.name] = "did not answer"
    return {k: v for k, v in read.items() if k not in unread}, unread


def view_of(server: str, slots: dict[str, Any], poolers: dict[str, PoolerBounds]) -> ServerView:
    return server_view(server, ordinary_slots(slots), int(slots["used"]), poolers)


def _n(value: float) -> str:
    return "no limit" if math.isinf(value) else f"{value:g}"


def render_poolers(view: ServerView, unread: dict[str, str]) -> str:
    """The report's section "Poolers against the server"."""
    out = ["", "== Poolers against the server ==", f"server {terminal(view.server)}"]
    if not view.poolers:
        out.append("no PgBouncer target of the config points at this server")
    else:
        ratio = view.overcommit_ratio
        out.append(
            f"the poolers may open {_n(view.bound)} server connections together, against "
            f"{view.slots_after_direct:g} slots left after {view.direct:g} direct client(s) "
            f"({view.ordinary_slots} ordinary slots)"
            + (f": {ratio:.0%}" if ratio is not None and not math.isinf(ratio) else "")
            + (" - OVERCOMMITTED" if ratio is not None and ratio > 1 else "")
        )
        for p in view.poolers:
            out.append(f"  {terminal(p.pooler)}: may open {_n(p.bound)}, holds {p.current:g}")
        out.append("biggest pools:")
        for pooler, pool in view.biggest_pools():
            out.append(
                f"  {terminal(pooler)} {terminal(pool.database)}/{terminal(pool.user)}: "
                f"{_n(pool.bound)} ({pool.limited_by}"
                + ("" if pool.exists else ", not opened yet")
                + ")"
            )
        if ratio is not None and ratio > 1:
            out.append(
                "do: lower pool_size and reserve_pool of the biggest pools, or cap them with "
                "max_db_connections or max_user_connections (runbook "
                "PgBouncerPoolsOvercommitServer)"
            )
    for name, why in sorted(unread.items()):
        out.append(f"  {terminal(name)}: {why}")
    return "\n".join(out) + "\n"
