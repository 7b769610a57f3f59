"""What an environment hands a rollout worker: a `Prompt`, addressed by an integer index.

`prompt(index)` is a pure function of (seed, index). The buffer numbers groups with tickets and a
worker asks for `prompt(ticket)`, so the prompt stream does not depend on which worker runs which
group, and the synchronous reference loop sees exactly the pipeline's prompts.

An env is anything with the two methods of `Env` (a Protocol, not a base class to inherit from).
An env that takes turns (`TurnEnv`) also opens an `Episode` per sample: the policy's turn goes to
`step`, which answers with messages (a tool's output, a game's move) until it says the episode is
done. The rollout (rollout/episode.py) puts the answers' tokens into the sample, marked as the
env's, so the loss never trains on them and they carry no sampler logprob.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


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


@dataclass(frozen=True)
class EnvReply:
    """What an env answers to one policy turn."""

    messages: tuple[dict[str, str], ...] = ()   # appended to the conversation: the observation
    done: bool = False                          # the episode is over (then `messages` is unused)
    # The episode's reward when the env knows it (a game's outcome); None: the run's reward
    # scores the last policy turn against the prompt's reference.
    reward: float | None = None
    info: Mapping[str, object] = field(default_factory=dict)   # JSON-safe, e.g. tool statuses


class Episode(Protocol):
    """One sample's conversation with the env."""

    def step(self, text: str) -> EnvReply:
        """The env's answer to the policy's turn `text` (called off the event loop)."""
        ...


@runtime_checkable
class TurnEnv(Env, Protocol):
    """An env that answers the policy's turns until the episode ends."""

    max_turns: int                  # policy turns per episode, at most
    # Optional: tokens one policy turn may take (None or absent: the rest of the budget), and
    # `step_timeout_s`, seconds one `step` may take (absent: 120).

    def episode(self, prompt: Prompt) -> Episode:
        """A fresh episode starting from `prompt`."""
        ...


def check_index(index: int) -> None:
    """Stream positions are tickets, counted from 0; a negative one is a caller's bug."""
    if index < 0:
        raise ValueError(f"prompt index must be >= 0, got {index}")
