"""Safe descriptions of connection strings: never a password, in logs, pages or errors."""

from __future__ import annotations

import psycopg.conninfo

_SHOWN = ("host", "hostaddr", "port", "dbname", "user")


def describe_conninfo(conninfo: str) -> str:
    """`user@host:port/dbname` from a libpq DSN or URI, leaving out every secret."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "(unparsable connection string)"
    shown = {k: str(params[k]) for k in _SHOWN if params.get(k)}
    host = shown.get("host") or shown.get("hostaddr") or "(default host)"
    where = f"{host}:{shown['port']}" if "port" in shown else host
    user = f"{shown['user']}@" if "user" in shown else ""
    db = f"/{shown['dbname']}" if "dbname" in shown else ""
    return f"{user}{where}{db}"


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced, for messages that quote server or driver errors."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
