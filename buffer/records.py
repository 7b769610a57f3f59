"""The records that cross actor boundaries: frozen, plain-Python, JSON-serialisable.

A `Sample` is one completion of one prompt, with everything the learner and the inspector need:
the token ids, the sampler's logprob of every completion token, and the weight version that
produced every completion token (a sample may span versions when weights moved mid-generation).
A `Group` is the `group_size` samples of one prompt; groups are the unit the buffer stores and
the learner trains on, because GRPO normalises rewards within a group.

Per-token arrays are tuples (immutable, cheap to pickle across Ray, no numpy or torch), and their
names end in `_T` (one entry per completion token).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    sample_id: str                      # "<group_id>-<index in group>"
    group_id: str
    prompt_id: str                      # the env's stable id of the prompt
    prompt_ids: tuple[int, ...]         # prompt token ids (chat template applied)
    completion_ids_T: tuple[int, ...]   # generated token ids
    sampler_logprobs_T: tuple[float, ...]  # the sampler's logprob of each generated token
    versions_T: tuple[int, ...]         # weight version that produced each generated token
    prompt_text: str
    completion_text: str
    finish_reason: str                  # "stop" | "length" | ...
    reference: str                      # the gold answer the reward compared against
    reward: float
    reward_error: str | None = None     # why the reward scored 0 by failure (raised, timed out)
    env_metadata: Mapping[str, Any] = field(default_factory=dict)
    worker_id: int = 0
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        n = len(self.completion_ids_T)
        if len(self.sampler_logprobs_T) != n or len(self.versions_T) != n:
            raise ValueError(
                f"sample {self.sample_id}: {n} tokens but {len(self.sampler_logprobs_T)} logprobs "
                f"and {len(self.versions_T)} versions")

    @property
    def oldest_version(self) -> int:
        """The version of the oldest generated token (what staleness is measured against)."""
        return min(self.versions_T) if self.versions_T else 0

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids_T)


@dataclass(frozen=True)
class Group:
    group_id: str
    ticket: int                         # global order in which the buffer admitted the group
    prompt_id: str
    samples: tuple[Sample, ...]

    @property
    def oldest_version(self) -> int:
        return min(s.oldest_version for s in self.samples)

    @property
    def rewards_G(self) -> list[float]:
        return [s.reward for s in self.samples]

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.completion_ids_T) for s in self.samples)


@dataclass(frozen=True)
class TrainedSample:
    """What the learner did with one sample at one step: written to DIR/rollouts/."""

    sample: Sample
    step: int                           # learner step that trained on it
    learner_version: int                # the weights that recomputed the logprobs
    advantage: float
    trainer_logprobs_T: tuple[float, ...]


def to_json_dict(record: Sample | Group | TrainedSample) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists, mappings dicts); readable without slipstream."""
    return dataclasses.asdict(record, dict_factory=lambda items: {k: _plain(v) for k, v in items})


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def sample_from_json(data: Mapping[str, Any]) -> Sample:
    """The inverse of `to_json_dict` for a sample (snapshots, resume, the inspector)."""
    fields = {f.name for f in dataclasses.fields(Sample)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in fields}
    return Sample(**values)
