"""reasoning-gym's procedural tasks as an env: `--env.kind reasoning_gym --env.task countdown`.

reasoning-gym (on the package index) ships 100+ generators, each with its own config class and its
own scorer; this env asks its questions and `rewards/reasoning_gym.py` scores with its scorer.

Choices:
- `task` is any name reasoning-gym registers; an unknown one is refused at config time, naming the
  close ones. `config` is passed through to the task's own config class, and checked there (its
  `validate()`), so a bad field fails before anything starts.
- Difficulty is reasoning-gym's own curriculum level (`levels`): the task's curriculum sets its
  attributes at that global level, in its upper-bound mode (each level its own band of values,
  not every value up to it, so levels are distinct difficulties), then `config` overrides them.
  With several levels a problem's level is drawn per index, so the stream mixes them;
  `held_out_levels` adds levels only the evaluation sees (a difficulty never trained on). Prompts record their level in metadata, which
  the curriculum (envs/curriculum.py) and per-level evaluation read.
- reasoning-gym seeds item `idx` of a dataset of seed `s` with `s + idx`, so two streams whose
  seeds are close would share items. Each (seed, level) dataset's seed is spread apart (seed x
  10**10 + level x 10**8, above any dataset size), the held-out stream uses seed + 10**6 like the
  other envs, and an index wraps around the dataset's `size`, so items never collide across the
  streams here.
- The entry the scorer needs (answer and metadata) travels in the prompt's metadata, made
  JSON-safe; the reference is the task's gold answer, shown as is in the inspector.
"""

from __future__ import annotations

import difflib
import json
import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slipstream.envs.base import Prompt, check_index
from slipstream.errors import SlipstreamError

HELD_OUT_SEED_OFFSET = 10**6
_LEVEL_STRIDE = 10**8               # above any dataset size (10**7): levels never share seeds
_SEED_STRIDE = 10**10               # above 99 levels: seeds never share them either


def registered_tasks() -> list[str]:
    """Every task name reasoning-gym registers."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def system_prompt_text(name_or_text: str) -> str:
    """reasoning-gym's named system prompt ("direct", "default", ...) or the text itself."""
    from reasoning_gym.utils import SYSTEM_PROMPTS

    return SYSTEM_PROMPTS.get(name_or_text, name_or_text)


class ReasoningGymEnvConfig(BaseModel):
    """A reasoning-gym task, its config passed through, at one or several difficulty levels."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["reasoning_gym"] = Field("reasoning_gym", description="Selects this env.")
    task: str = Field("countdown", min_length=1, description=(
        "A reasoning-gym task name (countdown, basic_arithmetic, ...)."))
    config: dict[str, Any] = Field(default_factory=dict, description=(
        "Fields of the task's own config class, applied after the level's (JSON object)."))
    levels: tuple[int, ...] = Field((), description=(
        "Curriculum levels of the task trained on, drawn per problem; empty: the task's config "
        "as given, no curriculum."))
    held_out_levels: tuple[int, ...] = Field((), description=(
        "Extra levels only the held-out set draws from (a difficulty never trained on)."))
    size: int = Field(10_000, ge=1, le=10**7, description=(
        "Items per (seed, level) dataset; the stream wraps around it."))
    system_prompt: str = Field("direct", description=(
        "reasoning-gym's named system prompt (direct, default, simple, DeepSeekZero, "
        "chain_of_draft) or the text itself; empty: none."))

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        tasks = registered_tasks()
        if task not in tasks:
            close = difflib.get_close_matches(task, tasks, n=5, cutoff=0.5)
            hint = f"close: {', '.join(close)}" if close else f"{len(tasks)} tasks, e.g. " \
                + ", ".join(tasks[:5])
            raise ValueError(f"unknown reasoning-gym task {task!r} ({hint})")
        return task

    @model_validator(mode="after")
    def _levels_exist(self) -> ReasoningGymEnvConfig:
        levels = (*self.levels, *self.held_out_levels)
        if self.held_out_levels and not self.levels:
            raise ValueError("held_out_levels needs levels: the training stream has no level")
        if levels:
            from reasoning_gym.factory import has_curriculum

            if not has_curriculum(self.task):
                raise ValueError(f"reasoning-gym task {self.task!r} has no curriculum, so no "
                                 "levels; set its difficulty through config instead")
            top = max(len(a.levels) - 1 for a in _curriculum(self.task).attributes.values())
            bad = [level for level in levels if not 0 <= level <= top]
            if bad:
                raise ValueError(f"levels {bad} outside 0..{top} for task {self.task!r}")
        for level in levels or (None,):
            dataset_config(self, level, seed=0)     # the task's own validation, per level
        return self


def _curriculum(task: str):
    from reasoning_gym.factory import create_curriculum

    return create_curriculum(task)


def dataset_config(config: ReasoningGymEnvConfig, level: int | None, seed: int):
    """The task's config object at `level` (None: its defaults) with `config.config` applied;
    a field the task does not have, or a value its validation refuses, is a ValueError."""
    from reasoning_gym.factory import DATASETS

    _, config_class = DATASETS[config.task]
    fields: dict[str, Any] = {}
    if level is not None:
        curriculum = _curriculum(config.task)
        curriculum.set_global_level(level)
        from reasoning_gym.coaching.base_curriculum import (DefaultCurriculumContext,
                                                            RangeAttributeMode)

        band = DefaultCurriculumContext(mode=RangeAttributeMode.UPPER_BOUND)
        fields = vars(curriculum.generate_configuration({"seed": seed, "size": config.size}, band))
    fields.update(config.config, seed=seed, size=config.size)
    try:
        task_config = config_class(**fields)
        if hasattr(task_config, "validate"):
            task_config.validate()
    except (TypeError, ValueError, AssertionError) as error:
        raise ValueError(f"config of reasoning-gym task {config.task!r} refused: "
                         f"{type(error).__name__}: {error}") from None
    return task_config


def _json_safe(value: Any) -> Any:
    """reasoning-gym metadata as plain JSON (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(value, default=str))


