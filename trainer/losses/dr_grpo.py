"""Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783): GRPO
without its two biases.

    A_i  = R_i - mean_g R              no division by the group's std, which up-weights prompts
                                       the policy nearly always solves or fails (small std)
    loss = sum_{i,t} l_t / (N x L)     a constant normaliser, N = sequences in the batch, L =
                                       rollout.max_new_tokens: no per-sequence 1/|o_i|, which
                                       shrinks the gradient of long wrong answers and so rewards
                                       length
with l_t GRPO's PPO-clip term.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import (Aggregation, GroupAdvantage, LossConfigBase,
                                              recipe_default)


class DrGRPOLossConfig(LossConfigBase):
    kind: Literal["dr_grpo"] = Field("dr_grpo", description="Selects this loss.")
    advantage: GroupAdvantage = recipe_default("advantage", "group_center")
    aggregation: Aggregation = recipe_default("aggregation", "constant")
