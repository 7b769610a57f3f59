"""The learner's handle on the engines' weight-sync control plane.

vLLM 0.32 splits a weight sync into a trainer-side engine (`TrainerWeightTransferEngine`: one
`send_weights()` per sync; trainer/weight_transfer.py) and a client it drives, with four calls:
`init_weight_transfer_engine`, `start_weight_update`, `update_weights`, `finish_weight_update`
(the `VLLMWeightSyncClient` protocol). vLLM's own Ray client sends one identical dict to every
engine and neither pauses generation nor labels a version; this one, for slipstream's engines:

* gives engine `i` its own rank in a collective group (`rank_offset = 1 + i * engine_world_size`;
  vLLM's trainer engines write `rank_offset=1` for every engine);
* `start` pauses each engine with its requests in flight kept (`Engine.begin_update`), and
  `finish` labels the weights with the learner's version (vLLM's trainer engines call it
  without one: the version set in `pending_version` is used), resumes, and reads back each
  engine's fingerprint of `fingerprint_names` (`results`), which the controller compares with
  what was sent;
* bounds every call by `timeout_s` plus a grace period (the engines' own waits, bounded by
  `timeout_s`, end first, and their error says why), and says in one line which engine failed
  and how.

Two transports, one behaviour: `RayWorkersClient` (rollout-worker actors, the pipeline) and
`LocalEnginesClient` (engines on an asyncio loop in this process: the reference loop, tests,
benchmarks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from slipstream.errors import SlipstreamError, one_line


class EngineSyncClient:
    """`VLLMWeightSyncClient` over N engines. Subclasses implement `_call_each`."""

    GRACE_S = 15.0

    def __init__(self, num_engines: int, *, fingerprint_names: Sequence[str] = (),
                 engine_world_size: int = 1, timeout_s: float = 120.0) -> None:
        self.num_engines, self.engine_world_size = num_engines, engine_world_size
        self.fingerprint_names = list(fingerprint_names)
        self.timeout_s = timeout_s
        self.pending_version = 0       # the version the next finish labels the weights with
        self.results: list[dict[str, Any]] = []   # per engine, after the last finish

    @property
    def world_size(self) -> int:
        """Ranks of a collective group: the learner plus every engine's workers."""
        return 1 + self.num_engines * self.engine_world_size

    # -- vLLM's VLLMWeightSyncClient protocol -----------------------------------------------
    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        infos = []
        for i in range(self.num_engines):
            info = dict(init_info)
            if "rank_offset" in info:
                info["rank_offset"] = 1 + i * self.engine_world_size
            infos.append((info,))
        self._call_each("init_weight_transfer", infos, "joining the weight transfer")

    def start_weight_update(self) -> None:
        self._or_abort("begin_update", [()] * self.num_engines, "pausing for an update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        infos = update_info if isinstance(update_info, list) else \
            [update_info] * self.num_engines
        self._or_abort("receive_weights", [(info, self.pending_version) for info in infos],
                       f"receiving version {self.pending_version}")

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = self.pending_version if weight_version is None else int(weight_version)
        what = f"finishing version {version}"
        seconds = self._or_abort("finish_update", [(version,)] * self.num_engines, what)
        landed = self._call_each("fingerprint", [(self.fingerprint_names,)] * self.num_engines,
                                 f"reading back version {version}")
        self.results = [{"seconds": s, "fingerprint": f, "version": version}
                        for s, f in zip(seconds, landed)]

    def _or_abort(self, method: str, args: Sequence[tuple], what: str) -> list[Any]:
        """`_call_each`; if it fails on any engine, every engine still in the update resumes
        under its old version before the error propagates (none stays paused)."""
        try:
            return self._call_each(method, args, what)
        except Exception:
            try:
                self._call_each("abort_update", [()] * self.num_engines, "aborting the update")
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise

    # -- transport -----------------------------------------------------------------------------
    def _call_each(self, method: str, args: Sequence[tuple], what: str) -> list[Any]:
        """Call `method(*args[i])` on engine i, all at once; their results in engine order."""
        raise NotImplementedError


class RayWorkersClient(EngineSyncClient):
    """Over rollout-worker actors (rollout/worker.py), which pass each call to their engine."""

    def __init__(self, workers: Sequence[Any], **kwargs: Any) -> None:
        super().__init__(len(workers), **kwargs)
        self.workers = list(workers)

    def replace_worker(self, index: int, worker: Any) -> RayWorkersClient:
        """`worker` takes worker `index`'s place (its process died and was replaced); returns
        a client over the new worker alone, to bring it to the running version."""
        self.workers[index] = worker
        alone = RayWorkersClient([worker], fingerprint_names=self.fingerprint_names,
                                 engine_world_size=self.engine_world_size,
                                 timeout_s=self.timeout_s)
        return alone

    def _call_each(self, method: str, args: Sequence[tuple], what: str) -> list[Any]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        refs = [getattr(w, method).remote(*a) for w, a in zip(self.workers, args)]
        results = []
        for worker_id, ref in enumerate(refs):
            try:
                results.append(ray.get(ref, timeout=self.timeout_s + self.GRACE_S))
            except GetTimeoutError:
                raise SlipstreamError(f"weight sync: {what} on worker {worker_id} did not "
                                      f"finish within {self.timeout_s + self.GRACE_S:g}s"
                                      ) from None
            except (RayTaskError, RayActorError) as error:
                raise SlipstreamError(f"weight sync: {what} failed on worker {worker_id}: "
                                      f"{one_line(error)}") from None
        return results


class LocalEnginesClient(EngineSyncClient):
    """Over engines that live on the asyncio loop `loop`, which runs in another thread than the
    caller's (the learner's send blocks its own thread while the engines receive)."""

    def __init__(self, engines: Sequence[Any], loop: asyncio.AbstractEventLoop,
                 **kwargs: Any) -> None:
        super().__init__(len(engines), **kwargs)
        self.engines, self.loop = list(engines), loop

    def _call_each(self, method: str, args: Sequence[tuple], what: str) -> list[Any]:
        async def all_engines():
            calls: list[Callable] = [getattr(e, method) for e in self.engines]
            return await asyncio.wait_for(
                asyncio.gather(*(call(*a) for call, a in zip(calls, args)),
                               return_exceptions=True), self.timeout_s + self.GRACE_S)

        try:
            # Bounded twice: `wait_for` inside, and here in case the loop itself stopped.
            results = asyncio.run_coroutine_threadsafe(all_engines(), self.loop).result(
                timeout=self.timeout_s + 2 * self.GRACE_S)
        except TimeoutError:
            raise SlipstreamError(f"weight sync: {what} did not finish within "
                                  f"{self.timeout_s + self.GRACE_S:g}s") from None
        for engine_id, result in enumerate(results):
            if isinstance(result, BaseException):
                raise SlipstreamError(f"weight sync: {what} failed on engine {engine_id}: "
                                      f"{one_line(result)}") from result
        return results
