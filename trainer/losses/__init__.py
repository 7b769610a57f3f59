"""The loss family: recipes made of composable pieces, selected with `--trainer.loss.kind NAME`.

    grpo  dr_grpo  dapo  gspo  cispo  rloo  reinforce_pp  ppo       on-policy (and near it)
    decoupled_ppo  m2po  topr                                        off-policy, for stale and
                                                                     replayed data
    soft_q                                                           value-based (soft_q.py)
    distill                                                          on-policy distillation
                                                                     (on_policy_distill.py; any
                                                                     recipe's `distill` section)

A recipe is a config class (one module each: grpo.py, dapo.py, ...) whose docstring holds its
formula and paper. Its fields choose among the shared pieces (config.py): the advantage
estimator (trainer/advantages.py), the policy objective (objectives.py), the aggregation
(base.py), the sampler/trainer corrections (corrections.py) and the KL (kl.py); `policy.py`
computes any combination. So a new paper is usually a new module with new defaults, plus at most
one small function among the pieces.

Adding a loss: write `trainer/losses/my_loss.py` with `class MyLossConfig(LossConfigBase)` and
`kind: Literal["my_loss"]`, and add it to `_RECIPES` below (one line). The learner, the run config
and the CLI pick it up from the union.
"""

from __future__ import annotations

import typing
from typing import Annotated, Union

from pydantic import Field

from slipstream.trainer.losses.base import (MASK_REASONS, MASKING_REASONS, LossInputs, LossOutput,
                                            token_records)
from slipstream.trainer.losses.cispo import CISPOLossConfig
from slipstream.trainer.losses.config import CorrectionConfig, KLConfig, LossConfigBase
from slipstream.trainer.losses.dapo import DAPOLossConfig
from slipstream.trainer.losses.decoupled_ppo import DecoupledPPOLossConfig
from slipstream.trainer.losses.dr_grpo import DrGRPOLossConfig
from slipstream.trainer.losses.grpo import GRPOLossConfig
from slipstream.trainer.losses.gspo import GSPOLossConfig
from slipstream.trainer.losses.distill import DistillConfig
from slipstream.trainer.losses.m2po import M2POLossConfig
from slipstream.trainer.losses.on_policy_distill import DistillLossConfig
from slipstream.trainer.losses.policy import policy_loss
from slipstream.trainer.losses.ppo import PPOLossConfig
from slipstream.trainer.losses.reinforce_pp import ReinforcePPLossConfig
from slipstream.trainer.losses.rloo import RLOOLossConfig
from slipstream.trainer.losses.soft_q import SoftQLossConfig, soft_q_loss
from slipstream.trainer.losses.topr import TOPRLossConfig

_RECIPES = (GRPOLossConfig, DrGRPOLossConfig, DAPOLossConfig, GSPOLossConfig, CISPOLossConfig,
            RLOOLossConfig, ReinforcePPLossConfig, PPOLossConfig, DecoupledPPOLossConfig,
            M2POLossConfig, TOPRLossConfig, SoftQLossConfig, DistillLossConfig)


def recipe_kind(recipe: type) -> str:
    """The `kind` a recipe class answers to; a readable TypeError for a malformed recipe (caught
    at import, so a new loss that forgets a field fails before any run starts)."""
    if not (isinstance(recipe, type) and issubclass(recipe, LossConfigBase)):
        raise TypeError(f"loss recipe {recipe!r} must subclass LossConfigBase "
                        "(trainer/losses/config.py), which holds the pieces every loss shares")
    field = recipe.model_fields.get("kind")
    kinds = typing.get_args(field.annotation) if field is not None else ()
    if len(kinds) != 1 or field.default != kinds[0]:
        raise TypeError(f"loss recipe {recipe.__name__} needs `kind: Literal[\"name\"] = "
                        f"Field(\"name\", ...)` naming itself")
    return kinds[0]


KINDS: tuple[str, ...] = tuple(recipe_kind(r) for r in _RECIPES)
if len(set(KINDS)) != len(KINDS):
    raise TypeError(f"two loss recipes share a kind: {KINDS}")

LossConfig = Annotated[Union[_RECIPES], Field(discriminator="kind")]  # type: ignore[valid-type]


def compute_loss(inputs: LossInputs, config: LossConfigBase) -> LossOutput:
    """One micro-batch's loss for any recipe (policy.py; soft_q.py for the value-based one)."""
    if isinstance(config, SoftQLossConfig):
        return soft_q_loss(inputs, config)
    return policy_loss(inputs, config)


__all__ = ["KINDS", "MASK_REASONS", "MASKING_REASONS", "CISPOLossConfig", "CorrectionConfig",
           "DAPOLossConfig", "DecoupledPPOLossConfig", "DistillConfig",
           "DistillLossConfig", "DrGRPOLossConfig", "GRPOLossConfig",
           "GSPOLossConfig", "KLConfig", "LossConfig", "LossConfigBase", "LossInputs",
           "LossOutput", "M2POLossConfig", "PPOLossConfig", "RLOOLossConfig",
           "ReinforcePPLossConfig", "SoftQLossConfig", "TOPRLossConfig", "compute_loss",
           "token_records"]
