"""reasoning-gym's own scorer as a reward: the env's task scores its completion.

The answer is the text between the last `<answer>` tags when there are any (reasoning-gym's
convention, which its system prompts ask for), else the whole completion stripped; the task's
`score_answer(answer, entry)` then scores it, partial credit included where the task gives some.
The entry comes from the prompt's metadata (envs/reasoning_gym.py), so the scorer sees what the
generator made; a prompt from another env has none, which is an error of that item.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def _scorer(task: str):
    from reasoning_gym import get_score_answer_fn

    return get_score_answer_fn(task)


def extract_tagged_answer(completion: str) -> str:
    """The last <answer>...</answer> of `completion`, else the completion itself, stripped."""
    from reasoning_gym.utils import extract_answer

    tagged = extract_answer(completion)
    return (tagged if tagged is not None else completion).strip()


def reasoning_gym_reward(completion: str, reference: str, metadata: Mapping[str, Any]) -> float:
    """The task's score of the completion's answer against the entry the env generated."""
    entry = metadata.get("entry")
    task = metadata.get("task")
    if not isinstance(entry, Mapping) or not isinstance(task, str):
        raise ValueError("the prompt carries no reasoning-gym entry: use this reward with "
                         "env.kind reasoning_gym")
    return float(_scorer(task)(extract_tagged_answer(completion), dict(entry)))
