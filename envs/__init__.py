"""Prompt sources: a procedural arithmetic task, a JSON Lines dataset (GSM8K format) and
reasoning-gym's task library.

`EnvConfig` is a discriminated union on `kind`; `build_env(config, seed)` makes the env. Every env
is deterministic in (seed, index): see `slipstream.envs.base`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from slipstream.envs.arithmetic import ArithmeticEnv, ArithmeticEnvConfig
from slipstream.envs.base import Env, Prompt
from slipstream.envs.jsonl import JsonlEnv, JsonlEnvConfig, parse_reference, sample_gsm8k_path
from slipstream.envs.reasoning_gym import ReasoningGymEnv, ReasoningGymEnvConfig

EnvConfig = Annotated[ArithmeticEnvConfig | JsonlEnvConfig | ReasoningGymEnvConfig,
                      Field(discriminator="kind")]


def build_env(config: EnvConfig, seed: int) -> Env:
    """The env `config` describes, drawing its stream from `seed`."""
    if config.kind == "arithmetic":
        return ArithmeticEnv(config, seed)
    if config.kind == "jsonl":
        return JsonlEnv(config, seed)
    if config.kind == "reasoning_gym":
        return ReasoningGymEnv(config, seed)
    raise ValueError(f"unknown env kind {config.kind!r}")


__all__ = ["ArithmeticEnv", "ArithmeticEnvConfig", "Env", "EnvConfig", "JsonlEnv",
           "JsonlEnvConfig", "Prompt", "ReasoningGymEnv", "ReasoningGymEnvConfig", "build_env",
           "parse_reference", "sample_gsm8k_path"]
