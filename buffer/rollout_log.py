"""`DIR/rollouts/`: every trained-on sample, one JSON Lines file per learner step, and an index.

Each line of `step-NNNNNN.jsonl` is a `TrainedSample` as plain JSON: the sample (prompt and
completion text and ids, the decoded string of every completion token, sampler logprobs,
per-token weight versions, reward, env metadata) with the step, the learner version that
recomputed it, the advantage, the trainer's logprobs and what the loss did with each token
(importance weight after clipping, masked or not and why). Floats are written with Python's
shortest round-trip repr, so a value read back is bitwise the one computed: a token whose two
logprobs are bitwise equal shows a gap of exactly 0. A step file is written to a temporary name
and renamed, so a reader never sees half a step.

`index.jsonl` gets one line per sample, appended after its step file is in place: where the
record is (file, byte offset, length) and the summary numbers the inspector sorts and filters on
(`index_row`), so opening a run of 25,000 samples reads one small file, not every token. A reader
skips a half-written last line; a step file with no index lines (a run from before the index, or
a crash between the rename and the append) is summarised from the step file itself.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from slipstream.buffer.browser_json import browser_json
from slipstream.buffer.records import TrainedSample, to_json_dict

INDEX_NAME = "index.jsonl"
# Text kept in the index for the table and its text filter: enough to recognise a sample, small
# enough that 25,000 of them open in well under a second. The full text is in the step file.
_PREVIEW_CHARS = 160        # the completion's start
_PROMPT_CHARS = 100         # the prompt's end (after the chat template's boilerplate start)


def write_step(directory: str | Path, step: int, trained: Iterable[TrainedSample]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:06d}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    rows, offset = [], 0
    with tmp.open("wb") as out:
        for record in trained:
            data = to_json_dict(record)
            line = (json.dumps(data) + "\n").encode()
            out.write(line)
            rows.append(index_row(data, path.name, offset, len(line)))
            offset += len(line)
    tmp.rename(path)
    # One write per step, so a crash leaves at most one partial line (readers skip it). The
    # browser parses these lines as they are: JSON without NaN or Infinity (browser_json).
    with (directory / INDEX_NAME).open("a") as index:
        index.write("".join(browser_json(row) + "\n" for row in rows))
    return path


def read_rollouts(directory: str | Path) -> Iterator[dict]:
    """Every record of every finished step, in step order."""
    for path in sorted(Path(directory).glob("step-*.jsonl")):
        with path.open() as lines:
            for line in lines:
                yield json.loads(line)


def index_row(record: Mapping[str, Any], file: str, offset: int, nbytes: int) -> dict[str, Any]:
    """The summary of one `TrainedSample` JSON record that the inspector's table shows.

    gap = trainer - sampler logprob per token; `max_gap` is the largest |gap|, `k3` the mean of
    Schulman's k3 estimate of KL(sampler || trainer) over the sample's tokens, `staleness` the
    learner version minus the oldest token's version. `det_tokens` / `det_nonzero` feed the
    deterministic-mode banner: see `deterministic_gap_tokens`."""
    sample = record["sample"]
    sampler = sample["sampler_logprobs_T"]
    trainer = record["trainer_logprobs_T"]
    versions = sample["versions_T"]
    env = sample.get("env_tokens_T") or [False] * len(sampler)   # env tokens: nothing sampled
    gaps = [t - s for t, s, e in zip(trainer, sampler, env) if not e]
    weights = record.get("importance_weights_T") or []
    reasons = Counter(r for r in record.get("mask_reasons_T") or [] if r)
    learner_version = record["learner_version"]
    det_tokens, det_nonzero = deterministic_gap_tokens(record)
    return {
        "id": sample["sample_id"], "group": sample["group_id"], "prompt_id": sample["prompt_id"],
        "step": record["step"], "file": file, "offset": offset, "bytes": nbytes,
        "len": len(sampler), "reward": sample["reward"], "reward_error": sample["reward_error"],
        "advantage": record["advantage"], "finish": sample["finish_reason"],
        "max_gap": max((abs(g) for g in gaps), default=0.0),
        "k3": sum(_k3(g) for g in gaps) / len(gaps) if gaps else 0.0,
        "max_iw": max(weights, default=None),
        "masked": sum(bool(m) for m in record.get("masked_T") or []),
        "reasons": dict(reasons),
        "learner_version": learner_version,
        "staleness": learner_version - min(versions) if versions else 0,
        "versions": len(set(versions)),
        "version_min": min(versions, default=learner_version),
        "version_max": max(versions, default=learner_version),
        "reuse": record.get("reuse_count", 0),
        "det_tokens": det_tokens, "det_nonzero": det_nonzero,
        "prompt": sample["prompt_text"][-_PROMPT_CHARS:],
        "text": sample["completion_text"][:_PREVIEW_CHARS],
    }


def deterministic_gap_tokens(record: Mapping[str, Any]) -> tuple[int, int]:
    """(tokens compared, tokens whose gap is not exactly 0) for the deterministic-mode banner.

    A token is compared when the trainer recomputed it with the very weights that sampled it,
    KV cache included (trainer/logprobs.py `reproducible_by`): its own version, and, unless the
    sampler recomputed the prefix at every update (`prefix_recomputed`), the same version for
    every earlier token of the sample. With `own_version_logprobs_T` (each token recomputed under
    its own version: every sample in deterministic mode, the probed ones otherwise) that is
    checked against the sampler for every such token; without, only for the tokens of the
    learner's version (docs/ARCHITECTURE.md's `mismatch/*`)."""
    sample = record["sample"]
    versions = sample["versions_T"]
    recomputed = bool(sample.get("prefix_recomputed", False))
    own = record.get("own_version_logprobs_T")
    trainer = own if own is not None else record["trainer_logprobs_T"]
    compared = nonzero = 0
    env = sample.get("env_tokens_T") or [False] * len(versions)
    for logprob, sampled, version, from_env in zip(trainer, sample["sampler_logprobs_T"],
                                                   versions, env):
        if from_env:
            continue                 # the env wrote it: no sampler logprob to compare
        if not recomputed and version != versions[0]:
            break                    # this token and every later one attend to another's KV
        if own is None and version != record["learner_version"]:
            if recomputed:
                continue
            break
        compared += 1
        nonzero += logprob != sampled
    return compared, nonzero


def _k3(log_ratio: float) -> float:
    """k3 = exp(x) - x - 1 with x = trainer - sampler logprob, for x ~ the sampler."""
    return math.expm1(log_ratio) - log_ratio if log_ratio < 700 else math.inf
