"""`slipstream inspect DIR --print`: the samples table as plain text, for SSH sessions.

Model text goes to a terminal here, so it is made inert first: control characters (which could
move the cursor, retitle the window or recolour the screen through escape sequences) and bidi
overrides (which reorder what is shown) are written as visible `\\xNN` / `\\uNNNN` escapes.
"""

from __future__ import annotations

import shutil
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from slipstream.inspector.query import Query, page

_COLUMNS = (("step", 5), ("id", 14), ("len", 5), ("reward", 7), ("advantage", 8),
            ("staleness", 5), ("max_gap", 9), ("k3", 9), ("max_iw", 8), ("masked", 6),
            ("finish", 7))
_HEADERS = {"advantage": "adv", "staleness": "stale", "max_gap": "max|gap|", "max_iw": "max_iw"}


def inert(text: str) -> str:
    """`text` with every control or format character (Cc, Cf: ESC, BEL, bidi overrides, ...)
    shown as an escape instead of acting on the terminal."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e5 else f"{value:.2e}"
    return inert(str(value))


def format_table(rows: Sequence[Mapping[str, Any]], total: int, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((160, 24)).columns
    header = " ".join(_HEADERS.get(k, k).rjust(w) if k != "id" else k.ljust(w)
                      for k, w in _COLUMNS) + "  completion"
    lines = [header, "-" * min(len(header) + 20, width)]
    for row in rows:
        cells = " ".join(_cell(row.get(k)).rjust(w) if k != "id" else _cell(row.get(k)).ljust(w)
                         for k, w in _COLUMNS)
        room = max(width - len(cells) - 2, 10)
        lines.append(f"{cells}  {inert(str(row.get('text', '')))[:room]}")
    lines.append(f"{len(rows)} of {total} matching samples")
    return "\n".join(lines)


def print_table(all_rows: Sequence[Mapping[str, Any]], query: Query) -> str:
    result = page(all_rows, query)
    return format_table(result["rows"], result["total"])
