"""The typed inputs and outputs every loss shares, and the aggregations they use.

Shapes are in the names: B sequences, T completion positions (right-padded; `mask_B_T` marks the
real tokens). A step's batch is split into micro-batches; every loss normalises by the *whole*
batch (`total_tokens`, `total_sequences`), never by the micro-batch, so summing micro-batch losses
gives the batch loss and gradient accumulation needs no rescaling. Metrics follow the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Why a token's policy gradient was changed, by code (the index into this tuple) in
# `LossOutput.mask_reason_B_T`. One reason per token; where several apply, the most drastic is
# kept (the later entry of MASK_PRIORITY). Masking reasons leave the token without gradient:
#   "overlong"      its completion was truncated and the recipe filters those (DAPO);
#   "mis_sequence"  its sequence's ratio left the MIS band;  "mis"  its own ratio did;
#   "icepop"        its ratio left IcePop's band;  "ppo_clip"  the clipped branch of PPO's min won;
#   "m2po"          M2PO's second-moment mask dropped it.
# The others still train: "tis_truncated" (TIS weight capped), "cispo_clip" (CISPO weight
# clipped), "topr_truncated" (a negative sample's TOPR weight below 1).
# "env" is not the loss's: the learner writes it on a multi-turn env's own tokens, which no
# loss trains on (rollout/episode.py; trainer/step_record.py).
MASK_REASONS: tuple[str, ...] = ("", "ppo_clip", "tis_truncated", "cispo_clip", "mis",
                                 "mis_sequence", "icepop", "overlong", "m2po", "topr_truncated",
                                 "env")
MASKING_REASONS = frozenset({"ppo_clip", "mis", "mis_sequence", "icepop", "overlong", "m2po",
                             "env"})
MASK_PRIORITY: tuple[str, ...] = ("cispo_clip", "topr_truncated", "tis_truncated", "ppo_clip",
                                  "m2po", "icepop", "mis", "mis_sequence", "overlong")


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch. B = sequences, T = completion positions (right-padded)."""

    logprobs_B_T: Tensor             # trainer logprobs of the sampled tokens, float32, with grad
    sampler_logprobs_B_T: Tensor     # the sampler's (vLLM's) logprobs of the same tokens, float32
    advantages_B_T: Tensor           # each token's advantage, float32 (no gradient)
    mask_B_T: Tensor                 # bool: True on real completion tokens
    ref_logprobs_B_T: Tensor | None  # reference-model logprobs, when a reference is configured
    total_tokens: int                # trained tokens in the WHOLE step batch (all micro-batches)
    total_sequences: int             # sequences in the whole step batch
    max_tokens: int = 1              # the completion limit: the `constant` aggregation's length
    # Sequences the recipe leaves out of the loss (DAPO's overlong filter); None: none.
    filtered_B: Tensor | None = None
    # PPO's value head: its prediction per token (with grad), the prediction at the start of
    # the step, and the GAE returns it regresses on; None for losses without a critic.
    values_B_T: Tensor | None = None
    old_values_B_T: Tensor | None = None
    returns_B_T: Tensor | None = None
    # Replay: each token's logprob under the policy that last trained on its sample (the
    # proximal anchor of decoupled PPO), valid where `proximal_known_B` (replayed samples);
    # elsewhere the anchor is the current policy at the start of the step. None: no replay.
    proximal_logprobs_B_T: Tensor | None = None
    proximal_known_B: Tensor | None = None
    # Soft Q-learning (soft_q.py): the temperature-scaled logit of each sampled token, with
    # grad, and the reference model's (no grad).
    target_logits_B_T: Tensor | None = None
    ref_target_logits_B_T: Tensor | None = None
    # Distillation (distill.py): the teacher's logprob of each sampled token, valid where
    # `teacher_known_B_T`; for the top-k objectives the teacher's top-k logprobs and the
    # student's logprobs of the same tokens (with grad); for `distill/agree_frac` the teacher's
    # top-1 token (-1: unknown) and the student's argmax. The totals count the whole step's
    # tokens that have a teacher score, and a teacher top-1.
    teacher_logprobs_B_T: Tensor | None = None
    teacher_known_B_T: Tensor | None = None
    teacher_topk_logprobs_B_T_K: Tensor | None = None
    student_topk_logprobs_B_T_K: Tensor | None = None
    teacher_top1_B_T: Tensor | None = None
    student_argmax_B_T: Tensor | None = None
    total_teacher_tokens: int = 0
    total_top1_tokens: int = 0

    def __post_init__(self) -> None:
        # A (B,) vs (B, 1) slip broadcasts silently into a (B, B) loss; fail loudly instead.
        shape = tuple(self.logprobs_B_T.shape)
        if len(shape) != 2:
            raise ValueError(f"logprobs_B_T must be 2-D (B, T), got {shape}")
        others = {"sampler_logprobs_B_T": self.sampler_logprobs_B_T, "mask_B_T": self.mask_B_T,
                  "advantages_B_T": self.advantages_B_T, "ref_logprobs_B_T": self.ref_logprobs_B_T,
                  "values_B_T": self.values_B_T, "old_values_B_T": self.old_values_B_T,
                  "returns_B_T": self.returns_B_T,
                  "proximal_logprobs_B_T": self.proximal_logprobs_B_T,
                  "target_logits_B_T": self.target_logits_B_T,
                  "ref_target_logits_B_T": self.ref_target_logits_B_T,
                  "teacher_logprobs_B_T": self.teacher_logprobs_B_T,
                  "teacher_known_B_T": self.teacher_known_B_T,
                  "teacher_top1_B_T": self.teacher_top1_B_T,
                  "student_argmax_B_T": self.student_argmax_B_T}
        for name, tensor in others.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        for name in ("teacher_topk_logprobs_B_T_K", "student_topk_logprobs_B_T_K"):
            tensor = getattr(self, name)
            if tensor is not None and tuple(tensor.shape[:2]) != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape} + (K,)")
        if self.mask_B_T.dtype != torch.bool:
            raise ValueError(f"mask_B_T must be bool, got {self.mask_B_T.dtype}")
        if self.filtered_B is not None and tuple(self.filtered_B.shape) != shape[:1]:
            raise ValueError(f"filtered_B has shape {tuple(self.filtered_B.shape)}, "
                             f"expected {shape[:1]}")

    def share_of(self, values_B_T: Tensor, where_B_T: Tensor, total: int) -> Tensor:
        """This micro-batch's share of the mean of `values` over the step's tokens `where`
        (`total` of them): for figures over a subset, such as the tokens a teacher scored."""
        return masked(values_B_T, where_B_T & self.trained_B_T).sum() / max(total, 1)

    def proximal(self, current_B_T: Tensor) -> Tensor:
        """The proximal anchor per token (no gradient): the stored logprobs of the policy that
        last trained on a replayed sample, `current_B_T` (detached) for the others."""
        current = current_B_T.detach()
        if self.proximal_logprobs_B_T is None or self.proximal_known_B is None:
            return current
        return torch.where(self.proximal_known_B.unsqueeze(-1), self.proximal_logprobs_B_T,
                           current)

    @property
    def trained_B_T(self) -> Tensor:
        """The tokens the loss may train on: real and not filtered out."""
        if self.filtered_B is None:
            return self.mask_B_T
        return self.mask_B_T & ~self.filtered_B.unsqueeze(-1)


