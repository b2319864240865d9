"""Reading the Dockerfile, its build context and the lock its build installs."""

from __future__ import annotations

import re
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class Locked:
    """One pin of requirements.txt."""

    name: str  # normalized (PEP 503)
    version: str
    marker: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)  # what requires it, as uv annotates


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_requirements(text: str) -> dict[str, Locked]:
    """requirements.txt as `uv pip compile --generate-hashes` writes it: each pin on a line of
    its own, then its --hash lines and its `# via` annotation."""
    pins: dict[str, Locked] = {}
    current: Locked | None = None
    for line in text.splitlines():
        stripped = line.strip().rstrip("\\").strip()
        if not stripped:
            continue
        if not line.startswith((" ", "#")):
            requirement, _, marker = stripped.partition(";")
            name, sep, version = requirement.partition("==")
            if not sep:
                raise ValueError(f"requirements.txt: {stripped!r} is not pinned with ==")
            current = Locked(normalize(name.strip()), version.strip(), marker.strip())
            pins[current.name] = current
        elif current is not None and stripped.startswith("--hash="):
            current.hashes.append(stripped.removeprefix("--hash="))
        elif current is not None and stripped.startswith("# via"):
            current.via += [v for v in [stripped.removeprefix("# via").strip()] if v]
        elif current is not None and stripped.startswith("#   "):
            current.via.append(stripped.removeprefix("#").strip())
    return pins


PROJECT_VIA = "pg-connections-exporter (pyproject.toml)"


def lock_problems(dependencies: list[str], lock_text: str) -> list[str]:
    """Where requirements.txt no longer matches pyproject.toml's `dependencies`: a dependency
    not pinned, pinned outside its specifier, its extras' packages not pinned, a pin without
    hashes, or a pin for a dependency pyproject.toml dropped. Empty when they match."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    pins = locked_requirements(lock_text)
    problems = []
    wanted = {}
    for dependency in dependencies:
        req = Requirement(dependency)
        wanted[normalize(req.name)] = req
        pin = pins.get(normalize(req.name))
        if pin is None:
            problems.append(f"{req.name} is not pinned")
            continue
        if not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req.name}=={pin.version} is outside {req.specifier}")
        for extra in sorted(req.extras):
            try:
                extra_requires = [Requirement(r) for r in requires(req.name) or []]
            except PackageNotFoundError:
                continue
            for sub in extra_requires:
                in_extra = sub.marker is not None and f'extra == "{extra}"' in str(sub.marker)
                if in_extra and normalize(sub.name) not in pins:
                    problems.append(f"{req.name}[{extra}] needs {sub.name}, not pinned")
    for name, pin in pins.items():
        if not pin.hashes:
            problems.append(f"{name}=={pin.version} has no --hash")
        if PROJECT_VIA in pin.via and name not in wanted:
            problems.append(f"{name} is pinned for pyproject.toml, which no longer requires it")
    return problems
