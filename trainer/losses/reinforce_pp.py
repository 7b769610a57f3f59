"""REINFORCE++ (Hu 2025, arXiv 2501.03262), in its "-baseline" form for group sampling:
batch-normalised advantages.

    G_{i,t} = r_i - sum_{k >= t} p_{i,k}            return from t on (p: a per-token KL penalty
                                                    when the KL is placed in the reward)
    A_{i,t} = whiten_batch(G_{i,t} - mean_g R)      the prompt's mean return as baseline, then
                                                    (x - mean) / std over all trained tokens of
                                                    the batch, not per group

Normalising over the whole batch instead of the group keeps GRPO's variance control without
its per-prompt std bias. The paper's token-level KL penalty in the reward is
`--trainer.loss.kl.coef 0.01 --trainer.loss.kl.placement reward --trainer.loss.kl.estimator k1`
(with trainer.reference_model=true). PPO-clip on the ratio to the sampler, token mean.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import GroupAdvantage, LossConfigBase, recipe_default


class ReinforcePPLossConfig(LossConfigBase):
    kind: Literal["reinforce_pp"] = Field("reinforce_pp", description="Selects this loss.")
    advantage: GroupAdvantage = recipe_default("advantage", "group_batch_norm")
