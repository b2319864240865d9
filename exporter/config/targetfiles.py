"""Target files: YAML lists of targets under the config's `target_files` globs, followed while
the exporter runs.

A change to the files (one added, removed or rewritten) reloads the configuration through the
same path as SIGHUP, so a target whose connection settings are unchanged keeps its connection,
and a file with problems is refused, naming the file, while the running targets stay. A file is
taken only once it has looked the same twice in a row, never half-written. Files come from
discovery tooling: each is bounded in size, must be UTF-8 YAML without aliases (which could
expand to a document far larger than the file), and is validated like `targets:` entries.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from exporter.config.errors import ConfigError
from exporter.config.safeyaml import decode_utf8, read_bytes

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20
MAX_FILES = 1000

# (path, device, inode, mtime in ns, size) of every file the globs match, sorted.
Fingerprint = tuple[tuple[str, int, int, int, int], ...]


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases: a file of a few kilobytes could otherwise expand to
    gigabytes when walked (the "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in the stubs
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a target file", event.start_mark
            )
        return super().compose_node(parent, index)


def matching_files(patterns: tuple[str, ...]) -> list[str]:
    """Every regular file the globs match, sorted, each once."""
    found: set[str] = set()
    for pattern in patterns:
        found.update(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    return sorted(found)


def fingerprint(patterns: tuple[str, ...]) -> Fingerprint:
    out = []
    for path in matching_files(patterns)[: MAX_FILES + 1]:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append((path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def read_target_files(
    patterns: tuple[str, ...], problems: list[str]
) -> Iterator[tuple[str, int, Any]]:
    """(file, index, entry) for every target entry of every matching file; what is wrong with a
    file goes to `problems`, naming it."""
    files = matching_files(patterns)
    if len(files) > MAX_FILES:
        problems.append(
            f"target_files: {len(files)} files match; at most {MAX_FILES} are read "
            "(narrow the globs)"
        )
        return
    for path in files:
        entries = _read(path, problems)
        for i, entry in enumerate(entries):
            yield path, i, entry


def _read(path: str, problems: list[str]) -> list[Any]:
    # Bounded, regular files only (a FIFO would block the read), strictly UTF-8.
    try:
        text = decode_utf8(read_bytes(path, path, MAX_FILE_BYTES), path)
    except ConfigError as exc:
        problems += exc.problems
        return []
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(parse)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.append(f"{path}: {where}: invalid YAML: {problem}")
        return []
    except RecursionError:
        problems.append(f"{path}: nested too deeply; not a target file")
        return []
    if data is None:
        return []
    if not isinstance(data, list):
        problems.append(f"{path}: (top level): expected a list of targets")
        return []
    return data


class TargetFilesWatcher:
    """Looks at the target files every `interval()` seconds and calls `changed()` (a reload,
    on the loop's executor) once a change has settled; the globs come from the config in force
    (`patterns()`). A task on the exporter's event loop (`watch`), ended with it."""

    def __init__(
        self,
        patterns: Callable[[], tuple[str, ...]],
        interval: Callable[[], float],
        changed: Callable[[], object],
    ) -> None:
        self._patterns = patterns
        self._interval = interval
        self._changed = changed
        self._taken = fingerprint(patterns())

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        previous = self._taken
        while True:
            await asyncio.sleep(self._interval())
            try:
                # A glob and a stat per file: quick enough for the loop.
                seen = fingerprint(self._patterns())
                if seen != self._taken and seen == previous:
                    self._taken = seen
                    log.info("target files changed: reloading", extra={"files": len(seen)})
                    await loop.run_in_executor(None, self._changed)
                previous = seen
            except Exception:
                log.exception("target files: look failed")
