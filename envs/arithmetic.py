"""A procedural arithmetic task: "What is 36 + 21?" with operands of a fixed number of digits.

Choices:
- Problem `index` comes from a generator seeded by the string "seed:index" (Python hashes a str
  seed with SHA-512, so it is the same in every process and every PYTHONHASHSEED). Any problem
  can be made again without making the ones before it, and two seeds give unrelated streams.
- Operands have exactly `digits` digits (1 digit: 0..9). The operation is drawn uniformly from
  `operations`; "-" may give a negative answer, which is part of the task.
- `held_out` draws from the stream of seed + 10**6. Repeats against the training stream are
  possible only by chance (likely with 1-digit operands, which have only 100 pairs per operation).
"""

from __future__ import annotations

import random
import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slipstream.envs.base import Prompt, check_index

HELD_OUT_SEED_OFFSET = 10**6
_ANSWERS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class ArithmeticEnvConfig(BaseModel):
    """Seedable two-operand arithmetic problems, asked as one user message."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["arithmetic"] = Field("arithmetic", description="Selects this env.")
    digits: int = Field(2, ge=1, le=9, description="Digits of each operand.")
    operations: tuple[Literal["+", "-", "*"], ...] = Field(
        ("+",), min_length=1, description="Operations, drawn uniformly per problem.")
    template: str = Field("What is {a} {op} {b}?", description=(
        "The user message; {a}, {op} and {b} are filled in."))

    @field_validator("template")
    @classmethod
    def _template_fields(cls, template: str) -> str:
        try:
            parts = string.Formatter().parse(template)
            names = {name for _, name, _, _ in parts if name is not None}
        except ValueError as error:
            raise ValueError(f"template is not a valid format string ({error})") from None
        if not {"a", "b"} <= names <= {"a", "b", "op"}:
            raise ValueError("template must contain {a} and {b}, may contain {op}, and no other "
                             f"placeholder (found {sorted(names)})")
        return template

    @model_validator(mode="after")
    def _op_shown_when_ambiguous(self) -> ArithmeticEnvConfig:
        if len(set(self.operations)) > 1 and "{op}" not in self.template:
            raise ValueError("with more than one operation the template must show {op}")
        return self


class ArithmeticEnv:
    """`prompt(index)` is problem `index` of the seed's stream; see the module docstring."""

    def __init__(self, config: ArithmeticEnvConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.name = f"arith-d{config.digits}"

    def prompt(self, index: int) -> Prompt:
        check_index(index)
        return self._make(self.seed, index)

    def held_out(self, count: int) -> list[Prompt]:
        return [self._make(self.seed + HELD_OUT_SEED_OFFSET, i) for i in range(count)]

    def _make(self, seed: int, index: int) -> Prompt:
        rng = random.Random(f"{seed}:{index}")
        digits = self.config.digits
        low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
        a, b = rng.randint(low, high), rng.randint(low, high)
        op = rng.choice(self.config.operations)
        text = self.config.template.format(a=a, op=op, b=b)
        return Prompt(
            prompt_id=f"{self.name}-s{seed}-{index:06d}",
            messages=({"role": "user", "content": text},),
            reference=str(_ANSWERS[op](a, b)),
            metadata={"env": "arithmetic", "a": a, "b": b, "op": op},
        )
