"""What every sampler engine offers the rollout code: `Engine`, the records it returns, and
`build_engine`, which picks vLLM or the reference sampler.

Two engines implement the protocol: `VLLMEngine` (rollout/engine.py, vLLM's AsyncLLM) and, in
deterministic mode, `ReferenceEngine` (rollout/reference_sampler.py, a Hugging Face model under
slipstream's batch-invariant numerics). Both are plain Python (no Ray) on one asyncio loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from slipstream.model_config import ModelConfig
    from slipstream.rollout.config import RolloutConfig


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 48
    ignore_eos: bool = False   # for tests and benchmarks that need a fixed length
    choice: tuple[str, ...] = ()   # vLLM's structured outputs: the text is one of these (a judge)


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]      # the sampled token's logprob (after temperature), per token
    versions: tuple[int, ...]        # the weight version that sampled each token
    finish_reason: str
    text: str


@dataclass(frozen=True)
class TokenScores:
    """A scoring model's view of given tokens (a teacher's: rollout/teachers.py): the logprob of
    each scored token, and its `k` best tokens at that position, best first."""

    logprobs: tuple[float, ...]
    topk_ids: tuple[tuple[int, ...], ...]
    topk_logprobs: tuple[tuple[float, ...], ...]
    version: int                     # the weight version that scored them


class Engine(Protocol):
    """A sampler that takes weights in place while it generates."""

    # True when the KV of requests in flight is recomputed at every weight update, so each
    # token depends on its own version's weights alone (trainer/logprobs.py reproducible_by).
    recomputes_prefix: bool

    @property
    def weight_version(self) -> int: ...

    @property
    def tokens_generated(self) -> int: ...

    async def start(self) -> None: ...

    async def generate(self, prompt_ids: list[int], sampling: SamplingSettings,
                       seed: int | None, request_id: str) -> Completion: ...

    async def update_weights(self, weights: str | PathLike | Mapping[str, Any],
                             version: int) -> float: ...

    # vLLM's update protocol step by step, as rollout/sync_client.py drives it.
    async def init_weight_transfer(self, init_info: Mapping[str, Any]) -> None: ...

    async def begin_update(self) -> None: ...

    async def receive_weights(self, update_info: Mapping[str, Any], version: int) -> None: ...

    async def finish_update(self, version: int) -> float: ...

    async def abort_update(self) -> None: ...

    async def fingerprint(self, names: Iterable[str]) -> dict[str, float]: ...

    async def shutdown(self) -> None: ...


def build_engine(model: ModelConfig, rollout: RolloutConfig, seed: int,
                 deterministic: bool = False, weight_transfer: str = "slipstream_shm") -> Engine:
    """vLLM, or the reference sampler in deterministic mode (which takes weights by file only).
    `model.path` must be resolved (a local directory or a hub name; launch/models.py
    resolve_model); `weight_transfer` is the vLLM backend the engine is built for."""
    if deterministic:
        from slipstream.rollout.reference_sampler import ReferenceEngine

        return ReferenceEngine(model, seed)
    from slipstream.rollout.engine import VLLMEngine

    return VLLMEngine(model, rollout, seed, weight_transfer)
