"""Following a JSON Lines file that another process appends to, rewrites or replaces.

Only whole lines (ending in a newline) are consumed, so a half-written last line is left for the
next call, never an error. A file replaced (another inode: a resume's rewind writes a new file
and renames it over the old) or rewritten in place (shorter, or different bytes where the last
consumed line ended) is reported as rewritten and read again from its start, so its rows are
never taken twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slipstream.buffer.browser_json import revive_floats
from slipstream.inspector.validate import MAX_RECORD_BYTES

# A line longer than this is skipped (and counted) without being held in memory whole: no row
# the inspector reads is that large, and a writer that never ends its line must not exhaust it.
MAX_LINE_BYTES = MAX_RECORD_BYTES
_TAIL = 64                     # bytes before the offset remembered to notice an in-place rewrite


class JsonlFollower:
    """The complete lines appended to one file since the last call."""

    def __init__(self, locate: Callable[[], Path | None]) -> None:
        self._locate = locate                # the file's checked path, or None (store.safe_path)
        self._offset = 0
        self._identity: tuple[int, int] | None = None
        self._tail = b""
        self._in_long_line = False

    def new_lines(self) -> tuple[list[tuple[int, bytes]], int, bool]:
        """(each new complete non-blank line, without its newline, with its byte offset; lines
        skipped as longer than MAX_LINE_BYTES; whether the file was rewritten or removed since
        the last call: then the caller drops what it took from the file before, and the lines
        start from its start)."""
        path = self._locate()
        try:
            handle = path.open("rb") if path is not None else None
        except OSError:
            handle = None
        if handle is None:                   # gone (or never there): the next one starts afresh
            rewritten = self._offset > 0
            self._start_over(None)
            return [], 0, rewritten
        with handle:
            try:
                return self._read(handle)
            except OSError:                  # vanished mid-read: try again at the next call
                return [], 0, False

    def _start_over(self, identity: tuple[int, int] | None) -> None:
        self._offset, self._tail, self._in_long_line = 0, b"", False
        self._identity = identity

    def _read(self, handle) -> tuple[list[tuple[int, bytes]], int, bool]:
        stat = os.fstat(handle.fileno())
        identity = (stat.st_dev, stat.st_ino)
        rewritten = self._offset > 0 and (
            identity != self._identity or stat.st_size < self._offset
            or not self._tail_matches(handle))
        if rewritten or identity != self._identity:
            self._start_over(identity)
        handle.seek(self._offset)
        lines, too_long = [], 0
        while True:
            line = handle.readline(MAX_LINE_BYTES + 1)
            if not line.endswith(b"\n"):
                if len(line) <= MAX_LINE_BYTES:
                    break                    # end of file, or a half-written line: it waits
                too_long += not self._in_long_line
                self._in_long_line = True    # skip it chunk by chunk up to its newline
                self._offset += len(line)
                continue
            start, self._offset = self._offset, self._offset + len(line)
            if self._in_long_line:           # the end of a skipped line
                self._in_long_line = False
            elif line.strip():
                lines.append((start, line[:-1]))
        handle.seek(max(self._offset - _TAIL, 0))
        self._tail = handle.read(self._offset - max(self._offset - _TAIL, 0))
        return lines, too_long, rewritten

    def _tail_matches(self, handle) -> bool:
        handle.seek(self._offset - len(self._tail))
        return handle.read(len(self._tail)) == self._tail


class _Constant(Exception):
    pass


def _refuse(name: str) -> Any:
    raise _Constant(name)


def parse_line(line: bytes) -> tuple[dict[str, Any] | None, bool]:
    """(the line as a JSON object, or None when it is not one; whether the line is also valid
    for the browser's JSON.parse as it is). Python's json accepts NaN and Infinity literals,
    which JSON.parse rejects: such a line is parsed, and reported as needing re-encoding."""
    hook = revive_floats if b'"$float"' in line else None
    try:
        text = line.decode("utf-8")
        try:
            value, strict = json.loads(text, object_hook=hook, parse_constant=_refuse), True
        except _Constant:
            value, strict = json.loads(text, object_hook=hook), False
        return (value if isinstance(value, dict) else None), strict
    except (ValueError, RecursionError):    # not JSON, not UTF-8, a bad $float, nested absurdly
        return None, True

