"""PostgreSQL: statement_timeout on the server bounds each query, a watchdog the whole scrape;
a scrape's queries share one read-only transaction; statements may run prepared."""

from __future__ import annotations

from exporter.kinds.base import Liveness, RunPolicy, TargetKind, WatchdogScope


class PostgresKind(TargetKind):
    name = "postgres"
    title = "PostgreSQL"
    query_files = ("connections.yaml", "sessions.yaml")
    policy = RunPolicy(
        client_side_binding=False,
        prepares_statements=True,
        session_timeouts=True,
        liveness=Liveness.SOCKET,
        liveness_statement="",
        # Every statement_timeout ends before the deadline: a server still busy past it is
        # not answering, and its connection is cut so that the next scrape gets a new one.
        watchdog=WatchdogScope.SCRAPE,
        one_transaction=True,
        tolerates_missing_columns=False,
        offers_sessions=True,
    )

    def format_version(self, version: int) -> str:
        if version >= 100000:
            return f"{version // 10000}.{version % 10000}"
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"

    def version_gate(self, min_version: int) -> str:
        return f"PostgreSQL {min_version // 10000}+"


POSTGRES = PostgresKind()
