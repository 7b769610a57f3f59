"""Corrections for the sampler/trainer gap, composable with every objective.

rho_t = pi_prox(y_t) / mu(y_t): the trainer at the start of the step (its logprobs, detached)
against the sampler that drew the token (vLLM's logprob). In an asynchronous run rho carries both
numerical mismatch and staleness. Each correction turns rho into a per-token weight w_t (no
gradient) and a keep mask; the objective's per-token loss is multiplied by w_t and masked.

    token TIS       w_t = min(rho_t, C)                               (Yao et al., "Your
                                                                       efficient RL framework
                                                                       secretly brings you
                                                                       off-policy RL", 2025)
    sequence TIS    w_t = min(prod_s rho_s, C) for every t of the sequence
    geometric TIS   w_t = min(exp(mean_s log rho_s), C)
    token MIS       keep_t = [low <= rho_t <= high]                   (masked importance
    sequence MIS    keep_t = [low <= prod_s rho_s <= high]             sampling; verl's
    geometric MIS   keep_t = [low <= exp(mean_s log rho_s) <= high]    rollout_corr)
    IcePop          keep_t = [1/beta <= rho_t <= beta]                (Ring-1T / IcePop, 2025)

M2PO's second-moment mask (Zheng et al. 2025, arXiv 2510.01161) is separate from the rho
corrections: it works on the current policy, m_t = (log mu(y_t) - log pi(y_t))^2, drops the tokens
with the largest m_t until the mean over the kept ones is at most tau, and leaves the objective's
ratio untouched (`m2_mask`). Like AReaL's it is taken over one micro-batch.

Sequence products are taken in log space (a sum of log rho) and compared there, so a long
sequence cannot overflow. Masked tokens give no gradient and are recorded with their reason;
a truncated TIS weight still trains ("tis_truncated").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from slipstream.trainer.losses.base import masked
from slipstream.trainer.losses.config import CorrectionConfig, Level


@dataclass(frozen=True)
class Correction:
    """What the corrections decided for one micro-batch (no gradient anywhere)."""

    weight_B_T: Tensor          # multiplies each token's objective loss (1 where no TIS)
    keep_B_T: Tensor            # bool: False where a mask dropped the token
    truncated_B_T: Tensor       # bool: the TIS weight hit its cap
    mis_token_B_T: Tensor       # bool: dropped by a token-level MIS band
    mis_sequence_B_T: Tensor    # bool: dropped with its whole sequence (sequence/geometric MIS)
    icepop_B_T: Tensor          # bool: dropped by IcePop


def _level_log_ratio(log_rho_B_T: Tensor, mask_B_T: Tensor, level: Level) -> Tensor:
    """log rho at the requested level, broadcast to (B, T): the token's own, the sequence's sum
    (log of the product) or the sequence's mean (log of the geometric mean)."""
    if level == "token":
        return log_rho_B_T
    kept = masked(log_rho_B_T, mask_B_T)
    total_B = kept.sum(-1, keepdim=True)
    if level == "sequence":
        return total_B.expand_as(log_rho_B_T)
    if level == "geometric":
        count_B = mask_B_T.sum(-1, keepdim=True).clamp(min=1)
        return (total_B / count_B).expand_as(log_rho_B_T)
    raise ValueError(f"unknown correction level {level!r}")


def correct(proximal_B_T: Tensor, sampler_B_T: Tensor, mask_B_T: Tensor,
            cfg: CorrectionConfig) -> Correction:
    """Weights and masks for one micro-batch; `mask_B_T` marks the real tokens."""
    with torch.no_grad():
        log_rho = masked(proximal_B_T.detach() - sampler_B_T, mask_B_T)
        none = torch.zeros_like(mask_B_T)
        mis_token, mis_sequence, icepop = none, none, none
        if cfg.mis != "off":
            level_log = _level_log_ratio(log_rho, mask_B_T, cfg.mis)
            outside = (level_log < math.log(cfg.mis_low)) | (level_log > math.log(cfg.mis_high))
            outside &= mask_B_T
            mis_token, mis_sequence = (outside, none) if cfg.mis == "token" else (none, outside)
        if cfg.icepop:
            bound = math.log(cfg.icepop_beta)
            icepop = mask_B_T & ((log_rho < -bound) | (log_rho > bound))
        weight = torch.ones_like(log_rho)
        truncated = none
        if cfg.tis != "off":
            level_log = _level_log_ratio(log_rho, mask_B_T, cfg.tis)
            cap = math.log(cfg.tis_cap)
            truncated = mask_B_T & (level_log > cap)
            weight = torch.exp(level_log.clamp(max=cap))
        keep = mask_B_T & ~(mis_token | mis_sequence | icepop)
        return Correction(masked(weight, mask_B_T), keep, truncated, mis_token, mis_sequence,
                          icepop)


def m2_mask(current_B_T: Tensor, sampler_B_T: Tensor, keep_B_T: Tensor,
            threshold: float) -> Tensor:
    """bool (B, T): the tokens of `keep_B_T` M2PO drops, the largest (log mu - log pi)^2 first,
    until the mean over the tokens left is at most `threshold`."""
    with torch.no_grad():
        second_moment = (sampler_B_T - current_B_T.detach()).double() ** 2
        values = second_moment[keep_B_T]
        if values.numel() == 0:
            return torch.zeros_like(keep_B_T)
        ascending, order = torch.sort(values, stable=True)
        counts = torch.arange(1, values.numel() + 1, dtype=ascending.dtype)
        # Means of the k smallest never decrease with k: keep the longest prefix within tau.
        kept = int((ascending.cumsum(0) / counts <= threshold).sum())
        dropped = torch.ones(values.numel(), dtype=torch.bool)
        dropped[order[:kept]] = False
        mask = torch.zeros_like(keep_B_T)
        mask[keep_B_T] = dropped
        return mask
