"""Multi-turn rollouts: the policy and a `TurnEnv` take turns until the episode ends.

    context = the prompt's ids
    repeat:  the engine generates a turn from context + everything so far   (policy tokens)
             the env answers it (off the event loop: a tool may take seconds) (env tokens)
    until the env says done, `max_turns` policy turns, or the token budget is spent.

Choices:
- One token budget per sample, `rollout.max_new_tokens`, for policy and env tokens together: it
  bounds what the learner sees, whatever the env prints. An env may also cap each policy turn
  (its `max_turn_tokens`); a turn cut there still goes to the env, which answers what it got.
  An env answer that does not fit ends the episode with finish reason "length"; an episode cut
  by `max_turns` ends with "turns". An env answer that raises or takes longer than the env's
  `step_timeout_s` (120 s unless it says) ends the episode with reward 0 and the reason.
- The env's tokens are the chat template's own rendering of its messages after the policy's
  turn: the conversation is templated with and without the answer, and the difference, with the
  template's end-of-turn marker in front (less the end-of-turn token the policy stopped on), is
  tokenised. The policy's turn is templated with a stand-in content, so what it generated (a
  stray special token, text that decodes differently) never has to survive a round trip: the
  ids of policy tokens are never re-tokenised, and the sequence the learner recomputes is the
  one the sampler saw. A template that renders earlier turns differently once a later one
  exists (one that drops past reasoning, say) cannot be joined this way, and is refused with
  one line.
- The reward: the env's own when it gives one at the end (a game's outcome), else the run's
  reward on the last policy turn against the prompt's reference, so text an env printed (a
  tool's "42") is never taken for the policy's answer.
- The samples of a group run concurrently, and groups too (the worker's groups_in_flight), so the
  engine batches across episodes as it does across single-turn samples.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from slipstream.buffer.records import Group, Sample
from slipstream.envs.base import EnvReply, Prompt, TurnEnv
from slipstream.errors import SlipstreamError, one_line
from slipstream.rewards import RewardRunner
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine_api import Engine
from slipstream.rollout.group import encode_prompt, generate_group, sample_seed, token_texts

_TURN_SEED_STRIDE = 7_919
_STEP_TIMEOUT_S = 120.0               # an env's answer, unless it sets `step_timeout_s`
_STAND_IN = "SLIPSTREAMTURNCONTENT"   # the policy turn's content while templating the env's


@dataclass
class _Transcript:
    """One episode's tokens so far, policy and env interleaved."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    from_env: list[bool] = field(default_factory=list)
    turns: int = 0
    last_turn_text: str = ""
    finish_reason: str = "stop"
    env_reward: float | None = None
    env_error: str | None = None
    info: list[dict] = field(default_factory=list)

    def add(self, ids, logprobs, versions, from_env: bool) -> None:
        self.ids += ids
        self.logprobs += logprobs
        self.versions += versions
        self.from_env += [from_env] * len(ids)


def observation_ids(tokenizer, messages: list[dict], turn_ids: tuple[int, ...],
                    reply: EnvReply) -> list[int]:
    """The ids of the env's answer as the chat template renders it after `messages`, whose last
    is the policy's turn, generated as `turn_ids` (see the module doc)."""
    stand_in = [*messages[:-1], {"role": "assistant", "content": _STAND_IN}]
    before = tokenizer.apply_chat_template(stand_in, tokenize=False)
    after = tokenizer.apply_chat_template([*stand_in, *reply.messages], tokenize=False,
                                          add_generation_prompt=True)
    if not after.startswith(before) or _STAND_IN not in before:
        raise SlipstreamError("the chat template renders earlier turns differently once a later "
                              "turn exists, so env turns cannot be appended to the policy's ids; "
                              "use a model whose template keeps past turns as they were")
    # What the template puts after a turn's content (its end-of-turn marker), less what the
    # policy already generated of it (the end-of-turn token it stopped on).
    closing = before[before.rindex(_STAND_IN) + len(_STAND_IN):]
    last = tokenizer.decode(list(turn_ids[-1:]), skip_special_tokens=False)
    if last and last.strip() and closing.startswith(last):
        closing = closing[len(last):]
    return tokenizer(closing + after[len(before):], add_special_tokens=False)["input_ids"]


