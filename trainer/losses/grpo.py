"""GRPO: PPO-clip per token, with clip-higher, optional token-level truncated importance sampling
(TIS), an optional k3 KL to a reference model, and a choice of aggregation.

Notation: logp = trainer logprob (with grad), mu = sampler logprob, A = the sequence's
advantage, sg = stop-gradient, eps_lo / eps_hi = clip_low / clip_high.

Without TIS, PPO's "old" policy is the sampler:
    r = exp(logp - mu),   loss_t = -min(r A, clip(r, 1 - eps_lo, 1 + eps_hi) A).
The ratio then carries both the sampler/trainer numerical gap and staleness, and clipping acts
on both.

With TIS (decoupled PPO, as in asynchronous RL systems), the proximal policy is the trainer
itself at the start of the step, and the off-policy correction is a separate, truncated weight:
    r = exp(logp - sg(logp))   (value 1, gradient d logp),
    w = min(exp(sg(logp) - mu), tis_cap)   (no gradient),
    loss_t = -w min(r A, clip(r, 1 - eps_lo, 1 + eps_hi) A).
With one optimizer step per batch r stays 1, so the clip never binds and the gradient is
-w A d logp: the importance-weighted policy gradient, with the weight's variance bounded by the cap.

KL to the reference (ref logprob = lr), the k3 estimator: with x = lr - logp,
    k3 = exp(x) - x - 1 >= 0,   unbiased for KL(policy || ref) on tokens sampled from the policy,
added to the per-token loss as kl_coef * k3.

Aggregation is `masked_share` (base.py): token_mean over the batch's tokens or sequence_mean over
its sequences. Metrics that are token means (kl/ref, clip and importance fractions) always use
total_tokens, whatever the loss aggregation, so they read the same under either choice.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from slipstream.trainer.losses.base import (MASK_REASONS, LossInputs, LossOutput, masked,
                                            masked_share)


class GRPOLossConfig(BaseModel):
    """The GRPO loss and its knobs (module docstring has the formulas)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["grpo"] = Field("grpo", description="Selects this loss.")
    clip_low: float = Field(0.2, ge=0, lt=1, description=(
        "Lower PPO clip: the ratio is clipped at 1 - clip_low (below 1 so the bound stays > 0)."))
    clip_high: float = Field(0.2, ge=0, description=(
        "Upper PPO clip: the ratio is clipped at 1 + clip_high; above clip_low it is DAPO's "
        "clip-higher, which leaves room for low-probability tokens to grow."))
    tis: bool = Field(False, description=(
        "Token-level truncated importance sampling (decoupled PPO): clip against the trainer's "
        "own logprobs and weight each token by min(exp(logp - sampler_logp), tis_cap)."))
    tis_cap: float = Field(2.0, gt=0, description="Truncation of the TIS weight.")
    kl_coef: float = Field(0.0, ge=0, description=(
        "Weight of the k3 KL to the reference model; > 0 needs trainer.reference_model."))
    aggregation: Literal["token_mean", "sequence_mean"] = Field("token_mean", description=(
        "token_mean: every token of the batch weighs the same (DAPO, Dr.GRPO). sequence_mean: "
        "tokens are averaged within each sequence, then over sequences (original GRPO)."))


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || ref): exp(x) - x - 1 with x = ref - logp.

    Chosen over k1 = -x because it is never negative (each token's term is a valid penalty) and,
    unlike k2, stays unbiased; its gradient pulls logp toward ref."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def _surrogate(logp: Tensor, sampler: Tensor, advantages_B: Tensor,
               cfg: GRPOLossConfig) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-token policy loss -w min(r A, clip(r) A), whether the clipped branch won, and the
    untruncated TIS weight (None without TIS). See the module docstring for r and w."""
    advantages_B_1 = advantages_B.unsqueeze(-1)
    if cfg.tis:
        proximal = logp.detach()
        ratio = torch.exp(logp - proximal)
        raw_weight = torch.exp(proximal - sampler)
        weight: Tensor | float = raw_weight.clamp(max=cfg.tis_cap)
    else:
        ratio = torch.exp(logp - sampler)
        raw_weight, weight = None, 1.0
    unclipped = ratio * advantages_B_1
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * advantages_B_1
    loss_B_T = -torch.minimum(unclipped, clipped) * weight
    # Strictly smaller: where the two agree (ratio inside the band) nothing was clipped.
    clip_active = (clipped < unclipped).detach()
    return loss_B_T, clip_active, raw_weight


def grpo_loss(inputs: LossInputs, cfg: GRPOLossConfig) -> LossOutput:
    """The GRPO loss of one micro-batch, as this micro-batch's share of the step's batch loss:
    loss = share(policy loss_t) + kl_coef * share(k3_t), share = cfg.aggregation over the batch.
    """
    if cfg.kl_coef > 0 and inputs.ref_logprobs_B_T is None:
        raise ValueError("grpo loss: kl_coef > 0 needs reference logprobs "
                         "(set trainer.reference_model=true)")
    mask = inputs.mask_B_T
    # Padding is zeroed up front so nothing below sees a -inf/nan there, in value or gradient.
    logp = masked(inputs.logprobs_B_T, mask)
    sampler = masked(inputs.sampler_logprobs_B_T, mask)
    policy_B_T, clip_active, raw_weight = _surrogate(logp, sampler, inputs.advantages_B, cfg)
    policy = masked_share(policy_B_T, inputs, cfg.aggregation)
    loss = policy

    # Metric tensors are gathered and read back in one transfer (one device sync, not six).
    stats: dict[str, Tensor] = {"loss/policy": policy.detach()}
    with torch.no_grad():
        importance = torch.exp(logp - sampler)
        stats["loss/clip_frac"] = masked_share(clip_active.float(), inputs, "token_mean")
        stats["mismatch/importance_weight_mean"] = masked_share(importance, inputs, "token_mean")
        # Weights are > 0, so 0 on padding (and for an all-padding micro-batch) never wins the max.
        stats["mismatch/importance_weight_max"] = masked(importance, mask).max()
        if raw_weight is not None:
            truncated = (raw_weight > cfg.tis_cap).float()
            stats["mismatch/tis_truncated_frac"] = masked_share(truncated, inputs, "token_mean")
    if inputs.ref_logprobs_B_T is not None:
        k3_B_T = k3_kl(logp, masked(inputs.ref_logprobs_B_T, mask))
        kl_term = cfg.kl_coef * masked_share(k3_B_T, inputs, cfg.aggregation)
        if cfg.kl_coef > 0:  # no graph for a term that is identically zero
            loss = loss + kl_term
        stats["loss/kl"] = kl_term.detach()
        stats["kl/ref"] = masked_share(k3_B_T.detach(), inputs, "token_mean")
    values = torch.stack([v.float() for v in stats.values()]).tolist()
    weight_B_T, reason_B_T = _token_record(importance, clip_active, raw_weight, mask, cfg)
    return LossOutput(loss=loss, metrics=dict(zip(stats, values)),
                      importance_weight_B_T=weight_B_T, mask_reason_B_T=reason_B_T)


def _token_record(ratio: Tensor, clip_active: Tensor, raw_weight: Tensor | None, mask: Tensor,
                  cfg: GRPOLossConfig) -> tuple[Tensor, Tensor]:
    """Per token, the importance weight the policy term really applied and why it differs from
    the plain ratio (MASK_REASONS codes).

    Without TIS the weight is the ratio to the sampler, replaced by its clipped value where the
    clipped branch won ("ppo_clip": that branch is a constant, so the token gave no gradient).
    With TIS it is the truncated weight w ("tis_truncated" where the cap bound); the clip acts on
    r = 1 and never binds after one optimizer step, but is reported the same way if it does."""
    with torch.no_grad():
        reason = torch.zeros(mask.shape, dtype=torch.int8, device=mask.device)
        if raw_weight is not None:
            weight = raw_weight.clamp(max=cfg.tis_cap)
            reason[raw_weight > cfg.tis_cap] = MASK_REASONS.index("tis_truncated")
        else:
            weight = torch.where(clip_active,
                                 ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high), ratio)
        reason[clip_active] = MASK_REASONS.index("ppo_clip")
        reason[~mask] = 0
        return masked(weight.float(), mask), reason
