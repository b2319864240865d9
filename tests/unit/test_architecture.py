"""docs/architecture.md's module table names exactly the modules exporter/ has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TABLE_ROW = re.compile(r"^\| (.+?) \|", re.M)
MODULE = re.compile(r"`(exporter/[\w/]+\.py)`")


def _modules_in_table() -> list[str]:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    return [m for cell in TABLE_ROW.findall(section) for m in MODULE.findall(cell)]


def _modules_on_disk() -> set[str]:
    """Every module of exporter/ with code: a package's docstring-only __init__.py is not one."""
    out = set()
    for path in (REPO / "exporter").rglob("*.py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        docstring_only = len(body) == 1 and isinstance(body[0], ast.Expr)
        if body and not docstring_only:
            out.add(path.relative_to(REPO).as_posix())
    return out


def test_the_module_table_lists_every_module_once_and_no_other() -> None:
    listed = _modules_in_table()
    assert len(listed) == len(set(listed)), sorted(m for m in listed if listed.count(m) > 1)
    on_disk = _modules_on_disk()
    assert not on_disk - set(listed), f"missing from the table: {sorted(on_disk - set(listed))}"
    assert not set(listed) - on_disk, f"no such module: {sorted(set(listed) - on_disk)}"


def test_the_layers_table_names_every_subpackage() -> None:
    """(That each is a layer of the import contract, lint-imports checks: `exhaustive`.)"""
    packages = {p.parent.name for p in (REPO / "exporter").glob("*/__init__.py")}
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = [row.split(" | ")[0] for row in section.splitlines() if row.startswith("| `")]
    assert {name for row in rows for name in re.findall(r"`(\w+)/`", row)} == packages | {"queries"}
