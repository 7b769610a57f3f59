"""JSON the browser parses as it is: exact floats, non-finite ones spelled out.

It lives with the run-directory writers because `rollouts/index.jsonl` is written in it
(rollout_log.py) and served to the page line by line, unchanged; the inspector reads and serves
it, the writer must not depend on the inspector.

Python's json writes the shortest repr that round-trips, and JavaScript parses it to the same
double, so a value shown in the page is bitwise the one the pipeline computed. JSON has no NaN or
Infinity (the browser's JSON.parse rejects Python's `NaN`), so those become `{"$float": "NaN"}`,
which the page's reviver (and `revive_floats` in Python) turns back into numbers; model text can
never produce an object, so no string is ever mistaken for one.
"""

from __future__ import annotations

import json
import math
from typing import Any


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


def revive_floats(obj: dict[str, Any]) -> Any:
    """json.loads object_hook undoing `browser_json`'s {"$float": ...} (Python side)."""
    if len(obj) == 1 and isinstance(obj.get("$float"), str):
        return float(obj["$float"])
    return obj
