"""An env of one's own: `--env.kind python --env.factory my_envs:make --env.options '{...}'`.

`factory(seed, **options)` returns the env: anything with `prompt(index)` and `held_out(count)`
(envs/base.py `Env`), and with `max_turns` and `episode(prompt)` (`TurnEnv`) for one that takes
turns, such as a game from another library wrapped in a few lines. It is called in every rollout
worker, so it must be importable there (a module on the path, as for a python reward).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slipstream.envs.base import Env
from slipstream.errors import SlipstreamError
from slipstream.user_code import import_function


class PythonEnvConfig(BaseModel):
    """An env made by a user's factory function."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["python"] = Field("python", description="Selects this env.")
    factory: str = Field(..., pattern=r"^[\w.]+:\w+$", description=(
        "An importable function 'package.module:function' taking (seed, **options) and "
        "returning the env."))
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "Keyword arguments of the factory (a JSON object)."))


def build_python_env(config: PythonEnvConfig, seed: int) -> Env:
    env = import_function(config.factory, "env.factory")(seed, **config.options)
    missing = [name for name in ("prompt", "held_out") if not callable(getattr(env, name, None))]
    if missing:
        raise SlipstreamError(f"env.factory {config.factory!r} returned {type(env).__name__}, "
                              f"which has no {' or '.join(missing)} method")
    return env
