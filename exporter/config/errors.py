"""The one error a bad operator file gives: every problem found, each naming where it is.

A module of its own so that the readers of operator files (safeyaml, targetfiles) and the
configuration model that uses them all raise it without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(Exception):
    """Every problem found in one configuration, each naming where it is."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
