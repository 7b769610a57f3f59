"""A rubric reward: a judge model scores each completion against weighted criteria.

    --reward.kind judge --reward.criteria '[{"name": "answer", "question": "Does the response
        end with a single number?", "weight": 2}, {"name": "clarity", "question": "How clear
        is it?", "points": 5}]' [--reward.model smollm2-135m-instruct]

Choices:
- The judge is a frozen model in its own engine actor (rollout/teacher_actor.py's
  `TeacherActor`, which a teacher uses too), shared by every rollout worker; the worker
  templates the judge's prompts with the judge's own tokenizer and sends them as ids.
- One prompt per criterion and completion, all of a group's at once (the judge's engine batches
  them), answered greedily in a few tokens: "yes"/"no" for a criterion of 1 point, a whole
  number from 0 to `points` for a scale. By default vLLM's structured outputs hold the judge to
  exactly those answers (a small judge otherwise tends to chat: "The response contains a
  number."); `constrain false` lets it write freely, and its first word is parsed. The judge
  sees the task (the prompt's last user message), the reference answer when the env has one,
  the response and the criterion.
- The reward is the weighted mean of the criteria's verdicts, each scaled to [0, 1]; every
  verdict is kept in the sample's `reward_parts` (the inspector lists them).
- Failure follows rewards/runner.py's policy: a verdict that does not parse, or a judge that
  does not answer within `timeout_s` (then for the whole group), makes the completion's reward
  0.0 with the reason in its `reward_error` (so `reward/errors` counts it), the verdicts that
  did parse still in its parts; the run goes on.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slipstream.rewards.runner import RewardItem, RewardResult

_WORD = re.compile(r"[a-z]+|\d+")


class JudgeCriterion(BaseModel):
    """One line of the rubric."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., pattern=r"^\w+$", description="Its key in the sample's reward_parts.")
    question: str = Field(..., min_length=1, description="What the judge is asked.")
    weight: float = Field(1.0, gt=0, description="Its share of the reward.")
    points: int = Field(1, ge=1, le=10, description=(
        "1: judged yes or no; n > 1: a whole number from 0 to n."))


class JudgeRewardConfig(BaseModel):
    """A judge model scores the completion against a rubric (rewards/judge.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["judge"] = Field("judge", description="Selects this reward.")
    criteria: list[JudgeCriterion] = Field(..., min_length=1, description=(
        "The rubric: [{name, question, weight, points}, ...]."))
    model: str = Field("smollm2-135m-instruct", min_length=1, description=(
        "The judge: a shipped model name, a local checkpoint or a hub name."))
    max_tokens: int = Field(6, ge=1, le=64, description="Tokens of one verdict.")
    constrain: bool = Field(True, description=(
        "Limit each verdict to its allowed answers with vLLM's structured outputs; false: the "
        "judge writes freely and its first word is parsed."))
    kv_cache_gb: float = Field(1.0, gt=0, description="The judge engine's KV cache.")
    timeout_s: float = Field(60.0, gt=0, description=(
        "Seconds a group's verdicts may take (they are asked together); past it, each of its "
        "completions scores 0 and counts as an error."))

    @field_validator("criteria")
    @classmethod
    def _distinct_names(cls, criteria: list[JudgeCriterion]) -> list[JudgeCriterion]:
        names = [c.name for c in criteria]
        if len(set(names)) != len(names):
            raise ValueError(f"criteria names must be distinct, got {names}")
        return criteria


def judge_messages(criterion: JudgeCriterion, task: str, completion: str,
                   reference: str) -> list[dict[str, str]]:
    """The chat the judge answers for one criterion of one completion."""
    answer = "yes or no" if criterion.points == 1 else \
        f"a whole number from 0 to {criterion.points}"
    reference_line = f"Reference answer: {reference}\n\n" if reference else ""
    return [{"role": "system", "content": "You are a strict grader. Reply with the verdict only."},
            {"role": "user", "content": (
                f"Task:\n{task}\n\n{reference_line}Response:\n{completion}\n\n"
                f"Question: {criterion.question}\nReply with only {answer}.")}]


def allowed_verdicts(points: int) -> tuple[str, ...]:
    """What a verdict may be: what `parse_verdict` reads."""
    return ("yes", "no") if points == 1 else tuple(str(v) for v in range(points + 1))


def parse_verdict(text: str, points: int) -> float | None:
    """The verdict in [0, 1] that the judge's first word states, or None when it states none:
    yes/no for one point, else an integer 0..points."""
    words = _WORD.findall(text.lower())
    if not words:
        return None
    first = words[0]
    if points == 1:
        return {"yes": 1.0, "no": 0.0}.get(first)
    if not first.isdigit() or int(first) > points:
        return None
    return int(first) / points


def rubric_score(criteria: Sequence[JudgeCriterion], verdicts: Sequence[str]
                 ) -> RewardResult:
    """The reward, with the parts that parsed, from one verdict text per criterion."""
    parts: dict[str, float] = {}
    unparsed: list[str] = []
    for criterion, text in zip(criteria, verdicts, strict=True):
        value = parse_verdict(text, criterion.points)
        if value is None:
            unparsed.append(f"{criterion.name}: {text.strip()[:40]!r}")
        else:
            parts[criterion.name] = value
    if unparsed:
        return RewardResult(0.0, "judge verdict unparseable (" + "; ".join(unparsed) + ")",
                            parts)
    total = sum(c.weight for c in criteria)
    return RewardResult(sum(c.weight * parts[c.name] for c in criteria) / total, None, parts)


def task_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The task as the judge reads it: the prompt's last user message."""
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


class JudgeRewards:
    """Scores items through a judge actor; the same `score` as RewardRunner (rewards/runner.py),
    plus each result's parts."""

    def __init__(self, config: JudgeRewardConfig, judge, tokenizer) -> None:
        """`judge`: the judge's TeacherActor handle; `tokenizer`: the judge's tokenizer."""
        self._config, self._judge, self._tokenizer = config, judge, tokenizer
        self.restarts = 0            # RewardRunner's counter: a judge actor is never replaced
        self._calls = itertools.count()   # next() is atomic: groups score from several threads
        # Request ids must be unique in the judge's engine, which every worker process shares.
        self._caller = uuid.uuid4().hex[:12]

    def score(self, items: Sequence[RewardItem], messages: Sequence[Mapping] = ()
              ) -> list[RewardResult]:
        """One result per item, in order, each with `.parts`; `messages`: the prompt's."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        task = task_text(messages)
        criteria = self._config.criteria
        prompts = [self._ids(judge_messages(c, task, item[0], item[1]))
                   for item in items for c in criteria]
        choices = [allowed_verdicts(c.points) if self._config.constrain else ()
                   for _ in items for c in criteria]
        request_id = f"judge-{self._caller}-{next(self._calls)}"
        ref = self._judge.generate_many.remote(prompts, self._config.max_tokens, request_id,
                                                choices)
        started = time.monotonic()
        try:
            texts = ray.get(ref, timeout=self._config.timeout_s)
        except GetTimeoutError:
            ray.cancel(ref)
            error = f"judge timeout after {time.monotonic() - started:.0f}s"
            return [RewardResult(0.0, error) for _ in items]
        except RayError as failure:
            error = f"judge failed: {str(failure).splitlines()[0][:200]}"
            return [RewardResult(0.0, error) for _ in items]
        per_item = len(criteria)
        return [rubric_score(criteria, texts[i * per_item:(i + 1) * per_item])
                for i in range(len(items))]

    def _ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self._tokenizer.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=True)
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def close(self) -> None:
        """Nothing to release here: the judge actor is the pipeline's to shut down."""
