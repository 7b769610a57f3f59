"""M2PO (Zheng, Zhao, Chen 2025, arXiv 2510.01161): an unclipped importance-weighted surrogate
whose trust region is a bound on the second moment of the log ratio, enforced by masking tokens.

    r_t  = pi(y_t) / mu(y_t)                       the ratio to the behaviour policy
    m_t  = (log mu(y_t) - log pi(y_t))^2           its second moment per token
    M    = drop the largest m_t until mean over the kept tokens <= tau  (tau = 0.04)
    loss = -(1 / sum_i |o_i|) sum_{t in M} r_t A_t

PPO's clip masks the high-entropy "pivotal" tokens first once data is stale; bounding the mean
of m over the batch instead masks few tokens (the paper: 1.22% -> 0.06%) and stayed stable
with data at least 256 updates stale. The mask is taken per micro-batch (as AReaL does) on the
current policy. Advantages are GRPO's group-normalised ones.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import LossConfigBase, Objective, recipe_default


class M2POLossConfig(LossConfigBase):
    CORRECTION_DEFAULTS = {"m2_threshold": 0.04}

    kind: Literal["m2po"] = Field("m2po", description="Selects this loss.")
    objective: Objective = recipe_default("objective", "ratio")
