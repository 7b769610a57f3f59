"""`TeacherActor`: a frozen model in its own engine, as a Ray actor every rollout worker shares:
a teacher, or a rubric reward's judge (rewards/judge.py).

It scores the student's exact token ids in one prefill (`Engine.score`: vLLM's
`prompt_logprobs`, or the reference sampler's forward in deterministic mode, so a deterministic
run's teacher is bitwise reproducible too), and generates a debate's arguments and a judge's
verdicts. It holds no weights transfer: a teacher's weights never change, so its scores never
go stale (version 0).
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import ray

from slipstream.model_config import ModelConfig
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine_api import Completion, SamplingSettings, TokenScores, build_engine


def vocabulary_signature(tokenizer) -> tuple[int, str]:
    """(size, hash) of a tokenizer's token -> id map: distillation compares token ids, so a
    teacher must number every token as the student does."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]
    return len(vocab), digest


@ray.remote
class TeacherActor:
    def __init__(self, model: ModelConfig, kv_cache_gb: float, seed: int,
                 deterministic: bool) -> None:
        self._model = model
        self._engine = build_engine(model, RolloutConfig(kv_cache_gb=kv_cache_gb), seed,
                                    deterministic)

    async def start(self) -> None:
        try:
            await self._engine.start()
        except Exception as error:  # noqa: BLE001 - vLLM's errors may not pickle back
            raise RuntimeError(f"teacher engine failed to start for {self._model.path}: "
                               f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                               ) from None

    async def score(self, requests: list[tuple[list[int], list[int]]], topk: int,
                    request_id: str) -> list[TokenScores]:
        """Each (prompt ids, token ids) request scored, concurrently (the engine batches them)."""
        return list(await asyncio.gather(*(
            self._engine.score(prompt, tokens, topk, f"{request_id}-{i}")
            for i, (prompt, tokens) in enumerate(requests))))

    async def generate(self, prompt_ids: list[int], max_tokens: int, seed: int,
                       request_id: str) -> Completion:
        return await self._engine.generate(prompt_ids, SamplingSettings(max_tokens=max_tokens),
                                           seed, request_id)

    async def generate_many(self, prompts: list[list[int]], max_tokens: int, request_id: str,
                            choices: list[tuple[str, ...]] | None = None) -> list[str]:
        """Each prompt's greedy answer text, concurrently (a judge's verdicts); `choices[i]`,
        when not empty, the texts prompt i's answer must be one of."""
        choices = choices or [()] * len(prompts)
        completions = await asyncio.gather(*(
            self._engine.generate(ids, SamplingSettings(temperature=0.0, max_tokens=max_tokens,
                                                        choice=tuple(choice)),
                                  0, f"{request_id}-{i}")
            for i, (ids, choice) in enumerate(zip(prompts, choices, strict=True))))
        return [c.text for c in completions]

    async def shutdown(self) -> None:
        await self._engine.shutdown()
