"""The rubric reward (rewards/judge.py): verdict parsing and weighting by hand, and a judge that
hangs, answers nonsense or dies, each counted as an error of its completions, never raised."""

import time

import pytest
import ray
from transformers import AutoTokenizer

from slipstream.errors import SlipstreamError
from slipstream.launch.cli import parse_config
from slipstream.rewards import JudgeRewards, build_reward
from slipstream.rewards.judge import (JudgeCriterion, JudgeRewardConfig, allowed_verdicts,
                                      judge_messages, parse_verdict, rubric_score, task_text)

RUBRIC = [JudgeCriterion(name="correct", question="Is the answer right?", weight=3),
          JudgeCriterion(name="clarity", question="How clear is it?", points=4)]


@pytest.mark.parametrize("text, points, verdict", [
    ("Yes.", 1, 1.0), (" no, because", 1, 0.0), ("YES", 1, 1.0),
    ("Maybe yes", 1, None), ("", 1, None), ("1", 1, None),
    ("3", 4, 0.75), ("0/4", 4, 0.0), ("4 - very clear", 4, 1.0),
    ("5", 4, None), ("three", 4, None), ("-", 4, None),
])
def test_a_verdict_is_the_judges_first_word(text, points, verdict):
    assert parse_verdict(text, points) == verdict


@pytest.mark.parametrize("points", [1, 2, 5, 10])
def test_every_verdict_the_constrained_judge_may_give_parses(points):
    verdicts = [parse_verdict(v, points) for v in allowed_verdicts(points)]
    assert None not in verdicts and min(verdicts) == 0.0 and max(verdicts) == 1.0


def test_the_reward_is_the_weighted_mean_of_the_verdicts():
    result = rubric_score(RUBRIC, ["yes", "2"])
    parts = result.parts
    assert parts == {"correct": 1.0, "clarity": 0.5}
    assert result.error is None and result.score == pytest.approx((3 * 1.0 + 1 * 0.5) / 4)


def test_an_unparseable_verdict_scores_zero_names_the_criterion_and_keeps_the_rest():
    result = rubric_score(RUBRIC, ["The response is", "1"])
    parts = result.parts
    assert result.score == 0.0 and parts == {"clarity": 0.25}
    assert "correct: 'The response is'" in result.error and "\n" not in result.error


def test_the_judge_sees_task_reference_response_and_question():
    messages = judge_messages(RUBRIC[1], "What is 2+2?", "4", "4")
    text = messages[-1]["content"]
    for piece in ("What is 2+2?", "Reference answer: 4", "Response:\n4", "How clear is it?",
                  "a whole number from 0 to 4"):
        assert piece in text
    assert "Reference answer" not in judge_messages(RUBRIC[0], "t", "r", "")[-1]["content"]
    assert task_text([{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                      {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]
                     ) == "q2"


@pytest.mark.parametrize("argv, fragment", [
    (["--reward.kind", "judge"], "reward.judge.criteria"),
    (["--reward.kind", "judge", "--reward.criteria", '[{"name": "a b", "question": "q"}]'],
     "reward.judge.criteria.0.name"),
    (["--reward.kind", "judge", "--reward.criteria",
      '[{"name": "a", "question": "q"}, {"name": "a", "question": "r"}]'], "distinct"),
    (["--reward.kind", "judge", "--reward.criteria", '[{"name": "a", "question": "q"}]',
      "--deterministic", "true"], "deterministic=true could not repeat them"),
])
def test_bad_rubrics_are_one_line(argv, fragment):
    with pytest.raises(SlipstreamError) as error:
        parse_config(argv)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_judge_has_no_function_to_run_outside_the_pipeline():
    config = JudgeRewardConfig(criteria=RUBRIC)
    with pytest.raises(SlipstreamError, match="needs the pipeline's judge actor"):
        build_reward(config)


@ray.remote
class FaultyJudge:
    """A judge actor that misbehaves as it is told (the real one: tests/test_envs_e2e.py)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def generate_many(self, prompts, max_tokens, request_id, choices):
        if self.behaviour == "hang":
            time.sleep(60)
        if self.behaviour == "die":
            raise RuntimeError("engine died")
        answers = {"nonsense": "Well, it depends", "fine": "yes"}
        return [answers[self.behaviour]] * len(prompts)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("behaviour, error", [
    ("hang", "judge timeout after"), ("nonsense", "judge verdict unparseable"),
    ("die", "judge failed"), ("fine", None)])
def test_a_misbehaving_judge_costs_its_completions_not_the_run(local_ray, tiny_model,
                                                                behaviour, error):
    config = JudgeRewardConfig(criteria=RUBRIC[:1], timeout_s=3)
    rewards = JudgeRewards(config, FaultyJudge.remote(behaviour),
                           AutoTokenizer.from_pretrained(tiny_model))
    started = time.monotonic()
    results = rewards.score([("4", "4", {}), ("5", "4", {})],
                            [{"role": "user", "content": "2+2?"}])
    assert time.monotonic() - started < 30
    assert len(results) == 2
    for result in results:
        if error is None:
            assert (result.score, result.error, dict(result.parts)) == (1.0, None,
                                                                        {"correct": 1.0})
        else:
            assert result.score == 0.0 and result.error.startswith(error)
