"""Envs: a procedural arithmetic task, a JSON Lines dataset (GSM8K format), reasoning-gym's task
library, multi-turn tool use (a calculator and a sandboxed Python) and an env of one's own.

`EnvConfig` is a discriminated union on `kind`; `build_env(config, seed)` makes the env. Every env
is deterministic in (seed, index): see `slipstream.envs.base`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from slipstream.envs.arithmetic import ArithmeticEnv, ArithmeticEnvConfig
from slipstream.envs.base import Env, EnvReply, Episode, Prompt, TurnEnv
from slipstream.envs.jsonl import JsonlEnv, JsonlEnvConfig, parse_reference, sample_gsm8k_path
from slipstream.envs.python_env import PythonEnvConfig, build_python_env
from slipstream.envs.reasoning_gym import ReasoningGymEnv, ReasoningGymEnvConfig
from slipstream.envs.tools import ToolEnv, ToolEnvConfig

EnvConfig = Annotated[ArithmeticEnvConfig | JsonlEnvConfig | ReasoningGymEnvConfig
                      | ToolEnvConfig | PythonEnvConfig, Field(discriminator="kind")]
TURN_ENV_KINDS = ("tools",)        # envs whose samples hold env tokens (rollout/episode.py)


def build_env(config: EnvConfig, seed: int) -> Env:
    """The env `config` describes, drawing its stream from `seed`."""
    if config.kind == "arithmetic":
        return ArithmeticEnv(config, seed)
    if config.kind == "jsonl":
        return JsonlEnv(config, seed)
    if config.kind == "reasoning_gym":
        return ReasoningGymEnv(config, seed)
    if config.kind == "tools":
        return ToolEnv(config, seed)
    if config.kind == "python":
        return build_python_env(config, seed)
    raise ValueError(f"unknown env kind {config.kind!r}")


__all__ = ["ArithmeticEnv", "ArithmeticEnvConfig", "Env", "EnvConfig", "EnvReply", "Episode",
           "JsonlEnv", "JsonlEnvConfig", "Prompt", "PythonEnvConfig", "ReasoningGymEnv",
           "ReasoningGymEnvConfig",
           "TURN_ENV_KINDS", "ToolEnv", "ToolEnvConfig", "TurnEnv", "build_env",
           "parse_reference", "sample_gsm8k_path"]
