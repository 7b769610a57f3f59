"""The worker's teacher step (rollout/teacher_scoring.py) against a fake engine: what each member
is asked to score, how failures become reasons and counts or stop the run, routing. The real
engines are in tests/test_distill_e2e.py."""

from __future__ import annotations

import asyncio

import pytest
from factories import make_group
from transformers import AutoTokenizer

from slipstream.envs import Prompt
from slipstream.errors import SlipstreamError
from slipstream.rollout.engine_api import TokenScores
from slipstream.rollout.teacher_config import TeacherConfig
from slipstream.rollout.teacher_scoring import GroupTeacher

PROMPT = Prompt("p-7", ({"role": "user", "content": "What is 2 + 3?"},), reference="5")


class FakeEngine:
    """Scores each token -1 (or fails), and remembers every request."""

    def __init__(self, fails: bool = False) -> None:
        self.requests: list[tuple[list[int], list[int]]] = []
        self.fails = fails

    async def score(self, prompt_ids, token_ids, topk, request_id) -> TokenScores:
        if self.fails:
            raise RuntimeError("engine gone")
        self.requests.append((list(prompt_ids), list(token_ids)))
        n = len(token_ids)
        return TokenScores((-1.0,) * n, ((0,),) * n, ((-0.5,),) * n, version=3)


def teacher(tiny_model, engine, **fields) -> GroupTeacher:
    config = TeacherConfig(**{"kind": "self", "weights": "live", **fields})
    return GroupTeacher(config, {}, engine, AutoTokenizer.from_pretrained(tiny_model), seed=0)


def test_the_teacher_scores_the_students_exact_ids_after_its_privileged_prompt(tiny_model):
    engine = FakeEngine()
    group = asyncio.run(teacher(tiny_model, engine, context="answer").score(make_group(1),
                                                                            PROMPT))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for (prompt_ids, token_ids), sample in zip(engine.requests, group.samples):
        assert token_ids == list(sample.completion_ids_T)          # verbatim, never re-tokenised
        assert "the correct final answer is 5" in tokenizer.decode(prompt_ids)
        assert sample.teacher_logprobs_T == (-1.0,) * len(token_ids)
        assert (sample.teacher_id, sample.teacher_version) == ("self0", 3)
        assert sample.teacher_context_hash and sample.has_teacher
    assert group.teacher_tokens == sum(len(p) + len(t) for p, t in engine.requests)
    assert group.teacher_score_s is not None


def test_a_raising_context_stops_the_run_or_is_counted_per_sample(tiny_model):
    with pytest.raises(SlipstreamError, match="teacher self0 .*teacher_contexts:always_raises.*"
                                              "no context for you"):
        asyncio.run(teacher(tiny_model, FakeEngine(), context="teacher_contexts:always_raises")
                    .score(make_group(1), PROMPT))
    going_on = teacher(tiny_model, FakeEngine(), on_failure="continue",
                       context="teacher_contexts:raises_on_odd_tickets")
    odd = asyncio.run(going_on.score(make_group(1), PROMPT))
    even = asyncio.run(going_on.score(make_group(2), PROMPT))
    assert going_on.errors == len(odd.samples)
    assert all("odd ticket 1" in s.teacher_error and not s.has_teacher for s in odd.samples)
    assert all(s.has_teacher and s.teacher_error is None for s in even.samples)


def test_a_failing_engine_takes_its_member_out_of_the_run(tiny_model):
    scorer = teacher(tiny_model, FakeEngine(fails=True), on_failure="continue")
    first = asyncio.run(scorer.score(make_group(1), PROMPT))
    later = asyncio.run(scorer.score(make_group(2), PROMPT))
    assert scorer.errors == 1                          # counted once, then skipped
    assert all("scoring failed: RuntimeError: engine gone" in s.teacher_error
               for s in first.samples)
    assert all("down since an earlier failure" in s.teacher_error for s in later.samples)


def test_routing_asks_only_the_chosen_member(tiny_model):
    engine = FakeEngine()
    config = TeacherConfig(kind="ensemble", combine="route", members=[
        {"source": "self", "weights": "live", "name": "a"},
        {"source": "self", "weights": "live", "context": "answer", "name": "b"}])
    scorer = GroupTeacher(config, {}, engine, AutoTokenizer.from_pretrained(tiny_model), 0)
    routed = prompt_named("b")
    group = asyncio.run(scorer.score(make_group(1), routed))
    assert len(engine.requests) == len(group.samples)          # one member, not both
    assert all(s.teacher_weights == {"b": 1.0} for s in group.samples)


def prompt_named(prompt_id: str) -> Prompt:
    """A prompt whose id names a member: route sends it there."""
    return Prompt(prompt_id, PROMPT.messages, PROMPT.reference)
