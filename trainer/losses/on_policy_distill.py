"""On-policy distillation (Agarwal et al. 2024, GKD; Lu 2025, Thinking Machines): the student
samples, a teacher scores every sampled token in the rollout path (rollout/teachers.py), and the
student moves toward the teacher on its own states.

    A_t = coef * clamp(sg(log q(y_t) - log p(y_t)))  [+ reward_weight * A_task]
    l_t = -w_t min(r_t A_t, clip(r_t) A_t),   w_t = min(p(y_t) / mu(y_t), 2)  (token TIS)

The defaults are pure distillation: teacher weight 1, task reward weight 0, the reverse KL on
the sampled token as the advantage (trainer/losses/distill.py has the top-k forward KL and JSD),
and token TIS for the sampler/trainer gap, as Thinking Machines' recipe trains with importance
sampling. `--trainer.loss.distill.reward_weight 1` mixes the task reward back in (AReaL's KDRL,
slime's OPD on top of any estimator); any other recipe takes a teacher the same way through its
own `distill` section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipstream.trainer.losses.config import LossConfigBase


class DistillLossConfig(LossConfigBase):
    CORRECTION_DEFAULTS = {"tis": "token"}
    DISTILL_DEFAULTS = {"coef": 1.0, "reward_weight": 0.0}

    kind: Literal["distill"] = Field("distill", description="Selects this loss.")
