"""JSON for the browser: exact floats, non-finite ones spelled out, and safe embedding in HTML.

Python's json writes the shortest repr that round-trips, and JavaScript parses it to the same
double, so a value shown in the page is bitwise the one the pipeline computed. JSON has no NaN or
Infinity (the browser's JSON.parse rejects Python's `NaN`), so those become `{"$float": "NaN"}`,
which the page's reviver turns back into numbers; model text can never produce an object, so
no string is ever mistaken for one.

Embedded in an HTML file (`--html`), the JSON sits in `<script type="application/json">`, where
the HTML parser looks only for `</script`; escaping every `<`, `>` and `&` (and U+2028/U+2029,
which older JavaScript parsers treat as line ends) as `\\uXXXX` makes the text inert whatever
the model wrote, and JSON.parse restores the characters.
"""

from __future__ import annotations

import json
import math
from typing import Any

_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                               "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0
                                                           else "-Infinity")}
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def browser_json(payload: Any) -> str:
    """JSON the browser's JSON.parse accepts, floats exact."""
    try:
        return json.dumps(payload, allow_nan=False)
    except ValueError:                      # a NaN or infinity somewhere: spell them out
        return json.dumps(_finite(payload), allow_nan=False)


def html_embedded_json(payload: Any) -> str:
    """`browser_json` safe to place between <script type="application/json"> tags."""
    return browser_json(payload).translate(_HTML_ESCAPES)


def revive_floats(obj: dict[str, Any]) -> Any:
    """json.loads object_hook undoing `browser_json`'s {"$float": ...} (Python side)."""
    if len(obj) == 1 and isinstance(obj.get("$float"), str):
        return float(obj["$float"])
    return obj
