"""What an environment hands a rollout worker: a `Prompt`, addressed by an integer index.

`prompt(index)` is a pure function of (seed, index). The buffer numbers groups with tickets and a
worker asks for `prompt(ticket)`, so the prompt stream does not depend on which worker runs which
group, and the synchronous reference loop sees exactly the pipeline's prompts.

An env is anything with the two methods of `Env` (a Protocol, not a base class to inherit from).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Prompt:
    """One problem, as it crosses from the env to a rollout worker and into the rollout log."""

    prompt_id: str                            # stable id, e.g. "arith-d2-s0-000123"
    messages: tuple[dict[str, str], ...]      # chat messages: ({"role": "user", "content": ...},)
    reference: str                            # the gold answer, given to the reward ("57")
    metadata: Mapping[str, object] = field(default_factory=dict)  # JSON-serialisable env facts


class Env(Protocol):
    """A deterministic prompt source."""

    name: str

    def prompt(self, index: int) -> Prompt:
        """The prompt at position `index` (>= 0) of this env's training stream."""
        ...

    def held_out(self, count: int) -> list[Prompt]:
        """Up to `count` evaluation prompts, disjoint from the training stream where possible."""
        ...


def check_index(index: int) -> None:
    """Stream positions are tickets, counted from 0; a negative one is a caller's bug."""
    if index < 0:
        raise ValueError(f"prompt index must be >= 0, got {index}")
