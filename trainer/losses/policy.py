"""One micro-batch's loss from a recipe's pieces:

    rho-corrections -> anchor -> objective per token -> x weight, masks -> aggregation
                    + KL in the loss (optional) + value loss (ppo) + a teacher's term (distill.py)

    loss = agg_keep(w_t * l_t) + kl.coef * agg_trained(KL_t) + value_coef * agg_trained(Lv_t)

where l_t is the objective (objectives.py) with its ratio taken against the sampler mu, or, when
any correction is on, against pi_prox (decoupled PPO, Fu et al. 2025, AReaL): the trust region
is then the trainer's, and the sampler/trainer gap rho = pi_prox / mu is handled by the
corrections (corrections.py) as a weight w_t and a keep mask. pi_prox is the policy that last
trained on the sample: for a fresh sample the trainer at the start of this step (with one
optimizer step per batch pi_prox = sg(pi), so r = 1, the clip never binds and the gradient is
-w_t A_t d log pi: the corrected policy gradient); for a replayed one the logprobs stored when
it last trained (`LossInputs.proximal`), so the clip bounds how far each pass moves it. M2PO's
mask (corrections.py `m2_mask`) then drops tokens from "keep", whatever the anchor. "keep" is
the trained tokens minus those a correction masked; "trained" is the real tokens minus those a
recipe filters (DAPO's overlong filter).

Metrics that are token means (clip and importance fractions, kl/ref) are always over the
trained tokens, whatever the loss aggregation, so they read the same under every recipe.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slipstream.trainer.losses.base import (MASK_PRIORITY, MASK_REASONS, LossInputs, LossOutput,
                                            aggregate, masked, token_mean)
from slipstream.trainer.losses.config import LossConfigBase
from slipstream.trainer.losses.corrections import Correction, correct, m2_mask
from slipstream.trainer.losses.distill import distill_terms, mixed_advantages
from slipstream.trainer.losses.kl import kl_estimate
from slipstream.trainer.losses.objectives import OBJECTIVES, topr_weight


def policy_loss(inputs: LossInputs, cfg: LossConfigBase) -> LossOutput:
    """The loss of one micro-batch, as its share of the step's batch loss."""
    if cfg.kl.coef > 0 and inputs.ref_logprobs_B_T is None:
        raise ValueError("trainer.loss.kl.coef > 0 needs reference logprobs "
                         "(set trainer.reference_model=true)")
    real, trained = inputs.mask_B_T, inputs.trained_B_T
    # Padding is zeroed up front so nothing below sees a -inf/nan there, in value or gradient.
    logp = masked(inputs.logprobs_B_T, real)
    sampler = masked(inputs.sampler_logprobs_B_T, real)
    advantages = masked(inputs.advantages_B_T, real)
    proximal = masked(inputs.proximal(logp), real)
    if cfg.distill.enabled:
        if inputs.teacher_logprobs_B_T is None or inputs.teacher_known_B_T is None:
            raise ValueError("trainer.loss.distill.coef > 0 needs teacher scores "
                             "(--teacher.kind model|self|ensemble|debate)")
        advantages = mixed_advantages(inputs, cfg.distill, proximal)
    fix = correct(proximal, sampler, real, cfg.correction) if cfg.correction.active else None
    anchor = proximal if fix is not None else sampler
    per_token, changed = OBJECTIVES[cfg.objective](logp, anchor, advantages, real, cfg)
    keep = trained if fix is None else trained & fix.keep_B_T
    m2_dropped = None
    if cfg.correction.m2_threshold is not None:
        m2_dropped = m2_mask(logp, sampler, keep, cfg.correction.m2_threshold)
        keep = keep & ~m2_dropped
    if fix is not None:
        per_token = per_token * fix.weight_B_T
    policy = aggregate(per_token, keep, inputs, cfg.aggregation)
    loss = policy
    stats: dict[str, Tensor] = {"loss/policy": policy.detach()}
    if cfg.distill.enabled:
        weight = None if fix is None else fix.weight_B_T

        def objective_at(advantages_B_T: Tensor) -> Tensor:
            values, _ = OBJECTIVES[cfg.objective](logp.detach(), anchor, advantages_B_T, real,
                                                  cfg)
            return values if weight is None else values * weight

        term, distill_stats = distill_terms(inputs, cfg.distill, objective_at, logp, keep,
                                            weight, cfg.aggregation)
        loss = loss if term is None else loss + term
        stats |= distill_stats
    with torch.no_grad():
        importance = torch.exp(logp - sampler)
        stats["loss/clip_frac"] = token_mean(changed.float(), inputs)
        stats["mismatch/importance_weight_mean"] = token_mean(importance, inputs)
        # Weights are > 0, so 0 elsewhere (and for an empty micro-batch) never wins the max.
        stats["mismatch/importance_weight_max"] = masked(importance, trained).max()
        if fix is not None:
            stats |= _correction_stats(fix, inputs, cfg)
        if m2_dropped is not None:
            stats["mismatch/m2"] = token_mean((sampler - logp.detach()) ** 2, inputs)
            stats["mismatch/m2po_masked_frac"] = token_mean(m2_dropped.float(), inputs)
    if inputs.ref_logprobs_B_T is not None:
        ref = masked(inputs.ref_logprobs_B_T, real)
        if cfg.kl.placement == "loss" and cfg.kl.coef > 0:  # no graph for a zero term
            kl_term = cfg.kl.coef * aggregate(kl_estimate(logp, ref, cfg.kl.estimator), trained,
                                              inputs, cfg.aggregation)
            loss = loss + kl_term
            stats["loss/kl"] = kl_term.detach()
        stats["kl/ref"] = token_mean(kl_estimate(logp.detach(), ref, "k3"), inputs)
    if inputs.values_B_T is not None:
        from slipstream.trainer.losses.ppo import value_loss  # ppo's critic, only when present

        value_term, value_stats = value_loss(inputs, cfg)
        loss = loss + value_term
        stats |= value_stats
    values = torch.stack([v.float() for v in stats.values()]).tolist()
    weight_B_T, reason_B_T = _token_record(logp - anchor, changed, fix, m2_dropped, inputs, cfg)
    return LossOutput(loss=loss, metrics=dict(zip(stats, values)),
                      importance_weight_B_T=weight_B_T, mask_reason_B_T=reason_B_T)


