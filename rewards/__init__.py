"""Rewards: pure functions `(completion, reference) -> score`, run with a time limit.

Four kinds: `math_verify` (the answer checked by math-verify), `reasoning_gym` (the scorer of
the reasoning-gym task the env generated from), `python`, any importable function
`"package.module:function"` taking (completion, reference) or (completion, reference, metadata),
for a reward of one's own, and `judge`, a judge model scoring against a rubric (rewards/judge.py),
which runs in the pipeline's judge actor rather than as a function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from slipstream.errors import SlipstreamError
from slipstream.rewards.judge import JudgeRewardConfig, JudgeRewards
from slipstream.rewards.math_verify import math_verify_reward
from slipstream.rewards.reasoning_gym import reasoning_gym_reward
from slipstream.rewards.runner import RewardResult, RewardRunner
from slipstream.user_code import import_function

_TIMEOUT = Field(5.0, gt=0, description=(
    "Seconds one completion may take to score; past it, it scores 0 and counts as an error."))


class MathVerifyRewardConfig(BaseModel):
    """1.0 when math-verify finds the completion's answer equal to the reference, else 0.0."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["math_verify"] = Field("math_verify", description="Selects this reward.")
    timeout_s: float = _TIMEOUT


class ReasoningGymRewardConfig(BaseModel):
    """The reasoning-gym task's own scorer on the completion's <answer> (env.kind reasoning_gym)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["reasoning_gym"] = Field("reasoning_gym", description="Selects this reward.")
    timeout_s: float = _TIMEOUT


class PythonRewardConfig(BaseModel):
    """A reward of one's own: any module-level function, run like math_verify."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["python"] = Field("python", description="Selects this reward.")
    function: str = Field(..., pattern=r"^[\w.]+:\w+$", description=(
        "An importable function 'package.module:function' taking (completion, reference) or "
        "(completion, reference, metadata: the prompt's) and returning a float."))
    timeout_s: float = _TIMEOUT


RewardConfig = Annotated[Union[MathVerifyRewardConfig, ReasoningGymRewardConfig,
                               PythonRewardConfig, JudgeRewardConfig], Field(discriminator="kind")]


def build_reward(config: RewardConfig) -> Callable[..., float]:
    """The reward function `config` names; pass it to `RewardRunner(fn, config.timeout_s)`."""
    if config.kind == "math_verify":
        return math_verify_reward
    if config.kind == "reasoning_gym":
        return reasoning_gym_reward
    if config.kind == "python":
        return import_function(config.function, "reward.function")
    if config.kind == "judge":
        raise SlipstreamError("reward.kind=judge needs the pipeline's judge actor: it scores "
                              "rollouts of a run (launch scripts), not here")
    raise ValueError(f"unknown reward kind {config.kind!r}")


__all__ = ["JudgeRewardConfig", "JudgeRewards", "MathVerifyRewardConfig", "PythonRewardConfig",
           "ReasoningGymRewardConfig",
           "RewardConfig", "RewardResult", "RewardRunner", "build_reward", "math_verify_reward",
           "reasoning_gym_reward"]
