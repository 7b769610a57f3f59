"""GSPO (Zheng et al. 2025, Group Sequence Policy Optimization, arXiv 2507.18071): the ratio and
its clip are per sequence, not per token.

    s_i  = exp( (1/|o_i|) sum_t log(pi(o_t) / mu(o_t)) )      length-normalised sequence ratio
    J    = (1/N) sum_i min(s_i A_i, clip(s_i, 1 - eps_lo, 1 + eps_hi) A_i)

with GRPO's group-normalised A_i. Token-level ratios are noisy and a single clipped token
discards its gradient while its neighbours train; the sequence ratio treats an answer as one
action, which is what the reward scores. The clip range is tiny because s_i is a geometric mean:
the paper's 3e-4 / 4e-4. Implemented per token as s_t = sg(s_i) pi_t / sg(pi_t) (objectives.py)
with the sequence-mean aggregation, which gives exactly the objective above and its gradient.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import (Aggregation, LossConfigBase, Objective,
                                              recipe_default)


class GSPOLossConfig(LossConfigBase):
    kind: Literal["gspo"] = Field("gspo", description="Selects this loss.")
    objective: Objective = recipe_default("objective", "gspo")
    aggregation: Aggregation = recipe_default("aggregation", "sequence_mean")
    clip_low: float = recipe_default("clip_low", 3e-4)
    clip_high: float = recipe_default("clip_high", 4e-4)
