"""What a source (a local file tail or the remote function's rows) gives the stream, and the
counts it keeps for the reader's self-metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

# How far behind the writer a reader may fall before it skips to the newest bytes: at tens of
# thousands of lines a second this is tens of seconds of log, read again at a bounded pace.
MAX_BACKLOG_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes of the log in order. `new_file`: they start another file (the previous one's
    unterminated last line is whole); `resync`: they do not follow the previous bytes (read
    from the first newline on)."""

    data: bytes
    new_file: bool = False
    resync: bool = False


@dataclass
class SourceCounts:
    bytes_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # bytes by reason: behind, start
    rotations: dict[str, int] = field(default_factory=dict)  # next_file, truncated
    errors: dict[str, int] = field(default_factory=dict)  # missing, permission, error
    up: bool = False  # the log could be read at the last attempt

    def skip(self, reason: str, size: int) -> None:
        if size > 0:
            self.skipped[reason] = self.skipped.get(reason, 0) + size

    def rotated(self, how: str) -> None:
        self.rotations[how] = self.rotations.get(how, 0) + 1

    def failed(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1
