"""Multi-turn rollouts (rollout/episode.py) with a scripted engine and a real tokenizer, and the
learner's masking of env tokens; the tool env's turns (envs/tools.py)."""

import asyncio

import pytest
import torch
from pydantic import TypeAdapter
from transformers import AutoTokenizer

from slipstream.envs import ToolEnvConfig, build_env
from slipstream.envs.tools import calculate
from slipstream.rewards import RewardRunner, math_verify_reward
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine_api import Completion
from slipstream.rollout.episode import rollout_group
from slipstream.trainer.logprobs import collate
from slipstream.trainer.losses import LossConfig
from slipstream.trainer.step_batch import build_step_batch
from turn_envs_for_tests import ScriptedTurnEnv


class ScriptedEngine:
    """Answers turn k of every request with `turns[k]` (plus the end-of-turn token), each token
    at logprob -0.25 and the engine's version; records what it was asked."""

    recomputes_prefix = False

    def __init__(self, tokenizer, turns: list[str], version: int = 3) -> None:
        self.tokenizer, self.turns, self.weight_version = tokenizer, turns, version
        self.requests: list[tuple[list[int], int]] = []

    async def generate(self, prompt_ids, sampling, seed, request_id):
        turn = int(request_id.rsplit("-t", 1)[1])
        ids = self.tokenizer(self.turns[turn], add_special_tokens=False)["input_ids"]
        ids = (ids + [self.tokenizer.eos_token_id])[:sampling.max_tokens]
        self.requests.append((list(prompt_ids), sampling.max_tokens))
        finish = "stop" if len(ids) < sampling.max_tokens else "length"
        return Completion(tuple(ids), (-0.25,) * len(ids), (self.weight_version,) * len(ids),
                          finish, self.tokenizer.decode(ids, skip_special_tokens=True))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def rewards():
    with RewardRunner(math_verify_reward, timeout_s=10) as runner:
        yield runner


def build_loss_config(fields):
    return TypeAdapter(LossConfig).validate_python(fields)


def _rollout(engine, tokenizer, rewards, env, max_new_tokens=400, group_size=2):
    rollout = RolloutConfig(group_size=group_size, max_new_tokens=max_new_tokens)
    return asyncio.run(rollout_group(engine, tokenizer, rewards, env, env.prompt(0), 0, rollout,
                                     seed=0))


def test_a_tool_episode_interleaves_policy_and_env_tokens_exactly(tokenizer, rewards):
    env = build_env(ToolEnvConfig(), seed=0)
    prompt = env.prompt(0)
    answer = prompt.reference
    engine = ScriptedEngine(tokenizer, ["Let me add. <calc>2 + 3</calc>", f"So #### {answer}"])
    group = _rollout(engine, tokenizer, rewards, env)
    sample = group.samples[0]
    assert sample.turns == 2 and sample.finish_reason == "stop" and sample.reward == 1.0
    env_T = sample.env_tokens_T
    assert env_T[0] is False and env_T[-1] is False and any(env_T)
    # The second request is exactly the prompt plus everything the sample holds before it.
    prompt_ids = list(sample.prompt_ids)
    second, _ = engine.requests[-1]
    first_turn = len(tokenizer("Let me add. <calc>2 + 3</calc>",
                               add_special_tokens=False)["input_ids"]) + 1
    assert second == prompt_ids + list(sample.completion_ids_T[:second.__len__() - len(prompt_ids)])
    assert not any(env_T[:first_turn]) and all(env_T[first_turn:len(second) - len(prompt_ids)])
    # The env's tokens are the chat template's own rendering of the tool output.
    messages = [*prompt.messages,
                {"role": "assistant", "content": "Let me add. <calc>2 + 3</calc>"},
                {"role": "user", "content": "<output>\n5\n</output>"}]
    templated = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(list(prompt_ids) + list(sample.completion_ids_T[:len(second)
                            - len(prompt_ids)]), skip_special_tokens=False) == templated
    # Env tokens: no sampler logprob, the version of the policy token before them.
    assert all(lp == 0.0 for lp, e in zip(sample.sampler_logprobs_T, env_T) if e)
    assert set(sample.versions_T) == {3}
    assert sample.env_metadata["env_info"] == [{"tool": "calc", "status": "ok"},
                                               {"tool": None}]
    assert "<output>" in sample.completion_text and "#### " + answer in sample.completion_text


