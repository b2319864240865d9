"""The server's log directory read as a stream from where the exporter runs (the database
host, or a sidecar sharing the log volume): plain file I/O, no thread of its own, each call
bounded by a byte budget, so the core can run it on its loop's executor.

It follows the logging collector's rotation (a new file by `log_filename`, by size or age),
a rename (the open file is read to its end before the next one is taken), and copy-truncate
(the file shrinks below the position read: read again from its start). It starts at the end
of the newest file: what the server logged before the exporter started was counted by the
exporter that ran then (or by none), and counting it again would show a burst of refusals
that did not happen now; the bytes so passed over are counted as skipped (`start`), so a
burst during a restart is not dropped silently. When it falls more than `max_backlog` bytes
behind, it jumps to the newest bytes and counts what it skipped (`behind`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from exporter.logs.source import MAX_BACKLOG_BYTES, Piece, SourceCounts

log = logging.getLogger(__name__)

READ_CHUNK = 256 << 10


@dataclass(frozen=True)
class _Candidate:
    mtime_ns: int
    name: str
    ident: tuple[int, int]
    size: int


class FileTail:
    """`read_available(budget)` gives the pieces written since the last call, at most
    `budget` bytes; never raises (a missing or unreadable log is `counts.up` false, a count
    of the reason, and one log line when that starts). One caller at a time (a task awaiting
    it in an executor); its memory is one open file and the listing of the directory."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        pattern: str = "*",
        *,
        start_at_end: bool = True,
        max_backlog: int = MAX_BACKLOG_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.pattern = pattern
        self.start_at_end = start_at_end
        self.max_backlog = max_backlog
        self.counts = SourceCounts()
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._name = ""
        self._offset = 0
        self._new_file = False
        self._resync = False
        self._started = False
        self._problem: str | None = None

    @property
    def position(self) -> tuple[str, int]:
        """The file being read and the offset read to."""
        return self._name, self._offset

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read_available(self, budget: int) -> list[Piece]:
        pieces: list[Piece] = []
        try:
            if self._fd is None and not self._open_current():
                return pieces
            self._read(pieces, budget)
            self._well()
        except OSError as exc:
            self._fail(exc)
        return pieces

    def _read(self, pieces: list[Piece], budget: int) -> None:
        assert self._fd is not None
        rechecked = False
        while budget > 0:
            data = os.pread(self._fd, min(budget, READ_CHUNK), self._offset)
            if data:
                self._emit(pieces, data)
                budget -= len(data)
                rechecked = False
                continue
            if os.fstat(self._fd).st_size < self._offset:
                self.counts.rotated("truncated")  # copy-truncate, or a name reused
                self._offset = 0
                self._new_file = True
                continue
            following = self._following()
            if following is None:
                return
            if not rechecked:  # bytes written before the next file appeared are read first
                rechecked = True
                continue
            self._switch(following, 0)
            self.counts.rotated("next_file")
            rechecked = False
        self._skip_if_behind()

    def _emit(self, pieces: list[Piece], data: bytes) -> None:
        pieces.append(Piece(data, new_file=self._new_file, resync=self._resync))
        self._new_file = self._resync = False
        self._offset += len(data)
        self.counts.bytes_read += len(data)

    def _candidates(self) -> list[_Candidate]:
        out: list[_Candidate] = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not fnmatch.fnmatchcase(entry.name, self.pattern):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append(
                        _Candidate(st.st_mtime_ns, entry.name, (st.st_dev, st.st_ino), st.st_size)
                    )
        out.sort(key=lambda c: (c.mtime_ns, c.name))
        return out

    def _following(self) -> _Candidate | None:
        """The next file the server writes to after ours, if there is one yet."""
        assert self._fd is not None
        ours = os.fstat(self._fd)
        key = (ours.st_mtime_ns, self._name)
        for candidate in self._candidates():
            if candidate.ident != self._ident and (candidate.mtime_ns, candidate.name) >= key:
                return candidate
        return None

    def _open_current(self) -> bool:
        candidates = self._candidates()
        if not candidates:
            self._trouble("missing", f"no file matching {self.pattern!r}")
            return False
        newest = candidates[-1]
        offset = self._offset if newest.ident == self._ident else 0  # readable again
        if not self._started:
            self._started = True
            if self.start_at_end:
                offset = newest.size
                self.counts.skip("start", newest.size)
        self._switch(newest, offset)
        return True

    def _switch(self, candidate: _Candidate, offset: int) -> None:
        fd = os.open(self.directory / candidate.name, os.O_RDONLY | os.O_CLOEXEC)
        self.close()
        self._fd = fd
        st = os.fstat(fd)
        another = (st.st_dev, st.st_ino) != self._ident
        self._new_file = self._new_file or another
        self._ident = (st.st_dev, st.st_ino)
        self._name = candidate.name
        self._offset = min(offset, st.st_size)
        # Another file entered mid-line (at its end, on start) is read from its next line.
        self._resync = another and self._offset > 0 and os.pread(fd, 1, self._offset - 1) != b"\n"

    def _skip_if_behind(self) -> None:
        assert self._fd is not None
        ours = os.fstat(self._fd)
        later = [
            c
            for c in self._candidates()
            if c.ident != self._ident and (c.mtime_ns, c.name) >= (ours.st_mtime_ns, self._name)
        ]
        backlog = max(ours.st_size - self._offset, 0) + sum(c.size for c in later)
        if backlog <= self.max_backlog:
            return
        self.counts.skip("behind", backlog)
        if later:
            self._switch(later[-1], later[-1].size)
        else:
            self._offset = ours.st_size
            self._resync = os.pread(self._fd, 1, ours.st_size - 1) != b"\n"

    def _well(self) -> None:
        self.counts.up = True
        if self._problem is not None:
            log.info("log readable again", extra={"directory": str(self.directory)})
            self._problem = None

    def _fail(self, exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError):
            reason = "missing"
        elif isinstance(exc, PermissionError):
            reason = "permission"
        else:
            reason = "error"
        self.close()
        self._trouble(reason, exc.strerror or str(exc))

    def _trouble(self, reason: str, detail: str) -> None:
        self.counts.up = False
        self.counts.failed(reason)
        if self._problem != reason:
            self._problem = reason
            log.warning(
                "cannot read the log",
                extra={"directory": str(self.directory), "reason": reason, "error": detail},
            )
