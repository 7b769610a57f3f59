"""TOPR, Tapered Off-Policy REINFORCE (Le Roux, Bellemare et al. 2025, arXiv 2503.14286).

    grad J = sum_{A_i >= 0} A_i grad log pi(o_i)
           + sum_{A_i < 0}  sg(min(1, pi(o_i) / mu(o_i))) A_i grad log pi(o_i)

Positive samples are trained on as they are (SFT-like, whatever their staleness); negative
ones with their sequence ratio truncated at 1 (in log space, so a long sequence cannot
overflow). Without the taper negatives are pushed towards -inf and generations break; with it
the objective stays bounded and needs no KL and no clip, which suits replayed buffers full of
negatives. A_i = R_i - group mean (the paper's REINFORCE baseline), summed over a sequence's
tokens (`constant` aggregation: each sequence's log-likelihood, divided by the batch's
sequences times the completion limit).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import (Aggregation, GroupAdvantage, LossConfigBase,
                                              Objective, recipe_default)


class TOPRLossConfig(LossConfigBase):
    kind: Literal["topr"] = Field("topr", description="Selects this loss.")
    objective: Objective = recipe_default("objective", "topr")
    advantage: GroupAdvantage = recipe_default("advantage", "group_center")
    aggregation: Aggregation = recipe_default("aggregation", "constant")
