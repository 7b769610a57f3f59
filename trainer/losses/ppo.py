"""PPO with a learned value head (Schulman et al. 2017; for language models Ouyang et al. 2022):
the critic machinery of slipstream, which the off-policy learners reuse.

    V_t      = value_head(h_t), h_t the policy's last hidden state where it predicts token t
    delta_t  = rw_t + gamma V_{t+1} - V_t        rw_t: the reward on the last token, minus a
                                                 per-token KL penalty if placed in the reward
    A_t      = sum_k (gamma lam)^k delta_{t+k}   GAE (Schulman et al. 2016), whitened over the batch
    R_t      = A_t + V_t                         the value target (trainer/advantages.py, gae)
    l_t      = -min(r_t A_t, clip(r_t, 1 - eps_lo, 1 + eps_hi) A_t)          the policy term
    Lv_t     = 1/2 max((V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -c, c) - R_t)^2)
    loss     = agg(l_t) + value_coef * agg(Lv_t)

V_old are the values at the start of the step (a no-grad pass over the batch before training,
which also gives the GAE advantages): with one optimizer step per batch V = V_old at the start, so
the value clip c only binds when a batch is trained on more than once (off-policy reuse). The
value head is a linear layer on the policy's final hidden state, trained with it (one backbone,
as in most LLM PPO implementations that share it); it is saved inside the policy's folder as
`value_head/value_head.safetensors` and is not sent to the rollout workers.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from slipstream.trainer.losses.base import LossInputs, aggregate, masked, token_mean
from slipstream.trainer.losses.config import LossConfigBase


class PPOLossConfig(LossConfigBase):
    kind: Literal["ppo"] = Field("ppo", description="Selects this loss.")
    advantage: Literal["gae"] = Field("gae", description=(
        "gae: generalised advantage estimation with the learned value head."))
    gamma: float = Field(1.0, ge=0, le=1, description="Discount per token (GAE).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda: bias (0) to variance (1).")
    whiten_advantages: bool = Field(True, description=(
        "Normalise the GAE advantages over the batch's trained tokens (mean 0, std 1)."))
    value_coef: float = Field(0.5, gt=0, description="Weight of the value loss.")
    value_clip: float = Field(0.2, gt=0, description=(
        "c: the value prediction may move at most this far from V_old in the clipped term."))

    @property
    def needs_values(self) -> bool:
        return True


def value_loss(inputs: LossInputs, cfg: LossConfigBase) -> tuple[Tensor, dict[str, Tensor]]:
    """value_coef * agg(Lv_t) and its metrics (the module docstring's Lv)."""
    if not isinstance(cfg, PPOLossConfig):
        raise ValueError(f"loss kind {cfg.kind!r} got value predictions; only ppo trains a critic")
    if inputs.old_values_B_T is None or inputs.returns_B_T is None:
        raise ValueError("ppo value loss needs old_values_B_T and returns_B_T")
    trained = inputs.trained_B_T
    values = masked(inputs.values_B_T.float(), inputs.mask_B_T)
    old = masked(inputs.old_values_B_T.float(), inputs.mask_B_T)
    returns = masked(inputs.returns_B_T.float(), inputs.mask_B_T)
    clipped_values = old + (values - old).clamp(-cfg.value_clip, cfg.value_clip)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    per_token = 0.5 * torch.maximum(unclipped_loss, clipped_loss)
    value_term = aggregate(per_token, trained, inputs, cfg.aggregation)
    with torch.no_grad():
        stats = {"loss/value": value_term.detach(),
                 "value/clip_frac": token_mean((clipped_loss > unclipped_loss).float(), inputs),
                 "value/mean": token_mean(values.detach(), inputs),
                 "value/return_mean": token_mean(returns, inputs)}
    return cfg.value_coef * value_term, stats