def _correction_stats(fix: Correction, inputs: LossInputs,
                      cfg: LossConfigBase) -> dict[str, Tensor]:
    c = cfg.correction
    stats: dict[str, Tensor] = {}
    if c.tis != "off":
        stats["mismatch/tis_truncated_frac"] = token_mean(fix.truncated_B_T.float(), inputs)
    if c.mis != "off":
        stats["mismatch/mis_masked_frac"] = token_mean(
            (fix.mis_token_B_T | fix.mis_sequence_B_T).float(), inputs)
    if c.icepop:
        stats["mismatch/icepop_masked_frac"] = token_mean(fix.icepop_B_T.float(), inputs)
    if c.mis != "off" or c.icepop:
        stats["mismatch/masked_frac"] = token_mean((~fix.keep_B_T).float(), inputs)
    return stats


_CHANGE_REASON = {"ppo_clip": "ppo_clip", "gspo": "ppo_clip", "cispo": "cispo_clip",
                  "topr": "topr_truncated", "ratio": ""}


def _objective_weight(log_ratio: Tensor, changed: Tensor, inputs: LossInputs,
                      cfg: LossConfigBase) -> Tensor:
    """The weight the objective put on each token's gradient, against its anchor."""
    mask = inputs.mask_B_T
    if cfg.objective == "topr":
        return topr_weight(log_ratio, inputs.advantages_B_T, mask)
    if cfg.objective == "gspo":
        tokens_B = mask.sum(-1, keepdim=True).clamp(min=1)
        log_ratio = (log_ratio.sum(-1, keepdim=True) / tokens_B).expand_as(log_ratio)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    return torch.where(changed, clipped, ratio)


def _token_record(log_ratio: Tensor, changed: Tensor, fix: Correction | None,
                  m2_dropped: Tensor | None, inputs: LossInputs,
                  cfg: LossConfigBase) -> tuple[Tensor, Tensor]:
    """Per token, the importance weight the policy term applied and why it differs from the
    plain ratio (MASK_REASONS codes; the most drastic reason wins, MASK_PRIORITY).

    Without corrections the weight is the objective's ratio to the sampler (for gspo the
    sequence's), replaced by its clipped value where the clip acted (for topr: 1 on positive
    samples, the truncated sequence ratio on negative ones). With corrections it is the
    correction's weight times the objective's ratio to pi_prox (1 after one optimizer step,
    unless the sample is replayed: then pi_prox is the policy that last trained on it)."""
    with torch.no_grad():
        log_ratio = masked(log_ratio.detach(), inputs.mask_B_T)
        weight = _objective_weight(log_ratio, changed, inputs, cfg)
        flags = {}
        if _CHANGE_REASON[cfg.objective]:
            flags[_CHANGE_REASON[cfg.objective]] = changed
        if m2_dropped is not None:
            flags["m2po"] = m2_dropped
        if fix is not None:
            weight = weight * fix.weight_B_T
            flags |= {"tis_truncated": fix.truncated_B_T, "mis": fix.mis_token_B_T,
                      "mis_sequence": fix.mis_sequence_B_T, "icepop": fix.icepop_B_T}
        if inputs.filtered_B is not None:
            flags["overlong"] = inputs.filtered_B.unsqueeze(-1).expand_as(changed)
        reason = torch.zeros(changed.shape, dtype=torch.int8, device=changed.device)
        for name in MASK_PRIORITY:          # later entries overwrite: the most drastic wins
            if name in flags:
                reason[flags[name]] = MASK_REASONS.index(name)
        reason[~inputs.mask_B_T] = 0
        return masked(weight.float(), inputs.mask_B_T), reason
