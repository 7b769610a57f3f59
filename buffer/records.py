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
    # The decoded string of each generated token, so the inspector needs no tokenizer. Their
    # concatenation is the decoded completion; a token ending inside a multi-byte character
    # holds "" and the character appears on the token that completes it (rollout/group.py).
    # Empty when the writer had no tokenizer (older runs, unit tests).
    token_texts_T: tuple[str, ...] = ()
    # Named components of the reward when the reward exposes any (today's rewards do not).
    reward_parts: Mapping[str, float] = field(default_factory=dict)
    # True when the sampler recomputed the KV cache of this sample's whole prefix after every
    # weight update (the reference sampler), so each token's logprob depends on the weights of
    # its own version alone; False when the KV was kept across updates (vLLM: trainer/logprobs.py
    # `reproducible_by`).
    prefix_recomputed: bool = False
    # Distillation (rollout/teachers.py): the teacher's logprob of each generated token (for an
    # ensemble, the members' combination), empty when no teacher scored the sample; its top
    # tokens per position, best first (at least its argmax: `distill/agree_frac`); which teacher
    # and weight version scored it (0: frozen weights); each ensemble member's own logprobs and
    # weight for this sample; a hash of the privileged context it was given; and why it has no
    # score (a context function raised, the teacher died) when it has none.
    teacher_logprobs_T: tuple[float, ...] = ()
    teacher_topk_ids_T_K: tuple[tuple[int, ...], ...] = ()
    teacher_topk_logprobs_T_K: tuple[tuple[float, ...], ...] = ()
    teacher_id: str = ""
    teacher_version: int | None = None
    teacher_parts: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    teacher_weights: Mapping[str, float] = field(default_factory=dict)
    teacher_context_hash: str = ""
    teacher_error: str | None = None
    # Multi-turn envs (rollout/episode.py): True on each token the env wrote (a tool's output,
    # the chat template's turn markers around it), which the loss never trains on and which has
    # no sampler logprob (0.0) and its preceding policy token's version; empty for a sample of
    # one policy turn. `turns` counts the policy's turns.
    env_tokens_T: tuple[bool, ...] = ()
    turns: int = 1

    def __post_init__(self) -> None:
        n = len(self.completion_ids_T)
        if len(self.sampler_logprobs_T) != n or len(self.versions_T) != n:
            raise ValueError(
                f"sample {self.sample_id}: {n} tokens but {len(self.sampler_logprobs_T)} logprobs "
                f"and {len(self.versions_T)} versions")
        for name in ("token_texts_T", "env_tokens_T"):
            if getattr(self, name) and len(getattr(self, name)) != n:
                raise ValueError(f"sample {self.sample_id}: {n} tokens but "
                                 f"{len(getattr(self, name))} {name}")
        # Top-k lists may be absent (a product of experts has none); present, they are per token.
        teacher = [len(self.teacher_logprobs_T), len(self.teacher_topk_ids_T_K),
                   len(self.teacher_topk_logprobs_T_K), *map(len, self.teacher_parts.values())]
        if self.teacher_logprobs_T and any(k not in (0, n) for k in teacher[1:]) or \
                teacher[0] not in (0, n):
            raise ValueError(f"sample {self.sample_id}: {n} tokens but teacher arrays of "
                             f"lengths {teacher}")

    @property
    def has_teacher(self) -> bool:
        """A teacher scored every token of this sample."""
        return bool(self.teacher_id) and self.teacher_error is None

    @property
    def oldest_version(self) -> int:
        """The version of the oldest generated token (what staleness is measured against)."""
        return min(self.versions_T) if self.versions_T else 0

    @property
    def policy_tokens_T(self) -> tuple[bool, ...]:
        """True on each token the policy sampled (every token but the env's)."""
        return tuple(not e for e in self.env_tokens_T) if self.env_tokens_T else \
            (True,) * len(self.completion_ids_T)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids_T)


@dataclass(frozen=True)
class Group:
    group_id: str
    ticket: int                         # global order in which the buffer admitted the group
    prompt_id: str
    samples: tuple[Sample, ...]
    # Replay (buffer/replay_pool.py): how many learner steps have trained on the group, the
    # learner version of the last of them, each sample's trainer logprobs then (the proximal
    # anchor of decoupled PPO when the group is replayed) and the group's mean |advantage| then.
    reuse_count: int = 0
    last_trained_version: int | None = None
    anchor_logprobs: tuple[tuple[float, ...], ...] = ()
    last_abs_advantage: float | None = None
    # Distillation: seconds the teacher spent on this group (scoring, debate included), tokens it
    # scored (privileged context included) and tokens a debate generated; None/0 without one.
    teacher_score_s: float | None = None
    teacher_tokens: int = 0
    debate_tokens: int = 0

    def __post_init__(self) -> None:
        if self.anchor_logprobs and [len(a) for a in self.anchor_logprobs] != \
                [len(s.completion_ids_T) for s in self.samples]:
            raise ValueError(f"group {self.group_id}: anchor logprobs do not match its samples")

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
    # What the loss did with each token (trainer/losses/base.py MASK_REASONS), empty when the
    # loss did not say: the importance weight it applied after clipping or truncation, whether
    # the token gave no policy gradient (`masked_T`), and why (trainer/losses/base.py
    # MASK_REASONS: "" trained as is; "ppo_clip", "mis", "mis_sequence", "icepop", "overlong"
    # masked; "tis_truncated", "cispo_clip" trained with a capped weight).
    importance_weights_T: tuple[float, ...] = ()
    masked_T: tuple[bool, ...] = ()
    mask_reasons_T: tuple[str, ...] = ()
    reuse_count: int = 0                # earlier steps that trained on this sample (replay)
    # Each token's advantage, when they differ within the sample (GAE, a KL penalty in the
    # reward, batch-normalised returns); empty when every token has `advantage`, which is then
    # the sample's advantage (else the mean over its tokens).
    advantages_T: tuple[float, ...] = ()
    # The reward the advantage started from, when a recipe shaped it (DAPO's overlong penalty);
    # None when it is `sample.reward`.
    shaped_reward: float | None = None
    # Deterministic mode only: the trainer's logprob of each token under the weights of the
    # version that sampled it (current-version tokens: the training forward's own), which the
    # sampler's must equal bitwise; None where no such recomputation was made.
    own_version_logprobs_T: tuple[float, ...] | None = None


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
    values = {k: _tuples(v) for k, v in data.items() if k in fields}
    if "teacher_parts" in values:
        values["teacher_parts"] = {k: _tuples(v) for k, v in values["teacher_parts"].items()}
    return Sample(**values)


def _tuples(value: Any) -> Any:
    """JSON lists back into (nested) tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def group_from_json(data: Mapping[str, Any]) -> Group:
    """The inverse of `to_json_dict` for a group (a resumed buffer's waiting groups)."""
    return Group(group_id=data["group_id"], ticket=data["ticket"], prompt_id=data["prompt_id"],
                 samples=tuple(sample_from_json(s) for s in data["samples"]),
                 reuse_count=data.get("reuse_count", 0),
                 last_trained_version=data.get("last_trained_version"),
                 anchor_logprobs=tuple(tuple(a) for a in data.get("anchor_logprobs", ())),
                 last_abs_advantage=data.get("last_abs_advantage"),
                 teacher_score_s=data.get("teacher_score_s"),
                 teacher_tokens=data.get("teacher_tokens", 0),
                 debate_tokens=data.get("debate_tokens", 0))
