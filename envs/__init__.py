"""Prompt sources: a procedural arithmetic task and a JSON Lines dataset (GSM8K format).

`EnvConfig` is a discriminated union on `kind`; `build_env(config, seed)` makes the env. Every env
is deterministic in (seed, index): see `slipstream.envs.base`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from slipstream.envs.arithmetic import ArithmeticEnv, ArithmeticEnvConfig
from slipstream.envs.base import Env, Prompt
from slipstream.envs.jsonl import JsonlEnv, JsonlEnvConfig, parse_reference, sample_gsm8k_path

EnvConfig = Annotated[ArithmeticEnvConfig | JsonlEnvConfig, Field(discriminator="kind")]


def build_env(config: EnvConfig, seed: int) -> Env:
    """The env `config` describes, drawing its stream from `seed`."""
    if config.kind == "arithmetic":
        return ArithmeticEnv(config, seed)
    if config.kind == "jsonl":
        return JsonlEnv(config, seed)
    raise ValueError(f"unknown env kind {config.kind!r}")


__all__ = ["ArithmeticEnv", "ArithmeticEnvConfig", "Env", "EnvConfig", "JsonlEnv",
           "JsonlEnvConfig", "Prompt", "build_env", "parse_reference", "sample_gsm8k_path"]
