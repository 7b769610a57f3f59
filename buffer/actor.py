"""The replay buffer as a Ray actor, and its files on disk.

The actor is async: a worker's `acquire_work` and the learner's `take_batch` wait on one
`asyncio.Condition` instead of polling, and every state change notifies it. The policy itself
lives in `ReplayBuffer` (pure, unit-tested); this file only adds waiting and files.

On disk, under `DIR/buffer/` (JSON Lines, readable without Ray or slipstream), written by
buffer/snapshots.py: `snapshot-stepNNNNNN.jsonl` and `snapshot-final.jsonl` (every waiting
sample with its age against `max_lag`, and every group kept for replay with its reuse count),
`evictions.jsonl` (every evicted or retired group, with the reason).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import ray

from slipstream.buffer.config import BufferConfig
from slipstream.buffer.records import Group
from slipstream.buffer.replay import ReplayBuffer
from slipstream.buffer.snapshots import append_evictions, write_snapshot


class IdleClock:
    """Seconds in which no group was being generated: every worker waited for a ticket (held
    back by max_lag or the pinned schedule) and none explored, so the engines' cores sat idle.
    Counted from the first ticket handed out (the engines' start-up is not idleness the learner
    can use)."""

    def __init__(self) -> None:
        self._idle_total = 0.0
        self._idle_since: float | None = None
        self._started = False

    def busy(self) -> None:
        if self._idle_since is not None:
            self._idle_total += time.monotonic() - self._idle_since
        self._idle_since, self._started = None, True

    def idle(self) -> None:
        if self._started and self._idle_since is None:
            self._idle_since = time.monotonic()

    def seconds(self) -> float:
        running = 0.0 if self._idle_since is None else time.monotonic() - self._idle_since
        return self._idle_total + running


@ray.remote(num_cpus=0)
class ReplayBufferActor:
    def __init__(self, config: BufferConfig, groups_per_step: int, directory: str,
                 max_uniform_drops: int | None = None, restore: dict | None = None,
                 curriculum: dict | None = None) -> None:
        """`max_uniform_drops`: dynamic sampling on, stopping after that many groups in a row
        were dropped for equal rewards; None: off. `restore`: what `export_state` returned in
        the run being resumed. `curriculum`: {"config", "env", "seed"} when a curriculum picks
        each ticket's prompt (envs/curriculum.py; the buffer sees every finished group)."""
        self._buffer = ReplayBuffer(groups_per_step, config.max_lag, config.capacity_groups,
                                    pinned=config.schedule == "pinned",
                                    drop_uniform=max_uniform_drops is not None,
                                    max_uniform_drops=max_uniform_drops or 0,
                                    replay=config.replay)
        self._changed = asyncio.Condition()
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._closed = False
        self._evictions_logged = 0        # lines in evictions.jsonl (a resume cuts it there)
        self._holder: dict[int, int] = {}  # ticket in flight -> the worker generating it
        self._exploring: dict[int, int] = {}  # prompt explored now -> the worker exploring it
        self._explored_this_step = 0          # exploration groups started since the last batch
        self._idle = IdleClock()            # while no ticket is held
        self._curriculum = None
        if curriculum is not None:
            from slipstream.envs import build_env
            from slipstream.envs.curriculum import EdgeCurriculum

            self._curriculum = EdgeCurriculum(curriculum["config"], build_env(
                curriculum["env"], seed=curriculum["seed"]), curriculum["seed"])
        if restore is not None:
            self._buffer.restore(restore["buffer"])
            self._evictions_logged = restore["evictions_logged"]
            if self._curriculum is not None and restore.get("curriculum"):
                self._curriculum.restore(restore["curriculum"])

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def acquire_work(self, worker_id: int = 0) -> tuple[str, int] | None:
        """Wait for work: ("ticket", t) once a group may be started, the ticket `worker_id`'s
        until its group is put (`reissue_worker`); while none may, ("explore", index) if the
        curriculum explores (envs/curriculum.py) and has an unsolved prompt; None once the
        buffer is closed."""
        async with self._changed:
            while not self._closed:
                ticket = self._buffer.try_ticket()
                if ticket is not None:
                    self._holder[ticket] = worker_id
                    self._idle.busy()
                    return "ticket", ticket
                index = self._explore_index()
                if index is not None:
                    self._exploring[index] = worker_id
                    self._explored_this_step += 1
                    self._idle.busy()
                    return "explore", index
                await self._changed.wait()
        return None

    def _explore_index(self) -> int | None:
        curriculum = self._curriculum
        if curriculum is None or not curriculum.config.explore_k or \
                self._explored_this_step >= curriculum.config.explore_per_step:
            return None
        return curriculum.explore_index()

    def _maybe_idle(self) -> None:
        if not self._holder and not self._exploring:
            self._idle.idle()

    async def explored(self, index: int, rewards: list[float], metadata: dict) -> bool:
        """An exploration group of prompt `index` is done: kept when one sample succeeded."""
        self._exploring.pop(index, None)
        self._maybe_idle()
        kept = self._curriculum.observe_exploration(index, rewards, metadata)
        await self._notify()
        return kept

    async def reissue_worker(self, worker_id: int) -> list[int]:
        """The tickets `worker_id` held (its process died): handed out again, to any worker."""
        lost = sorted(t for t, w in self._holder.items() if w == worker_id)
        for ticket in lost:
            del self._holder[ticket]
        for index in [i for i, w in self._exploring.items() if w == worker_id]:
            del self._exploring[index]          # its prompt is dropped, not explored again
        self._maybe_idle()
        self._buffer.reissue_tickets(lost)
        await self._notify()
        return lost

    async def prompt_index(self, ticket: int) -> int:
        """The env stream index of `ticket`'s prompt: the curriculum's pick, else the ticket."""
        return ticket if self._curriculum is None else self._curriculum.index_for(ticket)

    async def put(self, ticket: int, group: Group) -> None:
        if self._curriculum is not None and group.samples:
            self._curriculum.observe(ticket, group.rewards_G, group.samples[0].env_metadata)
        self._holder.pop(ticket, None)
        self._maybe_idle()
        try:
            self._buffer.put(ticket, group)
        finally:
            self._log_evictions()   # dynamic sampling's drops
            await self._notify()

    async def set_rollout_version(self, version: int) -> None:
        self._buffer.set_rollout_version(version)
        await self._notify()

    async def wait_generated(self, version: int) -> None:
        """Return once every ticket pinned to `version` or older is back (pinned schedule)."""
        async with self._changed:
            while not self._buffer.generated_through(version):
                await self._changed.wait()

    async def take_batch(self, learner_version: int, timeout_s: float) -> list[Group] | None:
        """A batch within the staleness bound, waiting up to `timeout_s`; None on time-out."""
        async def wait_for_batch() -> list[Group]:
            async with self._changed:
                while True:
                    batch = self._buffer.take_batch(learner_version)
                    self._log_evictions()
                    if batch is not None:
                        self._explored_this_step = 0
                        self._changed.notify_all()   # freed capacity: workers may go on
                        return batch
                    await self._changed.wait()
        try:
            return await asyncio.wait_for(wait_for_batch(), timeout_s)
        except asyncio.TimeoutError:
            return None

    def _log_evictions(self) -> None:
        evictions = self._buffer.drain_evictions()
        append_evictions(self._dir, evictions)
        self._evictions_logged += len(evictions)

    async def after_step(self, trained: dict[str, dict], learner_version: int) -> None:
        """The step's report on each group it trained (ReplayBuffer.after_step): they go back
        to the replay pool, or leave it with their reason."""
        try:
            self._buffer.after_step(trained, learner_version)
        finally:
            self._log_evictions()
            await self._notify()

    async def export_state(self) -> dict:
        """The buffer's state for a checkpoint (ReplayBuffer.state) and how many lines of
        evictions.jsonl belong to it."""
        return {"buffer": self._buffer.state(), "evictions_logged": self._evictions_logged,
                "curriculum": None if self._curriculum is None else self._curriculum.state()}

    async def snapshot(self, step: int | str, learner_version: int) -> str:
        return str(write_snapshot(self._buffer, self._dir, step, learner_version))

    async def stats(self, learner_version: int) -> dict[str, float]:
        """The buffer's figures, and `rollout/engine_idle_s`: cumulative seconds in which no
        group was being generated (IdleClock)."""
        curriculum = {} if self._curriculum is None else self._curriculum.metrics()
        return self._buffer.stats(learner_version) | curriculum | \
            {"rollout/engine_idle_s": self._idle.seconds()}

    async def close(self) -> None:
        """Wake every waiting worker with None so it can finish cleanly."""
        self._closed = True
        await self._notify()
