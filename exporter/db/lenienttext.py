"""Text from the server that is not valid in its encoding, read anyway.

A role or database created in a SQL_ASCII database, and any query text sent to one, may hold
bytes that are not UTF-8; pg_authid is shared and pg_stat_activity shows every database's
sessions, so a UTF-8 connection reads them too, and psycopg's own loader then fails the whole
query (or, on a SQL_ASCII connection, returns bytes). These loaders decode such bytes as the
visible text `\\xNN`, so that the rest of the row, and every count, stays right.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.adapt import AdaptersMap, Loader

_TEXT_TYPES = ("text", "varchar", "name", "bpchar", '"char"')


def decode(data: Any, encoding: str) -> str:
    """`data` (bytes from the server) as text; bytes invalid in `encoding` as `\\xNN`."""
    return bytes(data).decode(encoding, "backslashreplace")


class LenientTextLoader(Loader):
    """psycopg's text loader, except that it never fails and always returns str."""

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        conn = self.connection
        encoding = conn.info.encoding if conn is not None else "utf-8"
        # SQL_ASCII: the server checks nothing; what clients send is UTF-8 more often than not.
        self._encoding = "utf-8" if encoding == "ascii" else encoding

    def load(self, data: Any) -> str:
        return decode(data, self._encoding)


class LenientTextBinaryLoader(LenientTextLoader):
    format = psycopg.pq.Format.BINARY


class _Context:
    """An adaptation context for psycopg's `connect(context=...)`: its adapters are copied
    into each connection's."""

    connection = None

    def __init__(self) -> None:
        self.adapters = AdaptersMap(psycopg.adapters)
        self.adapters.register_loader(0, LenientTextLoader)  # unknown types come as text
        for name in _TEXT_TYPES:
            self.adapters.register_loader(name, LenientTextLoader)
            self.adapters.register_loader(name, LenientTextBinaryLoader)


# Pass as `psycopg.connect(..., context=CONTEXT)`: the connection reads text leniently.
CONTEXT = _Context()
