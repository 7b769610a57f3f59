"""CISPO (MiniMax-M1, arXiv 2506.13585): REINFORCE with a clipped, stop-gradient importance
weight.

    w_t  = sg(clip(r_t, 1 - eps_lo, 1 + eps_hi)),   r_t = pi(o_t) / mu(o_t)
    loss = -(1 / sum_i |o_i|) sum_{i,t} w_t A_i log pi(o_t)

PPO's min zeroes the gradient of a token whose ratio left the band; those are often the rare,
pivotal "fork" tokens. CISPO bounds the weight instead, so every token keeps its gradient. The
lower bound is off by default (eps_lo = 1: weights only capped above, as verl's clip_ratio_low=10
and the paper do) and the cap is 5 (eps_hi = 4, the ScaleRL / NeMo RL recipe's ratio_clip_max).
A_i is GRPO's group-normalised advantage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import LossConfigBase, Objective, recipe_default


class CISPOLossConfig(LossConfigBase):
    kind: Literal["cispo"] = Field("cispo", description="Selects this loss.")
    objective: Objective = recipe_default("objective", "cispo")
    clip_low: float = recipe_default("clip_low", 1.0)
    clip_high: float = recipe_default("clip_high", 4.0)
