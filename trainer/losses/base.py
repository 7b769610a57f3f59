"""The typed inputs and outputs every loss shares, and the one normalisation they all use.

Shapes are in the names: B sequences, T completion positions (right-padded; `mask_B_T` marks the
real tokens). A step's batch is split into micro-batches; every loss normalises by the *whole*
batch (`total_tokens`, `total_sequences`), never by the micro-batch, so summing micro-batch losses
gives the batch loss and gradient accumulation needs no rescaling. Metrics follow the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["token_mean", "sequence_mean"]

# Why a token's policy gradient was changed, by code (the index into this tuple) in
# `LossOutput.mask_reason_B_T`: "" trained as is; "ppo_clip" the clipped branch of PPO's min won,
# so the token gave no policy gradient (masked); "tis_truncated" its truncated-importance weight
# was capped at tis_cap (still trained, with the capped weight; not masked).
MASK_REASONS: tuple[str, ...] = ("", "ppo_clip", "tis_truncated")
MASKING_REASONS = frozenset({"ppo_clip"})   # the reasons that leave a token without gradient


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch. B = sequences, T = completion positions (right-padded)."""

    logprobs_B_T: Tensor             # trainer logprobs of the sampled tokens, float32, with grad
    sampler_logprobs_B_T: Tensor     # the sampler's (vLLM's) logprobs of the same tokens, float32
    advantages_B: Tensor             # one advantage per sequence, float32
    mask_B_T: Tensor                 # bool: True on completion tokens that count
    ref_logprobs_B_T: Tensor | None  # reference-model logprobs, when a reference is configured
    total_tokens: int                # masked tokens in the WHOLE step batch (all micro-batches)
    total_sequences: int             # sequences in the whole step batch

    def __post_init__(self) -> None:
        # A (B,) vs (B, 1) slip broadcasts silently into a (B, B) loss; fail loudly instead.
        shape = tuple(self.logprobs_B_T.shape)
        if len(shape) != 2:
            raise ValueError(f"logprobs_B_T must be 2-D (B, T), got {shape}")
        others = {"sampler_logprobs_B_T": self.sampler_logprobs_B_T, "mask_B_T": self.mask_B_T}
        if self.ref_logprobs_B_T is not None:
            others["ref_logprobs_B_T"] = self.ref_logprobs_B_T
        for name, tensor in others.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        if self.mask_B_T.dtype != torch.bool:
            raise ValueError(f"mask_B_T must be bool, got {self.mask_B_T.dtype}")
        if tuple(self.advantages_B.shape) != shape[:1]:
            raise ValueError(f"advantages_B has shape {tuple(self.advantages_B.shape)}, "
                             f"expected {shape[:1]}")


@dataclass(frozen=True)
class LossOutput:
    """What a loss returns for one micro-batch."""

    # Scalar; normalised so that summing it over the step's micro-batches gives the batch loss.
    loss: Tensor
    # Summable contributions: each value is already this micro-batch's share of a batch mean, so
    # the learner SUMS them over micro-batches; keys ending in "_max" are maxima (take the max).
    metrics: dict[str, float]
    # Per token, for the run's records (DIR/rollouts/, the inspector); None when a loss does not
    # report them. No gradient. The importance weight the policy term applied after clipping or
    # truncation (float32), and the MASK_REASONS code of each token (int8; 0 on padding).
    importance_weight_B_T: Tensor | None = None
    mask_reason_B_T: Tensor | None = None


def masked(values_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """`values` on masked tokens, 0 on padding. `where`, not a multiply: padding may hold inf or
    nan (e.g. a -inf logprob), and nan * 0 is nan, which would poison the sum and the gradient."""
    return torch.where(mask_B_T, values_B_T, torch.zeros_like(values_B_T))


def masked_share(values_B_T: Tensor, inputs: LossInputs, aggregation: Aggregation) -> Tensor:
    """This micro-batch's share of the batch mean of `values_B_T` over masked tokens.

    token_mean:    sum_{b,t} m_bt v_bt / total_tokens. Every token weighs the same (DAPO,
                   Dr.GRPO): long completions are not down-weighted per token.
    sequence_mean: sum_b [sum_t m_bt v_bt / sum_t m_bt] / total_sequences. Each sequence weighs
                   the same (the original GRPO); a sequence with no masked token adds 0 but still
                   counts in total_sequences, so every micro-batch split gives the same sum.
    """
    kept_B_T = masked(values_B_T, inputs.mask_B_T)
    if aggregation == "token_mean":
        return kept_B_T.sum() / max(inputs.total_tokens, 1)
    if aggregation == "sequence_mean":
        tokens_B = inputs.mask_B_T.sum(-1).clamp(min=1).to(kept_B_T.dtype)
        return (kept_B_T.sum(-1) / tokens_B).sum() / max(inputs.total_sequences, 1)
    raise ValueError(f"unknown aggregation {aggregation!r}")


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
