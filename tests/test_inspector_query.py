"""The samples table's filters, sorts and pages, against hand computation."""

import pytest

from slipstream.inspector.query import page, parse_query, select

ROWS = [
    {"id": "a", "step": 1, "reward": 1.0, "staleness": 0, "max_gap": 0.0, "finish": "stop",
     "reasons": {}, "prompt": "What is 2+2?", "text": "4", "max_iw": 1.0},
    {"id": "b", "step": 1, "reward": 0.0, "staleness": 1, "max_gap": 0.5, "finish": "length",
     "reasons": {"ppo_clip": 2}, "prompt": "What is 2+3?", "text": "<script>", "max_iw": None},
    {"id": "c", "step": 2, "reward": 0.5, "staleness": 1, "max_gap": 1e-7, "finish": "stop",
     "reasons": {"tis_truncated": 1}, "prompt": "What is 5+5?", "text": "ten", "max_iw": 2.0},
    {"id": "d", "step": 3, "reward": 0.5, "staleness": 2, "max_gap": 0.5, "finish": "stop",
     "reasons": {}, "prompt": "x", "text": "TEN", "max_iw": 1.5},
]


def ids(params):
    return [r["id"] for r in select(ROWS, parse_query(params))]


@pytest.mark.parametrize("params, expected", [
    ({}, ["a", "b", "c", "d"]),
    ({"step_min": "2"}, ["c", "d"]),
    ({"step_min": "1", "step_max": "1"}, ["a", "b"]),
    ({"reward_min": "0.5"}, ["a", "c", "d"]),
    ({"reward_max": "0.5", "stale_min": "1"}, ["b", "c", "d"]),
    ({"stale_max": "0"}, ["a"]),
    ({"gap_min": "1e-7"}, ["b", "c", "d"]),
    ({"gap_max": "0"}, ["a"]),
    ({"mask": "ppo_clip"}, ["b"]),
    ({"mask": "none"}, ["a", "d"]),
    ({"finish": "length"}, ["b"]),
    ({"text": "ten"}, ["c", "d"]),          # case-insensitive
    ({"text": "2+3"}, ["b"]),               # the prompt counts
    ({"text": "<SCRIPT>"}, ["b"]),
])
def test_filters(params, expected):
    assert ids(params) == expected


@pytest.mark.parametrize("params, expected", [
    ({"sort": "max_gap", "desc": "1"}, ["b", "d", "c", "a"]),   # ties keep step, id order
    ({"sort": "max_gap"}, ["a", "c", "b", "d"]),
    ({"sort": "reward", "desc": "1"}, ["a", "c", "d", "b"]),
    ({"sort": "max_iw"}, ["a", "d", "c", "b"]),                 # missing values last
    ({"sort": "max_iw", "desc": "1"}, ["c", "d", "a", "b"]),
    ({"sort": "id", "desc": "1"}, ["d", "c", "b", "a"]),
])
def test_sorts(params, expected):
    assert ids(params) == expected


def test_pages():
    result = page(ROWS, parse_query({"sort": "step", "per_page": "3", "page": "2"}))
    assert result["total"] == 4 and [r["id"] for r in result["rows"]] == ["d"]


@pytest.mark.parametrize("params, message", [
    ({"sort": "__class__"}, "sort"), ({"step_min": "two"}, "step_min"),
    ({"gap_max": "nan"}, "gap_max"), ({"page": "0"}, "page"), ({"per_page": "9999"}, "per_page"),
])
def test_bad_queries_name_the_parameter(params, message):
    with pytest.raises(ValueError, match=message):
        parse_query(params)
