"""Target kinds: the config's `kind` string to the object that owns what differs by kind.

Adding a kind: a module here with a `TargetKind` subclass, its built-in queries in
exporter/queries/, a line in KINDS, and its name in config.KindName.
"""

from __future__ import annotations

from exporter.kinds.base import TargetKind
from exporter.kinds.pgbouncer import PGBOUNCER
from exporter.kinds.postgres import POSTGRES

# By the config's `kind`; in the order their built-in queries load.
KINDS: dict[str, TargetKind] = {kind.name: kind for kind in (POSTGRES, PGBOUNCER)}


def kind_of(name: str) -> TargetKind:
    """The kind the config's `kind` (validated against config.KindName) names."""
    return KINDS[name]


__all__ = ["KINDS", "PGBOUNCER", "POSTGRES", "TargetKind", "kind_of"]
