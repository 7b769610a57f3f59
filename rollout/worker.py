"""The rollout worker: a Ray actor that owns one vLLM `AsyncLLM` and never stops generating.

    run():  groups_in_flight loops, each:  ticket <- buffer.acquire_work()     (waits: backpressure,
                                                                                staleness bound)
                                           index  <- ticket, or the curriculum's pick
                                                     (buffer.prompt_index)
                                           group  <- rollout_group(env.prompt(index))
                                                     (episodes when the env takes turns)
                                           group  <- teacher.score(group)   (distillation only)
                                           buffer.put(ticket, group)
            or, while no ticket may start:  explore an unsolved prompt with explore_k samples
                                            (the curriculum's exploration; buffer.explored)
    weight sync, as the learner's client drives it (rollout/sync_client.py):
        init_weight_transfer (once) ; begin_update: pause, in-flight requests kept ;
        receive_weights ; finish_update: label the version, resume ; fingerprint

Both run on the actor's one event loop, so a weight update lands between two engine steps of the
groups in flight; their tokens after the update carry the new version. The prompt of a group is
`env.prompt(ticket)`, so which worker runs a ticket does not change what is generated.
"""

from __future__ import annotations

import asyncio

import ray

from slipstream.envs import EnvConfig, build_env
from slipstream.model_config import ModelConfig
from slipstream.rewards import JudgeRewards, RewardConfig, RewardRunner, build_reward
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine_api import build_engine
from slipstream.rollout.episode import rollout_group
from slipstream.rollout.teacher_config import TeacherConfig
from slipstream.rollout.teacher_scoring import GroupTeacher


@ray.remote
class RolloutWorker:
    """Each part of the run config it needs, as is: `model.path` resolved to a local directory."""

    def __init__(self, model: ModelConfig, rollout: RolloutConfig, env: EnvConfig,
                 reward: RewardConfig, buffer, *, seed: int, deterministic: bool,
                 worker_id: int, weight_transfer: str, teacher: TeacherConfig | None = None,
                 teacher_actors: dict | None = None, curriculum: bool = False,
                 explore_k: int = 0, judge=None) -> None:
        """`teacher_actors`: each teacher member's TeacherActor by name (rollout/teachers.py);
        a live self-teacher scores on this worker's own engine. `curriculum`: the buffer picks
        each ticket's prompt (envs/curriculum.py); else ticket k is prompt k. `explore_k`: the
        samples of an exploration group. `judge`: the judge's actor for reward.kind=judge."""
        self._model, self._rollout = model, rollout
        self._teacher_config, self._teacher_actors = teacher, teacher_actors or {}
        self._teacher: GroupTeacher | None = None
        self._seed, self._worker_id, self._curriculum = seed, worker_id, curriculum
        self._explore_rollout = rollout.model_copy(update={"group_size": explore_k})
        self._buffer = buffer
        self._engine = build_engine(model, rollout, seed, deterministic, weight_transfer)
        self._env = build_env(env, seed=seed)
        if reward.kind == "judge":
            from transformers import AutoTokenizer

            self._rewards = JudgeRewards(reward, judge, AutoTokenizer.from_pretrained(reward.model))
        else:
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
        if self._teacher_config is not None and self._teacher_config.enabled:
            self._teacher = GroupTeacher(self._teacher_config, self._teacher_actors, self._engine,
                                         self._tokenizer, self._seed)

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
            work = await self._buffer.acquire_work.remote(self._worker_id)
            if work is None:
                return
            kind, ticket = work
            if kind == "explore":
                await self._explore(index=ticket)
                continue
            index = await self._buffer.prompt_index.remote(ticket) if self._curriculum else ticket
            prompt = self._env.prompt(index)
            group = await rollout_group(self._engine, self._tokenizer, self._rewards, self._env,
                                        prompt, ticket, self._rollout, self._seed,
                                        self._worker_id)
            if self._teacher is not None:   # scored here, so the learner never waits for it
                group = await self._teacher.score(group, prompt)
            await self._buffer.put.remote(ticket, group)

    async def _explore(self, index: int) -> None:
        """`explore_k` samples of prompt `index`, scored and reported; never trained on. Their
        seeds and ids use ticket -1 - index, which no group of the run has."""
        prompt = self._env.prompt(index)
        group = await rollout_group(self._engine, self._tokenizer, self._rewards, self._env,
                                    prompt, -1 - index, self._explore_rollout, self._seed,
                                    self._worker_id)
        await self._buffer.explored.remote(index, list(group.rewards_G), dict(prompt.metadata))

    # -- the weight sync, one call per step of vLLM's protocol (rollout/sync_client.py) ----
    async def init_weight_transfer(self, init_info: dict) -> None:
        await self._engine.init_weight_transfer(init_info)

    async def begin_update(self) -> None:
        await self._engine.begin_update()

    async def receive_weights(self, update_info: dict, version: int) -> None:
        await self._engine.receive_weights(update_info, version)

    async def finish_update(self, version: int) -> float:
        """Seconds the engine was paused for this update."""
        return await self._engine.finish_update(version)

    async def abort_update(self) -> None:
        await self._engine.abort_update()

    async def fingerprint(self, names: list[str]) -> dict[str, float]:
        return await self._engine.fingerprint(names)

    def node_id(self) -> str:
        """The Ray node this worker runs on (a host-bound transfer checks it)."""
        return ray.get_runtime_context().get_node_id()

    async def stats(self) -> dict[str, int]:
        """Tokens generated so far, in-flight requests included (the engine's live counter),
        and reward processes replaced (rewards/runner.py); reward and group statistics come
        from the batches themselves (launch/metrics.py)."""
        return {"tokens": self._engine.tokens_generated,
                "reward_restarts": self._rewards.restarts,
                "teacher_errors": self._teacher.errors if self._teacher is not None else 0}

    async def shutdown(self) -> None:
        self._rewards.close()
        await self._engine.shutdown()
