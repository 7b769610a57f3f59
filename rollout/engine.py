"""`VLLMEngine`: slipstream's async wrapper around one vLLM `AsyncLLM` (not the blocking `LLM`).

It is plain Python (no Ray): the Ray rollout worker owns one, and so does the synchronous
reference loop. Everything runs on one asyncio event loop; `generate` calls stream concurrently
and `update_weights` may be called between or during them.

What a weight update does to the caches (the choice recorded here, see docs/ARCHITECTURE.md):
* **In-flight requests keep their KV cache.** `pause_generation(mode="keep", clear_cache=False)`
  freezes them between two engine steps; after the load they resume, so their later tokens are
  sampled by the new weights while attending to keys and values the old weights computed. That
  is recorded, not hidden: every token carries the version of the weights that sampled it (vLLM's
  `weight_versions` spans, `Completion.versions`), the learner recomputes all logprobs under its
  own weights, and the buffer bounds staleness by each sample's oldest token. Recomputing the KV
  instead (`clear_cache=True`) would re-prefill every request in flight at every sync.
* **The prefix cache never serves old KV to a new request.** Prefix caching stays on (the
  samples of a group share their prompt). Every request carries a `cache_salt` naming the weight
  version it was submitted under, so a request submitted after an update cannot hit blocks
  computed before it; `generate` waits while an update is in progress, so no request slips in
  under the old salt meanwhile. `reset_prefix_cache()` alone cannot guarantee this: vLLM refuses
  the reset while any request holds blocks, which in-flight requests always do. It is still
  called after an update when nothing is in flight, to free the old blocks at once. A request
  already submitted when an update starts is old-version work in flight, like the first kind.

Per-token logprobs are vLLM's `processed_logprobs`: after temperature scaling, the distribution
each token was actually drawn from, which is what the learner computes (logits / temperature).

Per-request seeds: on the CPU, vLLM rewinds a seeded request's generator when it discards the
token of a partial (chunked) prefill, and the CPU generator refuses ("CPU Generator does not use
offset"), killing the engine (reproduced here with a 300-token prompt and a 128-token budget).
Chunked prefill is therefore off on the CPU, and the token budget is at least `max_model_len`,
so every prompt is prefilled whole.

Weight transfer: the engine is built for one vLLM backend (`weight_transfer`): `slipstream_shm`
(rollout/weight_transfer.py) or `slipstream_collective` (rollout/collective_transfer.py), both
verified here, or vLLM's `ipc` on CUDA (UNVERIFIED: no GPU here). The learner drives an update
step by step through rollout/sync_client.py (`begin_update`, `receive_weights`, `finish_update`);
`update_weights` runs the three in one call for a path or an `update_info` dict.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Mapping
from multiprocessing import resource_tracker
from typing import Any

from slipstream import DIE_WITH_PARENT
from slipstream.model_config import ModelConfig
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine_api import Completion, SamplingSettings, TokenScores
from slipstream.rollout.weight_transfer import BACKEND

_EXTENSION = "slipstream.rollout.worker_extension.SlipstreamWorkerExtension"
_log = logging.getLogger(__name__)


class WeightUpdateError(RuntimeError):
    """A weight update failed; the engine has been resumed (its version label is unchanged)."""


def _version_number(label: str) -> int:
    return 0 if label == "default" else int(label)


def versions_from_spans(spans: Iterable[Any] | None, num_tokens: int) -> tuple[int, ...]:
    """Per-token versions from vLLM's `WeightVersionSpan(version, start, end)` list, which must
    cover the tokens exactly: a token without a version would make staleness unknowable."""
    versions: list[int] = []
    for span in spans or ():
        if span.start != len(versions) or span.end < span.start:
            raise RuntimeError(f"weight-version spans are not contiguous: {list(spans)}")
        versions += [_version_number(span.version)] * (span.end - span.start)
    if len(versions) != num_tokens:
        raise RuntimeError(f"weight-version spans cover {len(versions)} of {num_tokens} tokens")
    return tuple(versions)


class VLLMEngine:
    # In-flight requests keep their KV across an update (module docstring), so a token after
    # an update is not a function of its own version's weights alone.
    recomputes_prefix = False

    def __init__(self, model: ModelConfig, rollout: RolloutConfig, seed: int,
                 weight_transfer: str = BACKEND) -> None:
        """`weight_transfer`: the vLLM weight-transfer backend the engine is built for
        (`slipstream_shm`, `slipstream_collective` or vLLM's `ipc`)."""
        self.model, self.rollout, self.seed = model, rollout, seed
        self.weight_transfer = weight_transfer
        self._update_started = 0.0
        self._llm = None
        self._version = 0
        self._in_flight = 0
        self._tokens_generated = 0
        self._update_lock = asyncio.Lock()
        self._weights_ready = asyncio.Event()   # cleared while an update is in progress
        self._weights_ready.set()

    @property
    def weight_version(self) -> int:
        """The version of the weights the engine holds (0: the checkpoint it started from)."""
        return self._version

    @property
    def tokens_generated(self) -> int:
        """Tokens streamed so far by this engine, over all requests (a progress counter)."""
        return self._tokens_generated

    async def start(self) -> None:
        import torch
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        model = self.model
        if torch.cuda.is_available():  # UNVERIFIED branch (no GPU here); see the module docstring.
            extra: dict[str, Any] = {
                "gpu_memory_utilization": self.rollout.gpu_memory_utilization}
            # CUDA IPC handles hold torch dtypes that vLLM's msgpack RPC only ships by pickle.
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        else:
            # No chunked prefill: seeded requests would kill the engine (module docstring).
            extra = {"enable_chunked_prefill": False,
                     "max_num_batched_tokens": max(model.max_model_len, 2048),
                     "kv_cache_memory_bytes": int(self.rollout.kv_cache_gb * 2**30)}
            # vLLM's legacy variable (whole GiB) would override the size set here.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        # Prefix caching: the samples of a group share their prompt.
        args = AsyncEngineArgs(
            model=model.path, dtype=model.dtype, max_model_len=model.max_model_len,
            seed=self.seed, enforce_eager=True, logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            weight_transfer_config={"backend": self.weight_transfer},
            worker_extension_cls=_EXTENSION, **extra)
        # The engine processes spawned now die with this one (slipstream/__init__.py); not
        # multiprocessing's resource tracker, shared by the whole process: started first.
        resource_tracker.ensure_running()
        os.environ[DIE_WITH_PARENT] = str(os.getpid())
        try:
            self._llm = AsyncLLM.from_engine_args(args)
        finally:
            del os.environ[DIE_WITH_PARENT]
        if self.weight_transfer == BACKEND:    # the file system is the channel: nothing to join
            await self.init_weight_transfer({})

    async def shutdown(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.shutdown()

    def _engine(self):
        if self._llm is None:
            raise RuntimeError("VLLMEngine is not started (call `await engine.start()`)")
        return self._llm

    async def generate(self, prompt_ids: list[int], sampling: SamplingSettings,
                       seed: int | None, request_id: str) -> Completion:
        """One sample (n=1) with the chosen token's logprob and weight version per token.

        `seed` makes the sample reproducible whatever else the engine runs (n=1 only: on the
        CPU a seed with n>1 kills the engine)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        llm = self._engine()
        constrained = StructuredOutputsParams(choice=list(sampling.choice)) \
            if sampling.choice else None
        params = SamplingParams(
            n=1, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_tokens, ignore_eos=sampling.ignore_eos, logprobs=0,
            seed=seed, output_kind=RequestOutputKind.DELTA, structured_outputs=constrained)
        await self._weights_ready.wait()
        prompt = {"prompt_token_ids": list(prompt_ids),
                  "cache_salt": f"slipstream-weights-{self._version}"}
        token_ids: list[int] = []
        logprobs: list[float] = []
        text: list[str] = []
        last = None
        self._in_flight += 1
        try:
            # DELTA: each output carries only new tokens; streaming keeps `tokens_generated`
            # live. The final output's spans cover all tokens of the request.
            async for output in llm.generate(prompt, params, request_id=request_id):
                last = output.outputs[0]
                if last.token_ids and last.logprobs is None:
                    raise RuntimeError(f"request {request_id}: vLLM returned no logprobs")
                token_ids += last.token_ids
                logprobs += [step[token].logprob
                             for step, token in zip(last.logprobs or (), last.token_ids,
                                                    strict=True)]
                text.append(last.text)
                self._tokens_generated += len(last.token_ids)
        finally:
            self._in_flight -= 1
        if last is None:
            raise RuntimeError(f"request {request_id}: vLLM returned no output")
        versions = versions_from_spans(last.weight_versions, len(token_ids))
        return Completion(tuple(token_ids), tuple(logprobs), versions,
                          last.finish_reason or "unknown", "".join(text))

    async def score(self, prompt_ids: list[int], token_ids: list[int], topk: int,
                    request_id: str) -> TokenScores:
        """The engine's logprob of each of `token_ids` after `prompt_ids`, and its `topk` best
        tokens at each of those positions: one prefill (vLLM's `prompt_logprobs`, one generated
        token thrown away), the ids scored exactly as given. Temperature 1: the model's own
        distribution (a teacher's; rollout/teachers.py)."""
        from vllm import SamplingParams

        if not token_ids:
            return TokenScores((), (), (), self._version)
        params = SamplingParams(n=1, max_tokens=1, temperature=1.0, prompt_logprobs=topk,
                                detokenize=False)
        await self._weights_ready.wait()
        version = self._version
        prompt = {"prompt_token_ids": list(prompt_ids) + list(token_ids),
                  "cache_salt": f"slipstream-weights-{version}"}
        last = None
        async for output in self._engine().generate(prompt, params, request_id=request_id):
            last = output
        if last is None or last.prompt_logprobs is None:
            raise RuntimeError(f"request {request_id}: vLLM returned no prompt logprobs")
        positions = last.prompt_logprobs[len(prompt_ids):]
        logprobs, ids, best = [], [], []
        for token, position in zip(token_ids, positions, strict=True):
            ranked = sorted(position.items(), key=lambda item: item[1].rank)
            logprobs.append(position[token].logprob)
            ids.append(tuple(t for t, _ in ranked[:topk]))
            best.append(tuple(entry.logprob for _, entry in ranked[:topk]))
        return TokenScores(tuple(logprobs), tuple(ids), tuple(best), version)

    async def init_weight_transfer(self, init_info: Mapping[str, Any]) -> None:
        """Join the weight-transfer channel (a rendezvous for `slipstream_collective`)."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        try:
            await self._engine().init_weight_transfer_engine(
                WeightTransferInitRequest(dict(init_info)))
        except Exception as error:  # vLLM relays a worker's failure as a bare Exception
            raise WeightUpdateError(f"joining the {self.weight_transfer} weight transfer "
                                    f"failed: {error}") from error

    async def update_weights(self, weights: str | os.PathLike | Mapping[str, Any],
                             version: int) -> float:
        """Load new weights in place as `version`; return seconds from pause to resume.

        `weights` is the path of a file from `trainer.weight_publish.write_weights_file`
        (`slipstream_shm`), or the backend's `update_info` dict. Requests in flight are paused,
        not aborted, and continue under the new weights. The engine resumes even if loading
        fails; the error then propagates as WeightUpdateError. The three steps are also
        callable one by one (`begin_update`, `receive_weights`, `finish_update`), as vLLM's
        trainer-side protocol drives them (rollout/sync_client.py)."""
        update_info = dict(weights) if isinstance(weights, Mapping) \
            else {"path": os.fspath(weights)}
        async with self._update_lock:
            await self.begin_update()
            await self.receive_weights(update_info, version)
            return await self.finish_update(version)

    async def begin_update(self) -> None:
        """Pause (in-flight requests kept) and open an update; new requests wait meanwhile."""
        if not self._weights_ready.is_set():
            raise WeightUpdateError("a weight update is already in progress on this engine")
        llm = self._engine()
        self._update_started = time.perf_counter()
        self._weights_ready.clear()
        try:
            await llm.pause_generation(mode="keep", clear_cache=False)
            await llm.start_weight_update()
        except Exception as error:
            await self._resume()
            raise WeightUpdateError(f"starting a weight update failed: {error}") from error

    async def receive_weights(self, update_info: Mapping[str, Any], version: int) -> None:
        """The update's data (a path, or the metadata of the broadcasts that follow). On
        failure the engine resumes under its old version label and the error propagates."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        what = update_info.get("path", f"{self.weight_transfer} update")
        try:
            await self._engine().update_weights(
                WeightTransferUpdateRequest(update_info=dict(update_info)))
        except Exception as error:  # vLLM relays a worker's failure as a bare Exception
            await self._resume()
            raise WeightUpdateError(
                f"loading {what} as version {version} failed (engine still labelled version "
                f"{self._version}): {error}") from error

    async def finish_update(self, version: int) -> float:
        """Close the update, label the weights `version` (the token spans split exactly here),
        resume; return the seconds since `begin_update`."""
        llm = self._engine()
        try:
            await llm.finish_weight_update(weight_version=str(version))
        except Exception as error:
            await self._resume()
            raise WeightUpdateError(f"finishing the update to version {version} failed "
                                    f"(engine still labelled version {self._version}): "
                                    f"{error}") from error
        await self._resume(new_version=version)
        return time.perf_counter() - self._update_started

    async def abort_update(self) -> None:
        """Close an update left open by a failure elsewhere (another engine, the learner) and
        resume under the old version label; a no-op when no update is open."""
        if self._weights_ready.is_set():
            return
        try:
            await self._engine().finish_weight_update()
        except Exception as error:  # noqa: BLE001 - resuming matters more than why it failed
            _log.warning("closing an aborted weight update failed: %s", error)
        finally:
            await self._resume()

    async def _resume(self, new_version: int | None = None) -> None:
        """Resume generation; with `new_version`, first label the weights (before any waiting
        request can take the new cache salt)."""
        llm = self._engine()
        if new_version is not None:
            self._version = new_version
        try:
            await llm.resume_generation()
        finally:
            self._weights_ready.set()
        if new_version is not None and self._in_flight == 0 \
                and not await llm.reset_prefix_cache():
            _log.warning("reset_prefix_cache() refused with no request in flight; the cache "
                         "salt still keeps old blocks from new requests")

    async def fingerprint(self, names: Iterable[str]) -> dict[str, float]:
        """The fingerprint of the named tensors as the engine holds them (one worker: TP=1)."""
        results = await self._engine().collective_rpc("slipstream_fingerprint",
                                                      args=(list(names),))
        return results[0]
