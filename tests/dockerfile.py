"""Reading the Dockerfile and its build context, for the tests that cannot run Docker."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tests.helpers import REPO


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: list[list[Instruction]]

    @property
    def final(self) -> list[Instruction]:
        return self.stages[-1]

    def final_args(self, keyword: str) -> list[str]:
        return [ins.args for ins in self.final if ins.keyword == keyword]

    def final_base(self) -> str:
        """The final stage's base image, with ${ARG} replaced by its default."""
        base = self.final[0].args.split()[0]
        for name, value in self.global_args.items():
            base = base.replace("${" + name + "}", value)
        return base

    def context_sources(self) -> list[str]:
        """Every COPY source taken from the build context (not --from another stage)."""
        sources = []
        for stage in self.stages:
            for ins in stage:
                if ins.keyword == "COPY" and "--from=" not in ins.args:
                    sources += ins.args.split()[:-1]
        return sources


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        keyword, _, args = (logical + stripped).partition(" ")
        logical = ""
        ins = Instruction(keyword.upper(), args.strip())
        if ins.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
        elif ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            global_args[name] = default
    return Dockerfile(global_args, stages)


def load_dockerfile() -> Dockerfile:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def copy_build_context(dest: Path) -> Path:
    """What the build stage's /src holds: only the files the Dockerfile copies."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in load_dockerfile().context_sources():
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, dest / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / source)
    return dest
