"""The replay buffer as a Ray actor, and its files on disk.

The actor is async: a worker's `acquire_ticket` and the learner's `take_batch` wait on one
`asyncio.Condition` instead of polling, and every state change notifies it. The policy itself
lives in `ReplayBuffer` (pure, unit-tested); this file only adds waiting and files.

On disk, under `DIR/buffer/` (JSON Lines, readable without Ray or slipstream):
* `snapshot-stepNNNNNN.jsonl`: every waiting sample, with its group's ticket and its age
  (learner version minus its oldest token's version) against `max_lag`; `snapshot-final.jsonl`
  at shutdown, whatever ended the run;
* `evictions.jsonl`: every evicted group, with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import ray

from slipstream.buffer.records import Group, to_json_dict
from slipstream.buffer.replay import ReplayBuffer


def write_snapshot(buffer: ReplayBuffer, directory: Path, step: int | str,
                   learner_version: int) -> Path:
    """Every waiting sample with its age; `step` "final" names the snapshot taken at shutdown."""
    name = f"step{step:06d}" if isinstance(step, int) else str(step)
    path = directory / f"snapshot-{name}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as out:
        for ticket in sorted(buffer.waiting):
            group = buffer.waiting[ticket]
            for sample in group.samples:
                row = {"ticket": ticket, "learner_version": learner_version,
                       "age": learner_version - sample.oldest_version,
                       "max_lag": buffer.max_lag, "sample": to_json_dict(sample)}
                out.write(json.dumps(row) + "\n")
    tmp.rename(path)
    return path


@ray.remote(num_cpus=0)
class ReplayBufferActor:
    def __init__(self, groups_per_step: int, max_lag: int, capacity_groups: int,
                 directory: str) -> None:
        self._buffer = ReplayBuffer(groups_per_step, max_lag, capacity_groups)
        self._changed = asyncio.Condition()
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._closed = False

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def acquire_ticket(self) -> int | None:
        """Wait until a group may be started; None once the buffer is closed."""
        async with self._changed:
            while not self._closed:
                ticket = self._buffer.try_ticket()
                if ticket is not None:
                    return ticket
                await self._changed.wait()
        return None

    async def put(self, ticket: int, group: Group) -> None:
        self._buffer.put(ticket, group)
        await self._notify()

    async def set_rollout_version(self, version: int) -> None:
        self._buffer.set_rollout_version(version)
        await self._notify()

    async def take_batch(self, learner_version: int, timeout_s: float) -> list[Group] | None:
        """A batch within the staleness bound, waiting up to `timeout_s`; None on time-out."""
        async def wait_for_batch() -> list[Group]:
            async with self._changed:
                while True:
                    before = len(self._buffer.evictions)
                    batch = self._buffer.take_batch(learner_version)
                    self._log_evictions(self._buffer.evictions[before:])
                    if batch is not None:
                        self._changed.notify_all()   # freed capacity: workers may go on
                        return batch
                    await self._changed.wait()
        try:
            return await asyncio.wait_for(wait_for_batch(), timeout_s)
        except asyncio.TimeoutError:
            return None

    def _log_evictions(self, evictions: list) -> None:
        if not evictions:
            return
        with (self._dir / "evictions.jsonl").open("a") as out:
            for eviction in evictions:
                out.write(json.dumps(dataclasses.asdict(eviction)) + "\n")

    async def snapshot(self, step: int | str, learner_version: int) -> str:
        return str(write_snapshot(self._buffer, self._dir, step, learner_version))

    async def stats(self, learner_version: int) -> dict[str, float]:
        return self._buffer.stats(learner_version)

    async def close(self) -> None:
        """Wake every waiting worker with None so it can finish cleanly."""
        self._closed = True
        await self._notify()