class ReasoningGymEnv:
    """`prompt(index)`: item `index` of the seed's stream at the level drawn for it."""

    def __init__(self, config: ReasoningGymEnvConfig, seed: int) -> None:
        self.config, self.seed = config, seed
        self.name = f"rg-{config.task}"
        self._datasets: dict[tuple[int, int | None], Any] = {}
        self._system = system_prompt_text(config.system_prompt) if config.system_prompt else ""

    def prompt(self, index: int) -> Prompt:
        check_index(index)
        return self._make(self.seed, index, self.config.levels)

    def held_out(self, count: int) -> list[Prompt]:
        levels = (*self.config.levels, *self.config.held_out_levels)
        return [self._make(self.seed + HELD_OUT_SEED_OFFSET, i, levels) for i in range(count)]

    def _make(self, seed: int, index: int, levels: tuple[int, ...]) -> Prompt:
        level = random.Random(f"{seed}:{index}").choice(levels) if levels else None
        try:
            entry = self._dataset(seed, level)[index % self.config.size]
        except Exception as error:  # noqa: BLE001 - a generator's failure, named in one line
            raise SlipstreamError(
                f"reasoning-gym task {self.config.task!r} failed to generate item {index} at "
                f"level {level} ({type(error).__name__}: {error}); change its config or levels"
            ) from None
        messages = ({"role": "system", "content": self._system},) if self._system else ()
        level_tag = "" if level is None else f"-l{level}"
        return Prompt(
            prompt_id=f"{self.name}{level_tag}-s{seed}-{index:06d}",
            messages=(*messages, {"role": "user", "content": entry["question"]}),
            reference=str(entry["answer"]),
            metadata={"env": "reasoning_gym", "task": self.config.task, "level": level,
                      "entry": {"answer": entry["answer"],
                                "metadata": _json_safe(entry.get("metadata", {}))}})

    def _dataset(self, seed: int, level: int | None):
        key = (seed, level)
        if key not in self._datasets:
            from reasoning_gym.factory import DATASETS

            spread = seed * _SEED_STRIDE + (0 if level is None else level + 1) * _LEVEL_STRIDE
            dataset_class, _ = DATASETS[self.config.task]
            self._datasets[key] = dataset_class(dataset_config(self.config, level, spread))
        return self._datasets[key]
