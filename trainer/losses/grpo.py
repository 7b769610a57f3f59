"""GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300): group-normalised advantages and
PPO-clip per token, with the sampler as PPO's old policy.

    A_i  = (R_i - mean_g R) / (std_g R + eps)                    (trainer/advantages.py)
    r_t  = exp(logp_t - mu_t)
    l_t  = -min(r_t A_i, clip(r_t, 1 - eps_lo, 1 + eps_hi) A_i)  (objectives.py, ppo_clip)
    loss = token_mean(l_t)                                        (base.py, aggregate)

The paper averages tokens within a sequence, then sequences (`--trainer.loss.aggregation
sequence_mean`); the token mean is the default here, as in DAPO and most frameworks since,
because the sequence mean lets a long completion's tokens count less. Corrections and KL compose
(`--trainer.loss.correction.tis token` is decoupled PPO with truncated importance weights).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import LossConfigBase


class GRPOLossConfig(LossConfigBase):
    """GRPO: the defaults of LossConfigBase are GRPO's pieces."""

    kind: Literal["grpo"] = Field("grpo", description="Selects this loss.")
