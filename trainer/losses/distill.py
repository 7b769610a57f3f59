"""Distillation on the loss interface: the teacher's scores of the student's own tokens
(rollout/teachers.py) turned into a training signal, beside or instead of the task reward.

Notation: student p (the trainer, at the start of the step: pi_prox), teacher q, sampled
token y_t at the state the student visited.

    reverse_kl       (default; Thinking Machines' on-policy distillation, Lu 2025)
                     a_t = clamp(sg(log q(y_t) - log p(y_t)), +-clamp), a per-token advantage
                     mixed into the recipe's: A_t = reward_weight * A_task + coef * a_t, then the
                     recipe's objective, corrections and aggregation as for any advantage. Its
                     expectation under p is -KL(p || q) per token: the policy gradient of the
                     reverse KL, one teacher logprob per token.
    forward_kl_topk  KL(q || p) over the teacher's top k tokens plus one tail bucket holding the
                     rest of each distribution's mass (GKD, Agarwal et al. 2024), differentiated
                     through the student's logprobs of those tokens.
    jsd_topk         the generalised JSD over the same k + 1 buckets, named by direction:
                     reverse_share * KL(p || m) + (1 - reverse_share) * KL(q || m),
                     m = reverse_share * q + (1 - reverse_share) * p; reverse_share = 0 is
                     forward_kl_topk, 1 is the reverse KL, 0.5 the symmetric JSD.

The top-k terms are added to the loss as coef * aggregate(w_t * D_t), with w_t the recipe's
importance-correction weight (the tokens were drawn by the sampler, not by p) and D_t kept on
the tokens the corrections keep. The tail bucket is what makes teacher = student give zero
gradient as well as zero loss: without it the top-k mass alone is not normalised.

A sample no teacher scored (`Sample.teacher_error`) trains on its task advantage alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from slipstream.trainer.losses.base import LossInputs, aggregate, masked

_EPS = 1e-12      # floor of a tail bucket's mass (the top k may hold all of it)


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    coef: float = Field(0.0, ge=0, description=(
        "Weight of the teacher's term; 0: no distillation (a teacher needs > 0)."))
    objective: Literal["reverse_kl", "forward_kl_topk", "jsd_topk"] = Field(
        "reverse_kl", description=(
            "reverse_kl: sg(log q - log p) on the sampled token as an advantage (one teacher "
            "logprob per token). forward_kl_topk: KL(teacher || student) over the teacher's "
            "top-k (teacher.topk > 1) plus a tail bucket. jsd_topk: the generalised JSD over "
            "the same buckets (reverse_share)."))
    reward_weight: float = Field(1.0, ge=0, description=(
        "Weight of the task reward's advantage beside the teacher's (0: pure distillation)."))
    reverse_share: float = Field(0.5, ge=0, le=1, description=(
        "jsd_topk: 0 = forward KL(teacher || student), 1 = reverse KL(student || teacher), "
        "0.5 = symmetric JSD (named by direction: a bare 'beta' means opposite things across "
        "codebases)."))
    clamp: float = Field(10.0, gt=0, description=(
        "reverse_kl: each token's |log q - log p| is clamped to this (a teacher that rules a "
        "token out would otherwise give it an unbounded advantage)."))

    @property
    def enabled(self) -> bool:
        return self.coef > 0

    @property
    def needs_topk(self) -> bool:
        return self.enabled and self.objective != "reverse_kl"


def reverse_kl_advantage(student_B_T: Tensor, teacher_B_T: Tensor, known_B_T: Tensor,
                         clamp: float) -> Tensor:
    """sg(log q - log p), clamped, on tokens a teacher scored; 0 elsewhere."""
    gap = (teacher_B_T - student_B_T.detach()).clamp(-clamp, clamp)
    return torch.where(known_B_T, gap, torch.zeros_like(gap))


def _buckets(topk_logprobs_B_T_K: Tensor) -> Tensor:
    """Probabilities of the k tokens and of the tail (everything else): (B, T, K + 1)."""
    probs = topk_logprobs_B_T_K.exp()
    tail = (1.0 - probs.sum(-1, keepdim=True)).clamp(min=_EPS)
    return torch.cat([probs, tail], dim=-1)


def _kl(a_B_T_K: Tensor, b_B_T_K: Tensor) -> Tensor:
    """KL(a || b) over the last dim; a bucket where a is 0 adds 0 (not nan)."""
    terms = a_B_T_K * (a_B_T_K.clamp(min=_EPS).log() - b_B_T_K.clamp(min=_EPS).log())
    return torch.where(a_B_T_K > 0, terms, torch.zeros_like(terms)).sum(-1)


def topk_divergence(student_topk_B_T_K: Tensor, teacher_topk_B_T_K: Tensor,
                    reverse_share: float) -> Tensor:
    """Per token, the generalised JSD (module docstring) between student and teacher over the
    teacher's top k tokens and a tail bucket; gradient through the student's logprobs only."""
    p = _buckets(student_topk_B_T_K)
    q = _buckets(teacher_topk_B_T_K.detach())
    if reverse_share == 0.0:
        return _kl(q, p)
    if reverse_share == 1.0:
        return _kl(p, q)
    m = reverse_share * q + (1.0 - reverse_share) * p
    return reverse_share * _kl(p, m) + (1.0 - reverse_share) * _kl(q, m)


def distill_terms(inputs: LossInputs, cfg: DistillConfig, per_token: Callable[[Tensor], Tensor],
                  logp_B_T: Tensor, keep_B_T: Tensor, weight_B_T: Tensor | None,
                  aggregation: str) -> tuple[Tensor | None, dict[str, Tensor]]:
    """The teacher's loss term (top-k objectives; None for reverse_kl, whose signal is in the
    advantages) and the distillation metrics of one micro-batch. `per_token(A)` is the recipe's
    objective at advantages A with its correction weight applied (for loss/rl, loss/distill)."""
    known = inputs.teacher_known_B_T & inputs.trained_B_T
    student = logp_B_T.detach()
    total = inputs.total_teacher_tokens
    log_ratio = inputs.teacher_logprobs_B_T - student
    stats: dict[str, Tensor] = {}
    # A figure over no token is left out, not written as 0 (every sample's teacher failed; a
    # product of experts has no top-1). The totals are the whole step's, so every micro-batch
    # writes the same keys.
    if total:
        # k1 (Thinking Machines' teacher_kl; may dip below 0 on a batch) and k3 (>= 0)
        stats["kl/teacher"] = inputs.share_of(-log_ratio, known, total)
        stats["kl/teacher_k3"] = inputs.share_of(torch.expm1(log_ratio) - log_ratio, known, total)
        stats["distill/teacher_logprob"] = inputs.share_of(inputs.teacher_logprobs_B_T, known,
                                                           total)
    if inputs.teacher_top1_B_T is not None and inputs.student_argmax_B_T is not None \
            and inputs.total_top1_tokens:
        top1 = known & (inputs.teacher_top1_B_T >= 0)
        agree = (inputs.student_argmax_B_T == inputs.teacher_top1_B_T).float()
        stats["distill/agree_frac"] = inputs.share_of(agree, top1, inputs.total_top1_tokens)
    term = None
    rl_advantages = cfg.reward_weight * masked(inputs.advantages_B_T, inputs.mask_B_T)
    with torch.no_grad():
        stats["loss/rl"] = aggregate(per_token(rl_advantages), keep_B_T, inputs, aggregation)
    if cfg.objective == "reverse_kl":
        with torch.no_grad():
            teacher = cfg.coef * reverse_kl_advantage(student, inputs.teacher_logprobs_B_T,
                                                      known, cfg.clamp)
            stats["loss/distill"] = aggregate(per_token(teacher), keep_B_T, inputs, aggregation)
        return None, stats
    divergence = topk_divergence(inputs.student_topk_logprobs_B_T_K,
                                 inputs.teacher_topk_logprobs_B_T_K,
                                 cfg.reverse_share if cfg.objective == "jsd_topk" else 0.0)
    if weight_B_T is not None:
        divergence = divergence * weight_B_T.detach()
    term = cfg.coef * aggregate(divergence, keep_B_T & known, inputs, aggregation)
    stats["loss/distill"] = term.detach()
    with torch.no_grad():
        if not total:
            return term, stats
        stats["distill/teacher_mass"] = inputs.share_of(
            inputs.teacher_topk_logprobs_B_T_K.exp().sum(-1), known, total)
        stats["distill/student_mass"] = inputs.share_of(
            inputs.student_topk_logprobs_B_T_K.detach().exp().sum(-1), known, total)
    return term, stats


def mixed_advantages(inputs: LossInputs, cfg: DistillConfig, proximal_B_T: Tensor) -> Tensor:
    """The advantages the recipe's objective trains on: reward_weight * A_task, plus
    coef * the teacher's reverse-KL advantage for the reverse_kl objective."""
    advantages = cfg.reward_weight * masked(inputs.advantages_B_T, inputs.mask_B_T)
    if cfg.objective == "reverse_kl":
        known = inputs.teacher_known_B_T & inputs.mask_B_T
        advantages = advantages + cfg.coef * reverse_kl_advantage(
            proximal_B_T, inputs.teacher_logprobs_B_T, known, cfg.clamp)
    return advantages
