"""Overview row: who holds the slots, by database, user, application and client."""

from __future__ import annotations

from ..panels import Layout, by_label


def holders_rows(L: Layout) -> None:
    """Who holds the slots, by database, user, application and client."""
    L.row("Who holds the slots")
    L.add(by_label("pg_connections_by_database", "datname", "databases"), 12, 8)
    L.add(by_label("pg_connections_by_user", "usename", "users"), 12, 8)
    L.add(by_label("pg_connections_by_application", "application_name", "applications"), 12, 8)
    L.add(by_label("pg_connections_by_client", "client_addr", "client addresses"), 12, 8)
