"""What the inspector accepts from a run directory: one check per kind of row it reads.

A run directory may have been written by a crashed run, an older or foreign writer, or by hand,
so nothing in it is trusted. Every row passes one of these checks where it enters the store
(store.py); a row that fails is skipped and counted under the check's message, which names the
field and what was wrong (never the value: the messages are counted as keys, so they must stay
few). Each `*_problem` function returns None for a good row, else that message.

Numbers: a field the inspector computes with or seeks by (step, offset, bytes, counts,
versions) must be an int (a bool is not one); a summary value (reward, advantage, max_gap, k3,
max_iw) may be any number, non-finite ones included, because a NaN advantage in a diverged run
is exactly what someone opens the inspector to find. query.py orders a NaN with the missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

STEP_FILE = re.compile(r"^step-\d{6,}\.jsonl$")
# The largest record the store will read for one request. A sample of 128k tokens with every
# per-token field is ~16 MB; a larger `bytes` is a damaged index, and would cost its memory.
MAX_RECORD_BYTES = 64 * 2**20

_INT_FIELDS = ("len", "masked", "learner_version", "staleness", "versions", "version_min",
               "version_max", "reuse", "det_tokens", "det_nonzero")
_NUMBER_FIELDS = ("reward", "advantage", "max_gap", "k3", "max_iw")
_TEXT_FIELDS = ("finish", "reward_error", "prompt", "text")
# Per-token lists of a step-file record the sample view walks token by token.
_RECORD_LISTS = ("trainer_logprobs_T",)
_SAMPLE_LISTS = ("completion_ids_T", "sampler_logprobs_T", "versions_T")
_OPTIONAL_RECORD_LISTS = ("own_version_logprobs_T", "importance_weights_T", "masked_T",
                          "mask_reasons_T", "advantages_T")


def is_int(value: Any) -> bool:
    return type(value) is int          # not a bool (a subclass), not 3.0: JSON gives exact types


def is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def is_nan(value: Any) -> bool:
    return type(value) is float and math.isnan(value)


def _is_str(value: Any) -> bool:
    return type(value) is str


def _optional(row: Mapping[str, Any], names: tuple[str, ...], test, what: str) -> str | None:
    """The first of `names` present, not None and failing `test`, as a message."""
    for name in names:
        value = row.get(name)
        if value is not None and not test(value):
            return f"'{name}' is not {what}"
    return None


def index_row_problem(row: Mapping[str, Any]) -> str | None:
    """An index line (buffer/rollout_log.py `index_row`): where a record is, and its summary."""
    if not isinstance(row.get("id"), str) or not row["id"]:
        return "'id' is not a non-empty string"
    if not isinstance(row.get("group"), str):
        return "'group' is not a string"
    for name in ("step", "offset"):
        if not is_int(row.get(name)) or row[name] < 0:
            return f"'{name}' is not an integer >= 0"
    size = row.get("bytes")
    if not is_int(size) or not 0 < size <= MAX_RECORD_BYTES:
        return f"'bytes' is not an integer in 1..{MAX_RECORD_BYTES}"
    if not isinstance(row.get("file"), str) or not STEP_FILE.match(row["file"]):
        return "'file' is not a step file name in rollouts/ (step-NNNNNN.jsonl)"
    reasons = row.get("reasons")
    if reasons is not None and not (isinstance(reasons, dict) and all(
            is_int(count) and count >= 0 for count in reasons.values())):
        return "'reasons' is not an object of counts"
    if isinstance(row.get("prompt_id"), (dict, list)):
        return "'prompt_id' is not a scalar"
    return (_optional(row, _INT_FIELDS, is_int, "an integer")
            or _optional(row, _NUMBER_FIELDS, is_number, "a number")
            or _optional(row, _TEXT_FIELDS, _is_str, "a string"))


def _list_of(value: Any, test) -> bool:
    return isinstance(value, list) and all(test(item) for item in value)


def record_problem(record: Any) -> str | None:
    """A step-file line (a `TrainedSample` as JSON): the fields the index summary and the
    sample view compute with, with one entry per generated token in every per-token list."""
    if not isinstance(record, dict):
        return "the record is not a JSON object"
    sample = record.get("sample")
    if not isinstance(sample, dict):
        return "'sample' is not an object"
    if not isinstance(sample.get("sample_id"), str) or not isinstance(sample.get("group_id"), str):
        return "'sample_id' or 'group_id' is not a string"
    if not is_int(record.get("step")) or not is_int(record.get("learner_version")):
        return "'step' or 'learner_version' is not an integer"
    for name in ("prompt_text", "completion_text", "finish_reason"):
        if not isinstance(sample.get(name), str):
            return f"'sample.{name}' is not a string"
    if not is_number(sample.get("reward")) or not is_number(record.get("advantage")):
        return "'reward' or 'advantage' is not a number"
    if not _list_of(sample.get("completion_ids_T"), is_int) or \
            not _list_of(sample.get("versions_T"), is_int):
        return "'completion_ids_T' or 'versions_T' is not a list of integers"
    if not _list_of(sample.get("sampler_logprobs_T"), is_number) or \
            not _list_of(record.get("trainer_logprobs_T"), is_number):
        return "'sampler_logprobs_T' or 'trainer_logprobs_T' is not a list of numbers"
    tokens = len(sample["completion_ids_T"])
    lists = [sample[name] for name in _SAMPLE_LISTS] + [record[n] for n in _RECORD_LISTS]
    # An optional list is absent, null or empty when its writer did not say (TrainedSample).
    lists += [record[n] for n in _OPTIONAL_RECORD_LISTS if record.get(n)]
    if any(not isinstance(value, list) or len(value) != tokens for value in lists):
        return "a per-token list does not have one entry per generated token"
    texts = sample.get("token_texts_T")
    if texts is not None and not _list_of(texts, lambda t: isinstance(t, str)):
        return "'token_texts_T' is not a list of strings"
    env = sample.get("env_tokens_T")     # multi-turn samples only
    if env and (not _list_of(env, lambda e: isinstance(e, bool)) or len(env) != tokens):
        return "'env_tokens_T' is not a list of booleans, one per generated token"
    return None


def metrics_row_problem(row: Mapping[str, Any]) -> str | None:
    if not is_int(row.get("step")) or row["step"] < 0:
        return "'step' is not an integer >= 0"
    return None


def snapshot_row_problem(row: Mapping[str, Any]) -> str | None:
    """A row of `buffer/snapshot-*.jsonl` (buffer/snapshots.py `write_snapshot`)."""
    sample = row.get("sample")
    if not isinstance(sample, dict):
        return "'sample' is not an object"
    if not isinstance(sample.get("sample_id"), str):
        return "'sample.sample_id' is not a string"
    if not _list_of(sample.get("versions_T", []), is_int):
        return "'sample.versions_T' is not a list of integers"
    for name in ("group_id", "completion_text"):
        if sample.get(name) is not None and not isinstance(sample[name], str):
            return f"'sample.{name}' is not a string"
    if sample.get("reward") is not None and not is_number(sample["reward"]):
        return "'sample.reward' is not a number"
    return _optional(row, ("ticket", "learner_version", "age", "max_lag", "reuse_count"),
                     is_int, "an integer")


def eviction_problem(row: Mapping[str, Any]) -> str | None:
    """A line of `buffer/evictions.jsonl` (buffer/replay.py `Eviction`)."""
    if not isinstance(row.get("group_id"), str) or not isinstance(row.get("reason"), str):
        return "'group_id' or 'reason' is not a string"
    if not is_int(row.get("ticket")):
        return "'ticket' is not an integer"
    return _optional(row, ("oldest_version", "learner_version"), is_int, "an integer")


def config_max_lag(config: Mapping[str, Any]) -> int | None:
    """config.json's `buffer.max_lag` if it is an int >= 0, else None."""
    buffer = config.get("buffer")
    max_lag = buffer.get("max_lag") if isinstance(buffer, dict) else None
    return max_lag if is_int(max_lag) and max_lag >= 0 else None
