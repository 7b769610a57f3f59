"""Filtering, sorting and paging of the samples table: one definition of what each filter means.

The browser applies the same rules in `static/app.js` (`matches`, `sortRows`), so the table of a
live server, of an `--html` export and of `--print` agree; `tests/test_inspector_query.py` checks
this module against hand computation and the browser tests check the page.

A query is a flat mapping of strings (what a URL carries):
    step_min step_max reward_min reward_max stale_min stale_max gap_min gap_max   numbers, inclusive
    mask    any reason name ("ppo_clip", ...): samples with at least one token masked/changed so;
            "none": samples with no such token
    finish  "stop", "length", ...       text  case-insensitive substring of id, prompt or completion
    sort    one of SORT_KEYS (default "step"; ties keep index order)   desc  "1" for descending
    page    1-based                     per_page  1..500 (default 50)

A NaN in a row (a diverged run's advantage) counts as missing: it matches no range and sorts
last, since it compares false with everything and would otherwise scramble the sort.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SORT_KEYS = ("step", "id", "len", "reward", "advantage", "staleness", "max_gap", "k3", "max_iw",
             "masked", "versions", "finish", "det_nonzero")
_RANGES = {"step": "step", "reward": "reward", "stale": "staleness", "gap": "max_gap"}


@dataclass(frozen=True)
class Query:
    ranges: tuple[tuple[str, float | None, float | None], ...] = ()   # (row key, low, high)
    mask: str = ""
    finish: str = ""
    text: str = ""
    sort: str = "step"
    desc: bool = False
    page: int = 1
    per_page: int = 50


def parse_query(params: Mapping[str, str]) -> Query:
    """A Query from URL-style parameters; ValueError naming the parameter on a bad value."""
    ranges = []
    for name, key in _RANGES.items():
        low, high = _number(params, f"{name}_min"), _number(params, f"{name}_max")
        if low is not None or high is not None:
            ranges.append((key, low, high))
    sort = params.get("sort", "step") or "step"
    if sort not in SORT_KEYS:
        raise ValueError(f"sort: {sort!r} is not one of {', '.join(SORT_KEYS)}")
    page, per_page = _integer(params, "page", 1), _integer(params, "per_page", 50)
    if page < 1 or not 1 <= per_page <= 500:
        raise ValueError("page must be >= 1 and per_page between 1 and 500")
    return Query(tuple(ranges), params.get("mask", ""), params.get("finish", ""),
                 params.get("text", ""), sort, params.get("desc", "") in ("1", "true"),
                 page, per_page)


def _number(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name, "")
    if raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if math.isnan(value):
        raise ValueError(f"{name}: NaN is not a bound")
    return value


def _integer(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name, "")
    try:
        return int(raw) if raw != "" else default
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not an integer") from None


def matches(row: Mapping[str, Any], query: Query) -> bool:
    for key, low, high in query.ranges:
        value = row.get(key)
        if _absent(value):
            return False
        if (low is not None and value < low) or (high is not None and value > high):
            return False
    reasons = row.get("reasons") or {}
    if query.mask == "none" and reasons:
        return False
    if query.mask not in ("", "none") and not reasons.get(query.mask):
        return False
    if query.finish and row.get("finish") != query.finish:
        return False
    if query.text:
        needle = query.text.lower()
        haystack = (str(row.get("id", "")), str(row.get("prompt", "")), str(row.get("text", "")))
        if not any(needle in h.lower() for h in haystack):
            return False
    return True


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def select(rows: Sequence[Mapping[str, Any]], query: Query) -> list[Mapping[str, Any]]:
    """Every matching row, sorted (the whole result, before paging). The sort is stable, so
    ties keep the index's order (steps in order, each step's samples as written); rows without
    the key go last either way."""
    kept = [r for r in rows if matches(r, query)]
    present = [r for r in kept if not _absent(r.get(query.sort))]
    missing = [r for r in kept if _absent(r.get(query.sort))]
    present.sort(key=lambda r: r[query.sort], reverse=query.desc)
    return present + missing


def page(rows: Sequence[Mapping[str, Any]], query: Query) -> dict[str, Any]:
    selected = select(rows, query)
    start = (query.page - 1) * query.per_page
    return {"total": len(selected), "page": query.page, "per_page": query.per_page,
            "rows": list(selected[start:start + query.per_page])}
