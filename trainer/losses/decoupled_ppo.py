"""Decoupled PPO (Fu et al. 2025, arXiv 2505.24298, AReaL): PPO for data the policy did not just
generate, with the behaviour policy and the trust region's anchor kept apart.

    u_t  = pi(y_t) / pi_prox(y_t)          the ratio PPO clips, around the proximal anchor
    w_t  = min(pi_prox(y_t) / mu(y_t), C)  the staleness correction (token TIS, cap C = 5)
    l_t  = -w_t min(u_t A_t, clip(u_t, 1 - eps_lo, 1 + eps_hi) A_t)

mu is the sampler that drew the token (its logprobs travel with the sample), pi_prox the policy
that last trained on the sample: for a fresh sample the learner at the start of this step, for a
replayed one the logprobs stored when it last trained (buffer/replay_pool.py), so each pass is a
trust-region step from the previous one, like PPO's epochs. AReaL caps w at 5 by masking; here it
is truncated (`correction.tis=token`, `tis_cap=5`), and any other correction composes with it
(`--trainer.loss.correction.icepop true`). Advantages are GRPO's group-normalised ones.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import LossConfigBase


class DecoupledPPOLossConfig(LossConfigBase):
    CORRECTION_DEFAULTS = {"tis": "token", "tis_cap": 5.0}

    kind: Literal["decoupled_ppo"] = Field("decoupled_ppo", description="Selects this loss.")