@dataclass(frozen=True)
class LossOutput:
    """What a loss returns for one micro-batch."""

    # Scalar; normalised so that summing it over the step's micro-batches gives the batch loss.
    loss: Tensor
    # Summable contributions: each value is already this micro-batch's share of a batch mean, so
    # the learner SUMS them over micro-batches; keys ending in "_max" are maxima (take the max).
    metrics: dict[str, float]
    # Per token, for the run's records (DIR/rollouts/, the inspector); no gradient. The
    # importance weight the policy term applied after clipping or truncation (float32), and the
    # MASK_REASONS code of each token (int8; 0 on padding).
    importance_weight_B_T: Tensor | None = None
    mask_reason_B_T: Tensor | None = None


def masked(values_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """`values` on masked tokens, 0 elsewhere. `where`, not a multiply: padding may hold inf or
    nan (e.g. a -inf logprob), and nan * 0 is nan, which would poison the sum and the gradient."""
    return torch.where(mask_B_T, values_B_T, torch.zeros_like(values_B_T))


def aggregate(values_B_T: Tensor, keep_B_T: Tensor, inputs: LossInputs, aggregation: str) -> Tensor:
    """This micro-batch's share of the batch aggregate of `values_B_T` over the kept tokens.

    token_mean:    sum_{b,t} m_bt v_bt / total_tokens. Every token weighs the same (DAPO):
                   long completions are not down-weighted per token.
    sequence_mean: sum_b [sum_t m_bt v_bt / sum_t m_bt] / total_sequences. Each sequence weighs
                   the same (the original GRPO); a sequence with no kept token adds 0 but still
                   counts in total_sequences, so every micro-batch split gives the same sum.
    constant:      sum_{b,t} m_bt v_bt / (total_sequences * max_tokens). A fixed normaliser
                   (Dr.GRPO): neither the batch's token count nor a sequence's length scales a
                   token's weight, which removes GRPO's length bias.
    """
    kept_B_T = masked(values_B_T, keep_B_T)
    if aggregation == "token_mean":
        return kept_B_T.sum() / max(inputs.total_tokens, 1)
    if aggregation == "sequence_mean":
        tokens_B = keep_B_T.sum(-1).clamp(min=1).to(kept_B_T.dtype)
        return (kept_B_T.sum(-1) / tokens_B).sum() / max(inputs.total_sequences, 1)
    if aggregation == "constant":
        return kept_B_T.sum() / max(inputs.total_sequences * inputs.max_tokens, 1)
    raise ValueError(f"unknown aggregation {aggregation!r}")


def token_mean(values_B_T: Tensor, inputs: LossInputs) -> Tensor:
    """This micro-batch's share of the token mean over the step's trained tokens (metrics)."""
    return aggregate(values_B_T, inputs.trained_B_T, inputs, "token_mean")


def token_records(out: LossOutput, lengths: list[int]) -> list[dict[str, tuple]]:
    """Per sample of the micro-batch, the per-token fields of its `TrainedSample`
    (`importance_weights_T`, `masked_T`, `mask_reasons_T`), cut to its real length; empty dicts
    when the loss reports none. Python floats of float32 values: written to JSON exactly."""
    if out.importance_weight_B_T is None or out.mask_reason_B_T is None:
        return [{} for _ in lengths]
    weights = out.importance_weight_B_T.detach().float().cpu().tolist()
    codes = out.mask_reason_B_T.cpu().tolist()
    records = []
    for n, weight_row, code_row in zip(lengths, weights, codes):
        reasons = tuple(MASK_REASONS[c] for c in code_row[:n])
        records.append({"importance_weights_T": tuple(weight_row[:n]),
                        "masked_T": tuple(r in MASKING_REASONS for r in reasons),
                        "mask_reasons_T": reasons})
    return records
