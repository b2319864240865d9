"""Bytes to whole lines, bounded: a line longer than the cap is skipped (and counted), never
held; a piece that starts mid-line (after a skip) is read from its first newline on."""

from __future__ import annotations

# A longer line is skipped: what the server logs about a connection attempt is far shorter,
# and a statement log line of several MiB would otherwise be held whole.
MAX_LINE_BYTES = 1 << 20


class LineSplitter:
    """Feed bytes in any pieces, get the complete lines (without their newline) out."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._partial: list[bytes] = []
        self._partial_len = 0
        self._skipping = False  # inside a line over the cap, or a line cut by a resync
        self.long_lines = 0
        self.skipped_bytes = 0

    def resync(self) -> None:
        """The next bytes do not follow the previous ones (a skip, a new file read from its
        middle): drop the partial line and read from the next newline."""
        self._drop_partial()
        self._skipping = True

    def end_of_stream(self) -> bytes | None:
        """The stream ended (a rotated file read to its end): its unterminated last line, if
        it is whole as far as anyone will ever know."""
        line = None if self._skipping or not self._partial else b"".join(self._partial)
        self._partial = []
        self._partial_len = 0
        self._skipping = False
        return line

    def feed(self, data: bytes) -> list[bytes]:
        lines = data.split(b"\n")
        tail = lines.pop()
        if lines:
            first = lines[0]
            if self._skipping:
                self.skipped_bytes += len(first) + 1
                self._skipping = False
                lines = lines[1:]
            elif self._partial:
                if self._partial_len + len(first) > self.max_line:
                    self._count_long(len(first) + 1)
                    lines = lines[1:]
                else:
                    self._partial.append(first)
                    lines[0] = b"".join(self._partial)
                self._partial = []
                self._partial_len = 0
            if self.max_line < len(data):
                kept = []
                for line in lines:
                    if len(line) > self.max_line:
                        self._count_long(len(line) + 1)
                    else:
                        kept.append(line)
                lines = kept
        if tail:
            self._add_partial(tail)
        return lines

    def _add_partial(self, tail: bytes) -> None:
        if self._skipping:
            self.skipped_bytes += len(tail)
            return
        if self._partial_len + len(tail) > self.max_line:
            self._count_long(len(tail))
            self._skipping = True
            return
        self._partial.append(tail)
        self._partial_len += len(tail)

    def _count_long(self, size: int) -> None:
        self.long_lines += 1
        self.skipped_bytes += size + self._partial_len
        self._drop_partial()

    def _drop_partial(self) -> None:
        self._partial = []
        self._partial_len = 0
