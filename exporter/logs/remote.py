"""The log read over the target's held connection (an exporter that runs where the log files
are not), through `sql/pgce_read_log.sql`. The core runs `LISTING_SQL`, asks `plan` what to
read, runs `READ_SQL` with it, and hands the bytes to `take`, whose pieces go to the same
`LogStream` as a local file's: the same rotation, start and skip rules as `filetail.FileTail`,
worked out from the listing (names, sizes, modification times) instead of inodes.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from exporter.logs.source import MAX_BACKLOG_BYTES, Piece, SourceCounts

log = logging.getLogger(__name__)

LISTING_SQL = "SELECT name, size, modification FROM pg_catalog.pg_ls_logdir()"
READ_SQL = "SELECT pgce_read_log(%s, %s, %s)"


@dataclass(frozen=True, slots=True)
class LogFile:
    name: str
    size: int
    modified: float


@dataclass(frozen=True, slots=True)
class ReadRequest:
    name: str
    offset: int
    length: int


def log_files(rows: Iterable[Sequence[object]], pattern: str) -> list[LogFile]:
    """LISTING_SQL's rows matching `pattern`, oldest first."""
    files: list[LogFile] = []
    for name, size, modified in rows:
        if not isinstance(name, str) or not fnmatch.fnmatchcase(name, pattern):
            continue
        when = modified.timestamp() if isinstance(modified, datetime) else modified
        if isinstance(size, int) and isinstance(when, (int, float)):
            files.append(LogFile(name, size, float(when)))
    files.sort(key=lambda f: (f.modified, f.name))
    return files


class RemoteTail:
    def __init__(
        self, pattern: str, *, start_at_end: bool = True, max_backlog: int = MAX_BACKLOG_BYTES
    ) -> None:
        self.pattern = pattern
        self.start_at_end = start_at_end
        self.max_backlog = max_backlog
        self.counts = SourceCounts()
        self._current: LogFile | None = None
        self._offset = 0
        self._new_file = False
        self._resync = False
        self._rotation_seen = False

    def plan(self, listing: Iterable[Sequence[object]], budget: int) -> ReadRequest | None:
        """What to read next (None: nothing new); `listing` is LISTING_SQL's rows."""
        files = log_files(listing, self.pattern)
        if not files:
            if self.counts.up or not self.counts.errors:
                log.warning("no log file to read", extra={"pattern": self.pattern})
            self.counts.up = False
            self.counts.failed("missing")
            return None
        self.counts.up = True
        if self._current is None:
            newest = files[-1]
            # From the last byte before the end, read from the first newline on: if that byte
            # ends a line, nothing of the next line is lost.
            offset = max(newest.size - 1, 0) if self.start_at_end else 0
            self.counts.skip("start", offset)
            self._enter(newest, offset, resync=offset > 0)
        assert self._current is not None
        ours = next((f for f in files if f.name == self._current.name), None)
        later = [f for f in files if (f.modified, f.name) > self._key() and f is not ours]
        if ours is not None and ours.size < self._offset:
            self.counts.rotated("truncated")
            self._enter(ours, 0, resync=False)
            self._new_file = True
        elif ours is not None:
            self._current = ours
        backlog = (ours.size - self._offset if ours else 0) + sum(f.size for f in later)
        if backlog > self.max_backlog:
            self.counts.skip("behind", backlog)
            target = later[-1] if later else ours
            assert target is not None
            self._enter(target, max(target.size - 1, 0), resync=True)
            return None
        if ours is not None and ours.size > self._offset:
            self._rotation_seen = False
            return ReadRequest(ours.name, self._offset, min(budget, ours.size - self._offset))
        if not later:
            return None
        if ours is not None and not self._rotation_seen:
            self._rotation_seen = True  # read ours once more: bytes may have come after listing
            return ReadRequest(ours.name, self._offset, budget)
        self.counts.rotated("next_file")
        self._enter(later[0], 0, resync=False)
        return ReadRequest(later[0].name, 0, min(budget, later[0].size))

    def take(self, request: ReadRequest, data: bytes | None) -> list[Piece]:
        """READ_SQL's answer to `request` (None: the file went away meanwhile)."""
        if not data or self._current is None or request.name != self._current.name:
            return []
        if request.offset != self._offset:
            return []
        piece = Piece(data, new_file=self._new_file, resync=self._resync)
        self._new_file = self._resync = False
        self._offset += len(data)
        self.counts.bytes_read += len(data)
        return [piece]

    def _key(self) -> tuple[float, str]:
        assert self._current is not None
        return (self._current.modified, self._current.name)

    def _enter(self, file: LogFile, offset: int, *, resync: bool) -> None:
        self._new_file = self._new_file or self._current is None or file.name != self._current.name
        self._current = file
        self._offset = offset
        self._resync = resync
        self._rotation_seen = False
