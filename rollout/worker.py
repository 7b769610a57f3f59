"""The rollout worker: a Ray actor that owns one vLLM `AsyncLLM` and never stops generating.

    run():  groups_in_flight loops, each:  ticket <- buffer.acquire_ticket()   (waits: backpressure,
                                                                                staleness bound)
                                           group  <- generate_group(env.prompt(ticket))
                                           buffer.put(ticket, group)
    update_weights(path, version):  pause (in-flight requests kept) -> load -> version -> resume

Both run on the actor's one event loop, so a weight update lands between two engine steps of the
groups in flight; their tokens after the update carry the new version. The prompt of a group is
`env.prompt(ticket)`, so which worker runs a ticket does not change what is generated.
"""

from __future__ import annotations

import asyncio

import ray

from slipstream.envs import EnvConfig, build_env
from slipstream.model_config import ModelConfig
from slipstream.rewards import RewardConfig, RewardRunner, build_reward
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine_api import build_engine
from slipstream.rollout.group import generate_group


@ray.remote
class RolloutWorker:
    """Each part of the run config it needs, as is: `model.path` resolved to a local directory."""

    def __init__(self, model: ModelConfig, rollout: RolloutConfig, env: EnvConfig,
                 reward: RewardConfig, buffer, *, seed: int, deterministic: bool,
                 worker_id: int) -> None:
        self._model, self._rollout = model, rollout
        self._seed, self._worker_id = seed, worker_id
        self._buffer = buffer
        self._engine = build_engine(model, rollout, seed, deterministic)
        self._env = build_env(env, seed=seed)
        self._rewards = RewardRunner(build_reward(reward), timeout_s=reward.timeout_s)
        self._tokenizer = None

    async def start(self) -> None:
        from transformers import AutoTokenizer

        try:
            await self._engine.start()
        except Exception as error:  # noqa: BLE001 - re-raised with a message Ray can carry
            # vLLM's config errors (pydantic) cannot be pickled back to the controller, which
            # would then show only "isn't serializable"; keep their text instead.
            lines = [line.strip() for line in str(error).splitlines()
                     if line.strip() and not line.strip().startswith("For further information")]
            detail = " | ".join(lines)[:400]
            raise RuntimeError(f"vLLM engine failed to start for {self._model.path}: "
                               f"{type(error).__name__}: {detail}") from None
        self._tokenizer = AutoTokenizer.from_pretrained(self._model.path)

    async def run(self) -> None:
        """Generate until the buffer closes. An exception here ends the run (the controller
        watches this call), after the other loops are cancelled."""
        loops = [asyncio.create_task(self._loop()) for _ in range(self._rollout.groups_in_flight)]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()

    async def _loop(self) -> None:
        while True:
            ticket = await self._buffer.acquire_ticket.remote()
            if ticket is None:
                return
            group = await generate_group(self._engine, self._tokenizer, self._rewards,
                                         self._env.prompt(ticket), ticket, self._rollout,
                                         self._seed, self._worker_id)
            await self._buffer.put.remote(ticket, group)

    async def update_weights(self, weights_path: str, version: int,
                             fingerprint_names: list[str]) -> dict:
        """Load published weights in place; return the pause-to-resume seconds and the
        fingerprint of a few tensors read back from the engine (the learner compares it)."""
        seconds = await self._engine.update_weights(weights_path, version)
        fingerprint = await self._engine.fingerprint(fingerprint_names)
        return {"seconds": seconds, "fingerprint": fingerprint, "version": version}

    async def stats(self) -> dict[str, int]:
        """Tokens generated so far, in-flight requests included (the engine's live counter);
        reward and group statistics come from the batches themselves (launch/metrics.py)."""
        return {"tokens": self._engine.tokens_generated}

    async def shutdown(self) -> None:
        self._rewards.close()
        await self._engine.shutdown()
