"""Policy objectives: the per-token loss of a sampled token given its ratio and advantage.

Notation: logp = the trainer's logprob (with gradient), anchor = the policy the ratio is taken
against (the sampler mu, or with a correction the trainer at the start of the step, pi_prox),
r = exp(logp - anchor), A = the token's advantage, sg = stop-gradient, eps_lo / eps_hi = the
recipe's clip_low / clip_high.

    ppo_clip   l_t = -min(r A, clip(r, 1 - eps_lo, 1 + eps_hi) A)
               (Schulman et al. 2017, PPO; clip-higher eps_hi > eps_lo from DAPO, Yu et al. 2025)
    gspo       s = exp(mean_t log r_t) over the sequence's tokens (length-normalised ratio),
               s_t = sg(s) * exp(logp_t - sg(logp_t))    (value s, gradient s * d logp_t)
               l_t = -min(s_t A, clip(s_t, 1 - eps_lo, 1 + eps_hi) A)
               With sequence_mean aggregation this is exactly GSPO's sequence objective and
               gradient (Zheng et al. 2025, arXiv 2507.18071): the clip acts on whole sequences.
    cispo      l_t = -sg(clip(r, 1 - eps_lo, 1 + eps_hi)) A logp_t
               REINFORCE with a clipped, stop-gradient importance weight: a token outside the
               band keeps its gradient, only its weight is bounded (MiniMax-M1, arXiv 2506.13585).

    ratio      l_t = -r A      the unclipped importance-weighted surrogate (gradient r A d logp);
               M2PO's objective, which bounds the off-policy update by masking tokens instead
               (corrections.py m2_threshold; Zheng et al. 2025, arXiv 2510.01161)
    topr       l_t = -w A_t logp_t,  w = 1 where A_t >= 0, else sg(min(1, prod_s r_s)) over the
               whole sequence (in log space): positive samples train as plain SFT-like
               REINFORCE, negative ones with their truncated sequence ratio, which bounds how
               hard a stale negative can push (Tapered Off-Policy REINFORCE, Le Roux et al.
               2025, arXiv 2503.14286)

Each returns (l_B_T, changed_B_T): the per-token loss and where the clip changed the token's
treatment. For ppo_clip and gspo the clipped branch of the min won, so the token gives no policy
gradient ("ppo_clip", masked); for cispo the weight was clipped but the token still trains
("cispo_clip"); for topr a negative sample's weight fell below 1 ("topr_truncated", still
trained); ratio never changes a token. Padding must be zeroed by the caller (`masked`), so
nothing sees -inf.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from slipstream.trainer.losses.base import masked
from slipstream.trainer.losses.config import LossConfigBase

ObjectiveFn = Callable[[Tensor, Tensor, Tensor, Tensor, LossConfigBase], tuple[Tensor, Tensor]]


def _clipped_surrogate(ratio: Tensor, advantages_B_T: Tensor,
                       cfg: LossConfigBase) -> tuple[Tensor, Tensor]:
    unclipped = ratio * advantages_B_T
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * advantages_B_T
    # Strictly smaller: where the two agree (ratio inside the band) nothing was clipped.
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).detach()


def ppo_clip(logp: Tensor, anchor: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor,
             cfg: LossConfigBase) -> tuple[Tensor, Tensor]:
    return _clipped_surrogate(torch.exp(logp - anchor), advantages_B_T, cfg)


def gspo(logp: Tensor, anchor: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor,
         cfg: LossConfigBase) -> tuple[Tensor, Tensor]:
    log_ratio = masked(logp - anchor, mask_B_T).detach()
    tokens_B = mask_B_T.sum(-1, keepdim=True).clamp(min=1)
    sequence_log_ratio_B = log_ratio.sum(-1, keepdim=True) / tokens_B
    ratio = torch.exp(sequence_log_ratio_B + logp - logp.detach())
    return _clipped_surrogate(ratio, advantages_B_T, cfg)


def cispo(logp: Tensor, anchor: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor,
          cfg: LossConfigBase) -> tuple[Tensor, Tensor]:
    ratio = torch.exp(logp - anchor).detach()
    weight = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    return -weight * advantages_B_T * logp, weight != ratio


def ratio(logp: Tensor, anchor: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor,
          cfg: LossConfigBase) -> tuple[Tensor, Tensor]:
    return -torch.exp(logp - anchor) * advantages_B_T, torch.zeros_like(mask_B_T)


def topr_weight(log_ratio_B_T: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """TOPR's per-token weight (no gradient): 1 on tokens of positive advantage, the sequence's
    ratio truncated at 1 on negative ones."""
    sequence_log_ratio_B = masked(log_ratio_B_T, mask_B_T).detach().sum(-1, keepdim=True)
    tapered = torch.exp(sequence_log_ratio_B.clamp(max=0.0)).expand_as(log_ratio_B_T)
    return torch.where(advantages_B_T < 0, tapered, torch.ones_like(log_ratio_B_T))


def topr(logp: Tensor, anchor: Tensor, advantages_B_T: Tensor, mask_B_T: Tensor,
         cfg: LossConfigBase) -> tuple[Tensor, Tensor]:
    weight = topr_weight(logp - anchor, advantages_B_T, mask_B_T)
    return -weight * advantages_B_T * logp, (advantages_B_T < 0) & (weight < 1) & mask_B_T


OBJECTIVES: dict[str, ObjectiveFn] = {"ppo_clip": ppo_clip, "gspo": gspo, "cispo": cispo,
                                      "ratio": ratio, "topr": topr}
