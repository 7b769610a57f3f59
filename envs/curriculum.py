"""An edge-of-competence curriculum: prompts drawn where the model fails at pass@1 but solves at
pass@k, mastered and unsolved difficulties retired and re-probed now and then.

    --curriculum.kind edge [--curriculum.key level] [--curriculum.window 8] ...

Choices:
- The unit is a bucket of prompts, named by a key of the prompt's metadata (`level` for
  reasoning-gym's difficulty levels; `task` or any key an env writes). A procedural env rarely
  shows the same prompt twice, so pass rates are tracked per bucket, from the rollouts
  themselves: each finished group is one pass@k trial of its bucket (k = the group size) and k
  pass@1 trials. Only the last `window` groups of a bucket count, so a bucket the policy
  learns moves from edge to mastered within the run.
- A bucket is *new* until it has `min_groups` groups (drawn like an edge bucket, to measure it),
  *mastered* when pass@1 >= `mastered_pass1`, *unsolved* when no sample of its window succeeded,
  else *edge*. Edge and new buckets are drawn with weight 1, mastered and unsolved ones with
  weight `reprobe` (re-probed now and then, so a bucket the policy starts to solve, or forgets,
  comes back).
- Which prompt: the next index of the env's own stream whose bucket is the chosen one (a cursor
  per bucket), so every prompt is still `env.prompt(index)` and no prompt is used twice. The
  buckets are the ones the first `discover` prompts of the stream show.
- `uniform` (the default) is no curriculum: ticket k is prompt k, as without this module.
- Exploration (`explore_k` > 0): when a worker would wait for a ticket (held back by the
  staleness bound or the buffer's capacity: on this CPU, the learner is the bottleneck), the
  buffer hands it an unsolved bucket's next prompt to sample `explore_k` times instead. A group
  with no success is discarded. One with a success is kept: it joins its bucket's window (the
  bucket is then at the edge, drawn with weight 1), and its prompt is the next ticket's, ahead
  of any draw. The exploration samples themselves never train: every step whose staleness
  bound their weights meet has its groups handed out already (that is why the worker was idle),
  so a place in a batch would push a fresh group past its bound; the prompt is trained on by a
  fresh group under the bound instead.
- The state (window per bucket, cursors, the index of every ticket in flight, the prompts found
  by exploration, the random generators) is plain JSON, part of the buffer's checkpoint, so a
  resumed run picks as the uninterrupted one would have (an exploration in flight at the
  checkpoint is dropped; its prompt is not drawn again).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slipstream.envs.base import Env
from slipstream.errors import SlipstreamError

_SCAN_LIMIT = 100_000      # stream positions searched for a bucket's next prompt


class CurriculumConfig(BaseModel):
    """Which prompts the rollout workers get (envs/curriculum.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["uniform", "edge"] = Field("uniform", description=(
        "uniform: the env's stream as is; edge: buckets at the edge of competence first."))
    key: str = Field("level", min_length=1, description=(
        "The prompt metadata key whose value names a prompt's bucket."))
    window: int = Field(8, ge=1, le=1000, description="Recent groups per bucket that count.")
    min_groups: int = Field(2, ge=1, description="Groups before a bucket's rates are trusted.")
    mastered_pass1: float = Field(0.9, gt=0, le=1, description=(
        "pass@1 at which a bucket is mastered and retired."))
    success: float = Field(0.5, description="A sample succeeds when its reward is at least this.")
    reprobe: float = Field(0.1, ge=0, le=1, description=(
        "Draw weight of a mastered or unsolved bucket (an edge bucket weighs 1)."))
    discover: int = Field(256, ge=1, le=_SCAN_LIMIT, description=(
        "Stream positions read at start to find the buckets."))
    explore_k: int = Field(0, ge=0, le=256, description=(
        "Samples per exploration group, drawn on idle worker capacity from unsolved buckets "
        "(more than rollout.group_size); 0: no exploration."))
    explore_per_step: int = Field(1, ge=1, le=64, description=(
        "Exploration groups started per learner step at most, over all workers: on a machine "
        "where engines and learner share cores, the engines' idle time is the learner's."))


def bucket_status(results: Sequence[Sequence[bool]], config: CurriculumConfig) -> str:
    """"new", "mastered", "unsolved" or "edge" for a bucket's recent groups (each a list of
    per-sample successes)."""
    if len(results) < config.min_groups:
        return "new"
    samples = [s for group in results for s in group]
    if samples and sum(samples) / len(samples) >= config.mastered_pass1:
        return "mastered"
    if not any(samples):
        return "unsolved"
    return "edge"


def pass_rates(results: Sequence[Sequence[bool]]) -> tuple[float, float] | None:
    """(pass@1, pass@k) over a bucket's recent groups; None with no group."""
    samples = [s for group in results for s in group]
    if not results or not samples:
        return None
    return sum(samples) / len(samples), sum(any(g) for g in results) / len(results)


class EdgeCurriculum:
    """Ticket -> stream index, chosen by bucket status; `observe` feeds it finished groups."""

    def __init__(self, config: CurriculumConfig, env: Env, seed: int) -> None:
        self.config, self._env = config, env
        self._rng = random.Random(f"curriculum:{seed}")
        keys = [self._key(env.prompt(i).metadata) for i in range(config.discover)]
        self.buckets: list[str] = sorted({k for k in keys if k is not None})
        if not self.buckets:
            raise SlipstreamError(f"curriculum.key {config.key!r} is in no prompt's metadata "
                                  f"among the first {config.discover} (env {env.name})")
        self._results: dict[str, list[list[bool]]] = {b: [] for b in self.buckets}
        self._cursor: dict[str, int] = {b: 0 for b in self.buckets}
        self._tickets: dict[int, int] = {}          # ticket in flight -> its stream index
        self._picks: dict[str, int] = {b: 0 for b in self.buckets}
        # Exploration draws from its own generator, so whether the workers happened to be idle
        # does not change the regular draws.
        self._explore_rng = random.Random(f"explore:{seed}")
        self._found: list[int] = []        # prompts exploration solved, not yet handed out
        self._explored = {"groups": 0, "kept": 0}

    def _key(self, metadata: Mapping[str, Any]) -> str | None:
        value = metadata.get(self.config.key)
        return None if value is None else str(value)

    def weights(self) -> dict[str, float]:
        """Each bucket's draw weight now."""
        retired = self.config.reprobe
        return {b: retired if bucket_status(self._results[b], self.config) in
                ("mastered", "unsolved") else 1.0 for b in self.buckets}

    def index_for(self, ticket: int) -> int:
        """The stream index of `ticket`'s prompt: the same on every call for one ticket."""
        if ticket not in self._tickets and self._found:
            self._tickets[ticket] = self._found.pop(0)
        if ticket not in self._tickets:
            weights = self.weights()
            if sum(weights.values()) == 0:      # reprobe 0 and every bucket retired
                weights = dict.fromkeys(weights, 1.0)
            bucket = self._rng.choices(self.buckets, [weights[b] for b in self.buckets])[0]
            self._tickets[ticket] = self._next_index(bucket)
            self._picks[bucket] += 1
        return self._tickets[ticket]

    def _next_index(self, bucket: str) -> int:
        start = self._cursor[bucket]
        for index in range(start, start + _SCAN_LIMIT):
            if self._key(self._env.prompt(index).metadata) == bucket:
                self._cursor[bucket] = index + 1
                return index
        raise SlipstreamError(f"curriculum: no prompt of bucket {bucket!r} in {_SCAN_LIMIT} "
                              f"stream positions after {start}")

    def observe(self, ticket: int, rewards: Sequence[float], metadata: Mapping[str, Any]) -> None:
        """A finished group of `ticket`: its successes join its bucket's window."""
        self._tickets.pop(ticket, None)
        bucket = self._key(metadata)
        if bucket not in self._results:
            return                        # a bucket discovery did not see: not steered
        window = self._results[bucket]
        window.append([r >= self.config.success for r in rewards])
        del window[:-self.config.window]

    def explore_index(self) -> int | None:
        """The stream index of a prompt to explore: the next of a random unsolved bucket;
        None when no bucket is unsolved."""
        unsolved = [b for b in self.buckets
                    if bucket_status(self._results[b], self.config) == "unsolved"]
        if not unsolved:
            return None
        return self._next_index(self._explore_rng.choice(unsolved))

    def observe_exploration(self, index: int, rewards: Sequence[float],
                            metadata: Mapping[str, Any]) -> bool:
        """An exploration group of prompt `index`: kept (True) when one sample succeeded."""
        self._explored["groups"] += 1
        successes = [r >= self.config.success for r in rewards]
        bucket = self._key(metadata)
        if not any(successes) or bucket not in self._results:
            return False
        self._explored["kept"] += 1
        window = self._results[bucket]
        window.append(successes)
        del window[:-self.config.window]
        self._found.append(index)
        return True

    def metrics(self) -> dict[str, float]:
        """`curriculum/<bucket>/pass1`, `/passk` (over its window; absent before its first
        group), `/weight` and `/picks` (prompts handed out since the run began)."""
        metrics: dict[str, float] = {}
        weights = self.weights()
        for b in self.buckets:
            rates = pass_rates(self._results[b])
            if rates is not None:
                metrics[f"curriculum/{b}/pass1"], metrics[f"curriculum/{b}/passk"] = rates
            metrics[f"curriculum/{b}/weight"] = weights[b]
            metrics[f"curriculum/{b}/picks"] = self._picks[b]
        if self.config.explore_k:
            metrics["curriculum/explore/groups"] = self._explored["groups"]
            metrics["curriculum/explore/kept"] = self._explored["kept"]
        return metrics

    def state(self) -> dict[str, Any]:
        return {"results": self._results, "cursor": self._cursor, "picks": self._picks,
                "tickets": {str(t): i for t, i in self._tickets.items()},
                "rng": _rng_state(self._rng), "explore_rng": _rng_state(self._explore_rng),
                "found": self._found, "explored": self._explored}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._results = {b: [list(g) for g in state["results"].get(b, [])] for b in self.buckets}
        self._cursor = {b: int(state["cursor"].get(b, 0)) for b in self.buckets}
        self._picks = {b: int(state["picks"].get(b, 0)) for b in self.buckets}
        self._tickets = {int(t): int(i) for t, i in state["tickets"].items()}
        _set_rng_state(self._rng, state["rng"])
        if "explore_rng" in state:      # absent in checkpoints written before exploration
            _set_rng_state(self._explore_rng, state["explore_rng"])
            self._found = [int(i) for i in state["found"]]
            self._explored = {k: int(v) for k, v in state["explored"].items()}


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: Sequence) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))
