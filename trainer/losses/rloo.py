"""RLOO (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et al.
2024, "Back to Basics", arXiv 2402.14740): the leave-one-out baseline.

    A_i = R_i - (1 / (G - 1)) sum_{j != i} R_j  =  G / (G - 1) (R_i - mean_g R)

Each sample's baseline is the mean of its siblings, independent of the sample itself, so the
policy gradient stays unbiased (the group mean includes R_i and biases it by a factor
(G - 1) / G). No std normalisation. Here with PPO-clip on the ratio to the sampler and the token
mean, as TRL's RLOO trainer does; plain REINFORCE is the limit of one optimizer step per batch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import GroupAdvantage, LossConfigBase, recipe_default


class RLOOLossConfig(LossConfigBase):
    kind: Literal["rloo"] = Field("rloo", description="Selects this loss.")
    advantage: GroupAdvantage = recipe_default("advantage", "leave_one_out")
