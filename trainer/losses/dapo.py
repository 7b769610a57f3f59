"""DAPO (Yu et al. 2025, arXiv 2503.14476): GRPO's advantages with four changes.

    clip-higher        clip(r, 1 - 0.2, 1 + 0.28): room for low-probability tokens to grow,
                       against entropy collapse
    token mean         loss = sum_{i,t} l_t / sum_i |o_i|: long completions are not
                       down-weighted per token
    dynamic sampling   a group whose rewards are all equal (all right or all wrong) has A = 0
                       and no gradient; the buffer drops it and the workers generate more until
                       the batch is full (buffer/dropped_uniform counts the drops)
    overlong shaping   r_i += -penalty * min(|o_i| - (L - B), B) / B once |o_i| > L - B
                       (L = rollout.max_new_tokens, B = overlong_buffer_tokens): a soft
                       penalty instead of an abrupt reward cut for truncated answers;
                       `overlong: filter` masks truncated completions out of the loss instead

with l_t GRPO's PPO-clip term and A_i = (R_i - mean_g R) / (std_g R + eps).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import LossConfigBase, recipe_default


class DAPOLossConfig(LossConfigBase):
    kind: Literal["dapo"] = Field("dapo", description="Selects this loss.")
    clip_high: float = recipe_default("clip_high", 0.28)
    dynamic_sampling: bool = recipe_default("dynamic_sampling", True)
    overlong: Literal["off", "shape", "filter"] = recipe_default("overlong", "shape")
