"""Why a connection attempt failed, as a small fixed set of reasons for a metric label.

libpq reports connection failures as text (psycopg gives no SQLSTATE for them), so the reason is
read from the server's FATAL message, which is English unless lc_messages says otherwise; what
cannot be recognised is `other`, and the full message is always logged.
"""

from __future__ import annotations

import re

import psycopg

REASONS = (
    "too_many_clients",
    "reserved_slots_only",
    "database_limit",
    "role_limit",
    "authentication",
    "starting_up",
    "shutting_down",
    "timeout",
    "unreachable",
    "other",
)

_BY_MESSAGE = (
    (re.compile(r"too many clients already"), "too_many_clients"),
    (re.compile(r"remaining connection slots are reserved"), "reserved_slots_only"),
    (re.compile(r"too many connections for database"), "database_limit"),
    (re.compile(r"too many connections for role"), "role_limit"),
    (
        re.compile(
            r"password authentication failed|no pg_hba\.conf entry|authentication failed"
            r"|role \".*\" does not exist|fe_sendauth"
        ),
        "authentication",
    ),
    (
        re.compile(r"the database system is (starting up|in recovery mode|not yet accepting)"),
        "starting_up",
    ),
    (
        re.compile(
            r"the database system is shutting down|terminating connection due to "
            r"administrator command"
        ),
        "shutting_down",
    ),
    (re.compile(r"timeout expired|timed out"), "timeout"),
    (
        re.compile(
            r"Connection refused|No such file or directory|could not translate host name"
            r"|Network is unreachable|No route to host|server closed the connection"
        ),
        "unreachable",
    ),
)


def classify(exc: psycopg.Error) -> str:
    """One of REASONS for a failed connection attempt."""
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return "timeout"
    message = str(exc)
    for pattern, reason in _BY_MESSAGE:
        if pattern.search(message):
            return reason
    return "other"
