"""reasoning-gym as an env and a reward: the real library, its generators and its scorers."""

import pytest
from pydantic import ValidationError

from slipstream.envs import ReasoningGymEnvConfig, build_env
from slipstream.errors import SlipstreamError
from slipstream.launch.cli import parse_config
from slipstream.rewards import RewardRunner, build_reward, reasoning_gym_reward
from slipstream.rewards.reasoning_gym import extract_tagged_answer
from slipstream.rewards.runner import takes_metadata


def _env(**fields):
    return build_env(ReasoningGymEnvConfig(**fields), seed=0)


def test_any_task_its_config_passed_through_and_deterministic():
    small = {"min_numbers": 3, "max_numbers": 3, "min_target": 10, "max_target": 60}
    env = _env(task="countdown", config=small)
    first, again = env.prompt(5), _env(task="countdown", config=small).prompt(5)
    assert first == again and first.prompt_id == "rg-countdown-s0-000005"
    entry = first.metadata["entry"]
    assert len(entry["metadata"]["numbers"]) == 3 and entry["metadata"]["target"] <= 60
    assert first.messages[0]["role"] == "system" and "<answer>" in first.messages[0]["content"]
    assert first.messages[-1]["role"] == "user" and first.reference == entry["answer"]
    assert env.prompt(6) != first


def test_levels_are_distinct_difficulties_and_held_out_adds_its_own():
    env = _env(task="basic_arithmetic", levels=(0, 1), held_out_levels=(3,))
    train_levels = {env.prompt(i).metadata["level"] for i in range(40)}
    held = env.held_out(60)
    assert train_levels == {0, 1}
    assert {p.metadata["level"] for p in held} == {0, 1, 3}
    assert not {p.prompt_id for p in held} & {env.prompt(i).prompt_id for i in range(60)}
    # Upper-bound bands: level 3 problems have more terms than level 0 ones.
    terms = {level: max(len(p.messages[-1]["content"].split()) for p in held
                        if p.metadata["level"] == level) for level in (0, 3)}
    assert terms[3] > terms[0]


@pytest.mark.parametrize("fields, fragment", [
    ({"task": "countdwn"}, "close: countdown"),
    ({"task": "countdown", "config": {"nope": 1}}, "unexpected keyword argument 'nope'"),
    ({"task": "countdown", "config": {"min_numbers": 5, "max_numbers": 3}}, "refused"),
    ({"task": "countdown", "levels": (9,)}, "levels [9] outside 0..4"),
    ({"task": "countdown", "held_out_levels": (1,)}, "held_out_levels needs levels"),
])
def test_bad_env_config_is_one_clear_line(fields, fragment):
    with pytest.raises(ValidationError) as error:
        ReasoningGymEnvConfig(**fields)
    assert fragment in str(error.value)


def test_the_reward_is_the_tasks_own_scorer():
    prompt = _env(task="countdown", config={"min_numbers": 3, "max_numbers": 3}).prompt(0)
    gold = prompt.reference
    score = lambda text: reasoning_gym_reward(text, prompt.reference, prompt.metadata)  # noqa: E731
    assert score(f"I think\n<answer>{gold}</answer>") == 1.0
    assert score(gold) == 1.0                              # no tags: the whole completion
    assert score("<answer>1 + 1</answer>") == 0.05         # countdown's own partial credit
    assert score("") == 0.01
    assert extract_tagged_answer("<answer>a</answer> then <answer> b </answer>") == "b"
    with pytest.raises(ValueError, match="no reasoning-gym entry"):
        reasoning_gym_reward("1", "1", {"env": "arithmetic"})


def test_the_runner_passes_metadata_only_to_a_reward_that_takes_it():
    assert takes_metadata(reasoning_gym_reward)
    assert not takes_metadata(lambda completion, reference: 0.0)
    prompt = _env(task="basic_arithmetic").prompt(3)
    config = parse_config(["--env.kind", "reasoning_gym", "--env.task", "basic_arithmetic",
                           "--reward.kind", "reasoning_gym"]).reward
    with RewardRunner(build_reward(config), config.timeout_s) as runner:
        results = runner.score([(f"<answer>{prompt.reference}</answer>", prompt.reference,
                                 prompt.metadata), ("<answer>x</answer>", prompt.reference)])
    assert results[0].score == 1.0 and results[0].error is None
    assert results[1].score == 0.0 and "no reasoning-gym entry" in results[1].error


def test_the_reasoning_gym_reward_needs_its_env():
    with pytest.raises(SlipstreamError, match="env.kind=arithmetic has none"):
        parse_config(["--reward.kind", "reasoning_gym"])


def test_a_generator_that_fails_is_one_line_naming_task_level_and_item():
    # countdown's default bands at level 2 (targets 1000-5000 from 9-12 numbers of 200-300)
    # defeat its own generator.
    env = _env(task="countdown", levels=(0,), held_out_levels=(2,))
    with pytest.raises(SlipstreamError, match=r"countdown. failed to generate item \d+ at level 2"):
        env.held_out(6)
