"""Target kinds: the config's `kind` string to the object that says what differs by kind.

Adding a kind: a module here with a `TargetKind` subclass, its built-in queries in
exporter/queries/, and a line in KINDS (which is also what the config accepts, `KindName`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from exporter.kinds.base import Liveness, RunPolicy, TargetKind, WatchdogScope
from exporter.kinds.pgbouncer import PGBOUNCER
from exporter.kinds.postgres import POSTGRES

# By the config's `kind`; in the order their built-in queries load.
KINDS: dict[str, TargetKind] = {kind.name: kind for kind in (POSTGRES, PGBOUNCER)}

if TYPE_CHECKING:
    # A Literal made at run time is opaque to a type checker: to it, a kind's name is a str.
    KindName = str
else:
    # What the config's `kind` and a query's `target_kind` accept: exactly the kinds above
    # (pydantic validates the Literal, and names the choices in its error).
    KindName = Literal[tuple(KINDS)]


def kind_of(name: str) -> TargetKind:
    """The kind the config's `kind` (validated against KindName) names."""
    return KINDS[name]


__all__ = [
    "KINDS",
    "PGBOUNCER",
    "POSTGRES",
    "KindName",
    "Liveness",
    "RunPolicy",
    "TargetKind",
    "WatchdogScope",
    "kind_of",
]
