"""Teachers in the rollout path: each finished group is scored before it reaches the buffer, so
the learner never waits for a teacher.

    group (rewarded) -> per member: context(sample) -> teacher prompt ids + the sample's exact
                        completion ids -> Engine.score -> combine members -> samples carry
                        teacher_logprobs_T (+ top-k, id, version, parts, weights)

A member scores through a `TeacherActor` (rollout/teacher_actor.py: a frozen checkpoint, or the
student's initial weights) or, for a live self-teacher, through the worker's own engine (its
current weights; the score records their version). Privileged context is appended to the
prompt's last user message and the prompt re-templated with the student's chat template; the
completion's ids are then appended as ids, never re-tokenised, so the scored tokens are exactly the
student's and the join falls on the template's assistant header (special tokens, no BPE merge
across it). The combination rules are `route_choice`, `combine_poe` and `confidence_weights`, applied
by `combined_fields`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence

from slipstream.buffer.records import Group, Sample
from slipstream.envs import Prompt
from slipstream.rollout.engine_api import TokenScores
from slipstream.rollout.teacher_config import TeacherConfig, TeacherMember
from slipstream.user_code import import_function

ContextFn = Callable[[Sample, Group, Prompt], str]


class NoContext(Exception):
    """This sample has no privileged context to give (no correct sibling): no teacher score,
    and not a fault."""


# -- privileged context ----------------------------------------------------------------------
def _answer(sample: Sample, group: Group, prompt: Prompt) -> str:
    return f"(Hint: the correct final answer is {prompt.reference}.)"


def _sibling(sample: Sample, group: Group, prompt: Prompt) -> str:
    """Best-of-N inside the group: the first other sample with the group's top reward, if that
    reward is positive (SDPO's verified sibling)."""
    best = max((s.reward for s in group.samples), default=0.0)
    for other in group.samples:
        if other.sample_id != sample.sample_id and other.reward == best and best > 0:
            return f"(A correct solution: {other.completion_text.strip()})"
    raise NoContext("no correct sibling in the group")


def _feedback(sample: Sample, group: Group, prompt: Prompt) -> str:
    error = f" ({sample.reward_error})" if sample.reward_error else ""
    return f"(Feedback: an attempt at this problem earned reward {sample.reward:g}{error}.)"


_BUILT_IN: dict[str, ContextFn] = {"none": lambda *_: "", "answer": _answer,
                                   "sibling": _sibling, "feedback": _feedback}


def context_function(name: str) -> ContextFn:
    """A built-in context by name, or 'module:function' imported (a clear error if it is not)."""
    if name in _BUILT_IN:
        return _BUILT_IN[name]
    return import_function(name, "teacher context")


def teacher_prompt(prompt: Prompt, context: str) -> Prompt:
    """The prompt the teacher sees: the context as a new paragraph of the last user message."""
    if not context:
        return prompt
    messages = [dict(m) for m in prompt.messages]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:                       # an env of system text alone: the context is the turn
        return dataclasses.replace(prompt, messages=(*messages,
                                                     {"role": "user", "content": context}))
    messages[users[-1]]["content"] = f"{messages[users[-1]]['content']}\n\n{context}"
    return dataclasses.replace(prompt, messages=tuple(messages))


# -- combining members -----------------------------------------------------------------------
def route_choice(key: str, names: Sequence[str]) -> str:
    """route: the member named `key`, else one chosen by a stable hash of it."""
    if key in names:
        return key
    digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    return names[digest % len(names)]


def combine_poe(parts: Mapping[str, Sequence[float]], weights: Mapping[str, float]
                ) -> tuple[float, ...]:
    """Product of experts on the sampled tokens: sum_i w_i log q_i(y_t), weights renormalised
    over the members present. Its reverse-KL advantage sum_i w_i (log q_i - log p) is the
    weighted sum of the members' own reverse KLs, exactly (trainer/losses/distill.py)."""
    total = sum(weights[name] for name in parts)
    if total <= 0:
        raise ValueError(f"members {sorted(parts)} have zero total weight")
    columns = zip(*parts.values(), strict=True)
    names = list(parts)
    return tuple(sum(weights[n] * lp for n, lp in zip(names, column)) / total
                 for column in columns)


def confidence_weights(parts: Mapping[str, TokenScores]) -> dict[str, float]:
    """Per sample, each member's weight proportional to its confidence: its mean top-1
    probability over the completion (a member sure of its next token everywhere weighs most)."""
    confidence = {name: (sum(math.exp(best[0]) for best in s.topk_logprobs) /
                         max(len(s.topk_logprobs), 1)) for name, s in parts.items()}
    total = sum(confidence.values())
    if total <= 0:
        return {name: 1.0 / len(parts) for name in parts}
    return {name: c / total for name, c in confidence.items()}


def combined_fields(config: TeacherConfig, parts: Mapping[str, TokenScores],
                    route_key: str) -> dict:
    """The Sample fields of one sample's combined teacher score, from its members' scores."""
    if len(parts) == 1 or config.combine == "route":
        name = route_choice(route_key, list(parts)) if len(parts) > 1 else next(iter(parts))
        chosen = parts[name]
        weights = {n: float(n == name) for n in parts}
        return {"teacher_logprobs_T": chosen.logprobs, "teacher_topk_ids_T_K": chosen.topk_ids,
                "teacher_topk_logprobs_T_K": chosen.topk_logprobs, "teacher_weights": weights,
                "teacher_version": chosen.version,
                # An ensemble names its members' scores even when one scored (kl/teacher/<name>).
                "teacher_parts": {n: s.logprobs for n, s in parts.items()}
                if len(config.resolved_members) > 1 else {}}
    if config.combine == "confidence":
        weights = confidence_weights(parts)
    else:
        given = dict(zip([m.name for m in config.resolved_members], config.weights_of_members))
        total = sum(given[n] for n in parts)
        weights = {n: given[n] / total for n in parts}
    # A product's top tokens would need every member's logprob of every candidate; the
    # sampled token's is all the reverse-KL objective uses (top-k objectives refuse poe).
    return {"teacher_logprobs_T": combine_poe({n: s.logprobs for n, s in parts.items()},
                                              weights),
            "teacher_weights": weights, "teacher_parts": {n: s.logprobs for n, s in parts.items()},
            "teacher_version": max(s.version for s in parts.values())}


def teacher_name(config: TeacherConfig) -> str:
    members = config.resolved_members
    if len(members) == 1:
        return members[0].name
    return f"{config.kind}-{config.combine}({','.join(m.name for m in members)})"


def member_label(member: TeacherMember) -> str:
    """How errors name a member: its name and what it is."""
    what = member.path if member.source == "model" else f"self, {member.weights}"
    return f"teacher {member.name} ({what})"
