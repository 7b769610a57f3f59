"""A learner step's batch, prepared once: samples in group order, their micro-batches, the
rewards the advantages start from (after DAPO's overlong shaping), the sequences a recipe leaves
out (DAPO's overlong filter), and the whole-step counts every loss normalises by.

Whole-step tensors are (B, T) with B = every sample of the step and T = its longest completion; a
micro-batch's rows are a slice of B and its columns the first T_mb (completions are right-padded
from column 0), so per-token quantities computed for the whole step (advantages, reference
logprobs, values) are cut for a micro-batch with `rows, :T_mb`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from slipstream.buffer.records import Group, Sample
from slipstream.trainer.advantages import overlong_penalty
from slipstream.trainer.logprobs import MicroBatch, collate
from slipstream.trainer.losses import LossConfigBase


@dataclass(frozen=True)
class TeacherTensors:
    """The step's teacher scores as (B, T[, K]) tensors (trainer/losses/base.py LossInputs)."""

    logprobs_B_T: torch.Tensor         # 0 where unknown
    known_B_T: torch.Tensor            # bool: a teacher scored this token
    top1_B_T: torch.Tensor             # long: the teacher's best token, -1 where unknown
    topk_ids_B_T_K: torch.Tensor | None    # top-k objectives only
    topk_B_T_K: torch.Tensor | None
    total_tokens: int                  # trained tokens a teacher scored
    total_top1_tokens: int             # ... whose teacher top-1 is known

    def cut(self, rows: slice, width: int) -> dict:
        """The LossInputs fields of a micro-batch."""
        def part(t):
            return None if t is None else t[rows, :width]
        return {"teacher_logprobs_B_T": part(self.logprobs_B_T),
                "teacher_known_B_T": part(self.known_B_T),
                "teacher_top1_B_T": part(self.top1_B_T),
                "teacher_topk_logprobs_B_T_K": part(self.topk_B_T_K),
                "total_teacher_tokens": self.total_tokens,
                "total_top1_tokens": self.total_top1_tokens}


@dataclass(frozen=True)
class StepBatch:
    samples: tuple[Sample, ...]
    groups: tuple[range, ...]          # the rows of each group, in order
    rewards_B: torch.Tensor            # float64: what the advantages start from
    shaped: bool                       # rewards_B differs from the samples' rewards
    filtered_B: torch.Tensor | None    # bool: sequences left out of the loss; None: none
    mask_B_T: torch.Tensor             # bool: the policy's completion tokens (not an env's)
    sampler_B_T: torch.Tensor          # the sampler's logprobs (0 on padding)
    micro: tuple[tuple[slice, MicroBatch], ...]
    total_tokens: int                  # tokens the loss trains on (filtered sequences excluded)
    total_sequences: int
    max_tokens: int                    # the completion limit (the constant aggregation's length)
    reuse_B: tuple[int, ...] = ()      # steps that trained each sample before (replay)
    # Replayed samples' trainer logprobs when they last trained (the proximal anchor), valid
    # where proximal_known_B; None when no sample of the step is replayed.
    proximal_B_T: torch.Tensor | None = None
    proximal_known_B: torch.Tensor | None = None
    teacher: TeacherTensors | None = None      # when the loss distils from a teacher

    @property
    def trained_B_T(self) -> torch.Tensor:
        if self.filtered_B is None:
            return self.mask_B_T
        return self.mask_B_T & ~self.filtered_B.unsqueeze(-1)

    def micro_batches(self) -> Iterator[tuple[slice, MicroBatch]]:
        return iter(self.micro)


