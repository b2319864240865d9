"""PgBouncer's admin console: only SHOW commands over the simple query protocol, no
statement_timeout, no transactions, and columns that come and go between versions.

A query is bounded by a watchdog that shuts the socket down when its time is up (a cancel
request would not help: a stalled PgBouncer handles it on the same stalled event loop).
"""

from __future__ import annotations

import psycopg.conninfo

from exporter.kinds.base import Liveness, RunPolicy, TargetKind, WatchdogScope

# The admin console's virtual database, where PgBouncer's statistics are.
ADMIN_DATABASE = "pgbouncer"


class PgBouncerKind(TargetKind):
    name = "pgbouncer"
    title = "PgBouncer"
    query_files = ("pgbouncer.yaml",)
    policy = RunPolicy(
        client_side_binding=True,
        prepares_statements=False,
        session_timeouts=False,  # the console refuses SET, and has no statement_timeout
        # The console refuses PostgreSQL's empty query.
        liveness=Liveness.ROUND_TRIP,
        liveness_statement="SHOW VERSION",
        watchdog=WatchdogScope.QUERY,
        one_transaction=False,  # the console has no transactions
        tolerates_missing_columns=True,
        offers_sessions=False,
    )

    def resolve_conninfo(self, conninfo: str, where: str, problems: list[str]) -> str:
        """The admin console is the virtual database `pgbouncer`: named when the DSN names
        none, a problem when it names another."""
        dbname = psycopg.conninfo.conninfo_to_dict(conninfo).get("dbname")
        if dbname is None:
            return psycopg.conninfo.make_conninfo(conninfo, dbname=ADMIN_DATABASE)
        if dbname != ADMIN_DATABASE:
            problems.append(
                f"{where}: a pgbouncer target connects to the admin console: dbname must be "
                f"pgbouncer, not {dbname!r}"
            )
        return conninfo

    def format_version(self, version: int) -> str:
        """psycopg reads PgBouncer's "1.18.0" as 11800."""
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"

    def version_gate(self, min_version: int) -> str:
        return ""  # the reference names no PgBouncer version gate


PGBOUNCER = PgBouncerKind()