def test_the_learner_never_trains_on_env_tokens(tokenizer, rewards):
    env = ScriptedTurnEnv(seed=0, turns=3)
    group = _rollout(ScriptedEngine(tokenizer, ["one", "two", "three"]), tokenizer, rewards, env)
    sample = group.samples[0]
    micro = collate(group.samples, pad_id=0)
    policy = torch.tensor([not e for e in sample.env_tokens_T])
    n = len(sample.completion_ids_T)
    assert torch.equal(micro.mask_B_T[0, :n], policy) and int(micro.lengths_B[0]) == n
    batch = build_step_batch([group], 0, 2, build_loss_config({"kind": "grpo"}), 400, 2)
    assert batch.total_tokens == 2 * int(policy.sum()) < 2 * n
    assert torch.equal(batch.mask_B_T[0, :n], policy)
    with pytest.raises(ValueError, match="contiguous policy tokens"):
        build_step_batch([group], 0, 2, build_loss_config({"kind": "ppo"}), 400, 2)


def test_limits_end_episodes_turns_budget_and_env_errors(tokenizer, rewards):
    endless = ScriptedTurnEnv(seed=0, turns=100, max_turns=3)
    sample = _rollout(ScriptedEngine(tokenizer, ["go"] * 5), tokenizer, rewards,
                      endless).samples[0]
    assert sample.turns == 3 and sample.finish_reason == "turns"
    sample = _rollout(ScriptedEngine(tokenizer, ["go on " * 20] * 5), tokenizer, rewards,
                      endless, max_new_tokens=60).samples[0]
    assert sample.finish_reason == "length" and len(sample.completion_ids_T) <= 60
    capped = ScriptedTurnEnv(seed=0, turns=2, max_turn_tokens=3)
    sample = _rollout(ScriptedEngine(tokenizer, ["go on " * 20] * 5), tokenizer, rewards,
                      capped).samples[0]
    assert sample.turns == 2 and sample.finish_reason == "stop"     # cut turns went on
    assert sample.policy_tokens_T.count(True) == 6
    broken = ScriptedTurnEnv(seed=0, turns=3, raise_at=2)
    sample = _rollout(ScriptedEngine(tokenizer, ["a", "b", "c"]), tokenizer, rewards,
                      broken).samples[0]
    assert sample.finish_reason == "env_error" and sample.reward == 0.0
    assert sample.reward_error == "env step raised RuntimeError: scripted env failure"
    hanging = ScriptedTurnEnv(seed=0, turns=3, hang_at=1, step_timeout_s=0.5)
    sample = _rollout(ScriptedEngine(tokenizer, ["a", "b", "c"]), tokenizer, rewards,
                      hanging, group_size=1).samples[0]
    assert sample.finish_reason == "env_error" and sample.turns == 1
    assert sample.reward_error == "env step timed out after 0.5s"


def test_the_calculator_is_bounded_and_never_evaluates_code():
    assert calculate("14 * 24 - 130") == "206" and calculate("7 / 2") == "3.5"
    assert calculate("9 ** 9 ** 9").startswith("error: ValueError: exponent")
    assert calculate("__import__('os').system('true')").startswith("error: ValueError: only")
    assert calculate("1 / 0") == "error: ZeroDivisionError: division by zero"
    assert calculate("2 +").startswith("error: SyntaxError")


def test_tool_turns_return_every_failure_as_output():
    episode = build_env(ToolEnvConfig(tools=("python",)), 0).episode(None)
    reply = episode.step("<python>print(6 * 7)</python> then more text")
    assert reply.messages[0]["content"] == "<output>\n42\n</output>" and not reply.done
    assert episode.step("<calc>1+1</calc>").done            # calc not enabled: no call
    reply = episode.step("<python>import socket</python>")
    assert reply.info == {"tool": "python", "status": "error"}
    assert "not allowed" in reply.messages[0]["content"]
    env_config = ToolEnvConfig(sandbox={"timeout_s": 1})
    reply = build_env(env_config, 0).episode(None).step("<python>while True: pass</python>")
    assert reply.info["status"] == "timeout"
    assert "timed out after 1s" in reply.messages[0]["content"]


def test_a_template_that_rewrites_past_turns_is_refused(tokenizer):
    from slipstream.envs import EnvReply
    from slipstream.errors import SlipstreamError
    from slipstream.rollout.episode import observation_ids

    class DropsPastTurns:
        """A template that keeps only the last assistant turn (as reasoning templates do)."""

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            kept = [m for i, m in enumerate(messages) if m["role"] != "assistant" or i == last]
            text = "".join(f"[{m['role']}]{m['content']}" for m in kept)
            if messages[-1]["role"] != "assistant":
                text = text.replace(f"[assistant]{messages[last]['content']}", "[assistant]")
            return text + ("[assistant]" if add_generation_prompt else "")

    reply = EnvReply(messages=({"role": "user", "content": "x"},))
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(SlipstreamError, match="renders earlier turns differently"):
        observation_ids(DropsPastTurns(), messages, (1,), reply)
    assert observation_ids(tokenizer, messages, (tokenizer.eos_token_id,), reply)