def build_step_batch(groups: Sequence[Group], pad_id: int, micro_batch_size: int,
                     loss: LossConfigBase, max_tokens: int, expected_samples: int) -> StepBatch:
    samples = tuple(s for g in groups for s in g.samples)
    if len(samples) != expected_samples:
        raise ValueError(f"batch of {len(samples)} samples, expected {expected_samples}")
    if (loss.needs_values or loss.kind == "soft_q") and any(s.env_tokens_T for s in samples):
        # GAE and the soft values walk a sequence's tokens as one run; env turns break it.
        raise ValueError(f"trainer.loss.kind={loss.kind} needs contiguous policy tokens, and "
                         "this env interleaves its own turns: use a critic-free recipe")
    starts = [0]
    for g in groups:
        starts.append(starts[-1] + len(g.samples))
    lengths = [len(s.completion_ids_T) for s in samples]
    rewards = [s.reward for s in samples]
    if loss.overlong == "shape":
        rewards = [r + overlong_penalty(n, max_tokens, loss.overlong_buffer_tokens,
                                        loss.overlong_penalty) for r, n in zip(rewards, lengths)]
    filtered = None
    if loss.overlong == "filter":
        filtered = torch.tensor([s.finish_reason == "length" for s in samples], dtype=torch.bool)
    longest = max(lengths, default=0)
    mask = torch.arange(longest).unsqueeze(0) < torch.tensor(lengths).unsqueeze(-1)
    for b, s in enumerate(samples):
        if s.env_tokens_T:          # a multi-turn sample: the env's tokens are never trained
            mask[b, :lengths[b]] = torch.tensor(s.policy_tokens_T, dtype=torch.bool)
    micro = tuple((slice(i, i + micro_batch_size),
                   collate(samples[i:i + micro_batch_size], pad_id))
                  for i in range(0, len(samples), micro_batch_size))
    sampler = torch.zeros(mask.shape)
    for b, s in enumerate(samples):
        sampler[b, :lengths[b]] = torch.tensor(s.sampler_logprobs_T, dtype=torch.float32)
    kept = mask if filtered is None else mask & ~filtered.unsqueeze(-1)
    proximal, known = _proximal_anchors(groups, mask)
    teacher = _teacher_tensors(samples, kept, loss.distill.needs_topk) \
        if loss.distill.enabled else None
    return StepBatch(
        samples=samples, groups=tuple(range(a, b) for a, b in zip(starts, starts[1:])),
        rewards_B=torch.tensor(rewards, dtype=torch.float64),
        shaped=loss.overlong == "shape" and rewards != [s.reward for s in samples],
        filtered_B=filtered, mask_B_T=mask, sampler_B_T=sampler, micro=micro,
        total_tokens=int(kept.sum()), total_sequences=len(samples), max_tokens=max_tokens,
        reuse_B=tuple(g.reuse_count for g in groups for _ in g.samples),
        proximal_B_T=proximal, proximal_known_B=known, teacher=teacher)


def _teacher_tensors(samples: Sequence[Sample], kept_B_T: torch.Tensor,
                     with_topk: bool) -> TeacherTensors:
    shape = tuple(kept_B_T.shape)
    logprobs, known = torch.zeros(shape), torch.zeros(shape, dtype=torch.bool)
    top1 = torch.full(shape, -1, dtype=torch.long)
    k = max((len(s.teacher_topk_ids_T_K[0]) for s in samples if s.teacher_topk_ids_T_K),
            default=1)
    ids = torch.zeros(shape + (k,), dtype=torch.long) if with_topk else None
    topk = torch.zeros(shape + (k,)) if with_topk else None
    for b, s in enumerate(samples):
        n = len(s.teacher_logprobs_T)
        if not s.has_teacher or n == 0:
            continue
        logprobs[b, :n] = torch.tensor(s.teacher_logprobs_T, dtype=torch.float32)
        known[b, :n] = True
        if s.teacher_topk_ids_T_K:
            top1[b, :n] = torch.tensor([row[0] for row in s.teacher_topk_ids_T_K])
            if with_topk:
                ids[b, :n] = torch.tensor(s.teacher_topk_ids_T_K)
                topk[b, :n] = torch.tensor(s.teacher_topk_logprobs_T_K, dtype=torch.float32)
    scored = known & kept_B_T
    return TeacherTensors(logprobs, known, top1, ids, topk, int(scored.sum()),
                          int((scored & (top1 >= 0)).sum()))


def _proximal_anchors(groups: Sequence[Group], mask_B_T: torch.Tensor
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The stored anchors of replayed groups as (B, T), and which rows have one."""
    rows = [(g.anchor_logprobs[i] if g.reuse_count and g.anchor_logprobs else None)
            for g in groups for i in range(len(g.samples))]
    if all(r is None for r in rows):
        return None, None
    proximal = torch.zeros(mask_B_T.shape)
    for b, anchor in enumerate(rows):
        if anchor is not None:
            proximal[b, :len(anchor)] = torch.tensor(anchor, dtype=torch.float32)
    return proximal, torch.tensor([r is not None for r in rows], dtype=torch.bool)