async def _run_episode(engine: Engine, tokenizer, env: TurnEnv, prompt: Prompt,
                       prompt_ids: list[int], rollout: RolloutConfig, seed: int,
                       request_id: str) -> _Transcript:
    episode, out = env.episode(prompt), _Transcript()
    messages = [dict(m) for m in prompt.messages]
    budget = rollout.max_new_tokens
    turn_cap = getattr(env, "max_turn_tokens", None) or budget
    while True:
        sampling = dataclasses.replace(rollout.sampling,
                                       max_tokens=min(budget - len(out.ids), turn_cap))
        turn = await engine.generate(prompt_ids + out.ids, sampling,
                                     seed=seed + out.turns * _TURN_SEED_STRIDE,
                                     request_id=f"{request_id}-t{out.turns}")
        out.add(list(turn.token_ids), list(turn.logprobs), list(turn.versions), from_env=False)
        out.turns += 1
        out.last_turn_text = turn.text
        if len(out.ids) >= budget:        # a turn cut by its own cap still goes to the env
            out.finish_reason = "length"
            return out
        timeout = getattr(env, "step_timeout_s", None) or _STEP_TIMEOUT_S
        try:
            reply = await asyncio.wait_for(asyncio.to_thread(episode.step, turn.text), timeout)
        except asyncio.TimeoutError:     # its thread is left to finish; the episode ends here
            out.env_error = f"env step timed out after {timeout:g}s"
            out.finish_reason = "env_error"
            return out
        except Exception as error:  # noqa: BLE001 - an env bug ends this episode, not the run
            out.env_error, out.finish_reason = f"env step raised {one_line(error)}", "env_error"
            return out
        out.info.append(dict(reply.info))
        if reply.done:
            out.env_reward = reply.reward
            return out
        if out.turns >= env.max_turns:
            out.finish_reason = "turns"
            return out
        messages.append({"role": "assistant", "content": turn.text})
        env_ids = observation_ids(tokenizer, messages, turn.token_ids, reply)
        if len(out.ids) + len(env_ids) >= budget:
            out.finish_reason = "length"
            return out
        version = out.versions[-1] if out.versions else engine.weight_version
        out.add(env_ids, [0.0] * len(env_ids), [version] * len(env_ids), from_env=True)
        messages += [dict(m) for m in reply.messages]


async def generate_episode_group(engine: Engine, tokenizer, rewards: RewardRunner, env: TurnEnv,
                                 prompt: Prompt, ticket: int, rollout: RolloutConfig, seed: int,
                                 worker_id: int = 0) -> Group:
    """`rollout.group_size` episodes of `prompt`, scored, as one Group (see the module doc)."""
    prompt_text, prompt_ids = encode_prompt(tokenizer, prompt)
    group_id = f"g{ticket:07d}"
    transcripts = await asyncio.gather(*(
        _run_episode(engine, tokenizer, env, prompt, prompt_ids, rollout,
                     sample_seed(seed, ticket, i), f"{group_id}-{i}-w{worker_id}")
        for i in range(rollout.group_size)))
    to_score = [i for i, t in enumerate(transcripts)
                if t.env_reward is None and t.env_error is None]
    scored = await asyncio.to_thread(rewards.score, [
        (transcripts[i].last_turn_text, prompt.reference, prompt.metadata) for i in to_score],
        prompt.messages)
    results = dict(zip(to_score, scored))
    samples = []
    for i, t in enumerate(transcripts):
        texts = token_texts(tokenizer, tuple(t.ids))
        reward, error = (results[i].score, results[i].error) if i in results else \
            (t.env_reward if t.env_error is None else 0.0, t.env_error)
        parts = dict(results[i].parts) if i in results else {}
        samples.append(Sample(
            sample_id=f"{group_id}-{i}", group_id=group_id, prompt_id=prompt.prompt_id,
            prompt_ids=tuple(prompt_ids), completion_ids_T=tuple(t.ids),
            sampler_logprobs_T=tuple(t.logprobs), versions_T=tuple(t.versions),
            prompt_text=prompt_text,
            completion_text="".join(texts),      # turn markers kept: the turns stay readable
            finish_reason=t.finish_reason, reference=prompt.reference,
            token_texts_T=texts, reward=reward, reward_error=error, reward_parts=parts,
            env_metadata={**prompt.metadata, "env_info": t.info}, worker_id=worker_id,
            prefix_recomputed=engine.recomputes_prefix, env_tokens_T=tuple(t.from_env),
            turns=t.turns))
    return Group(group_id=group_id, ticket=ticket, prompt_id=prompt.prompt_id,
                 samples=tuple(samples))


async def rollout_group(engine: Engine, tokenizer, rewards: RewardRunner, env, prompt: Prompt,
                        ticket: int, rollout: RolloutConfig, seed: int,
                        worker_id: int = 0) -> Group:
    """One group of `prompt`: episodes when `env` takes turns, else single completions."""
    if isinstance(env, TurnEnv):
        return await generate_episode_group(engine, tokenizer, rewards, env, prompt, ticket,
                                            rollout, seed, worker_id)
    return await generate_group(engine, tokenizer, rewards, prompt, ticket, rollout, seed,
                                worker_id)
