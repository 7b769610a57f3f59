"""The replay buffer's policy: admission tickets, the staleness bound, eviction and backpressure.

This is the one place that enforces `max_lag` (STYLE.md point 3). It does so twice:

* **Before generation, by tickets.** A worker must take a ticket before it starts a group. Tickets
  are numbered in order; ticket k belongs to learner step `k // groups_per_step`, and is only
  handed out once the rollout workers hold weights of version >= `step - max_lag`. So a group is
  never *started* with weights too old for the step that will train on it, and nothing is
  generated only to be thrown away. With `max_lag = 0` the workers generate exactly one step's
  groups with the learner's current weights and then wait: synchronous on-policy training, with
  the same prompts in the same order as the reference loop.
* **At hand-out, by filtering.** `take_batch` evicts (and counts) any group whose oldest token is
  older than `learner_version - max_lag`, whatever the reason it got there.

Backpressure: tickets also stop when `capacity_groups` groups are waiting or in flight, so a slow
learner holds the workers back instead of growing memory without bound.

Dynamic sampling (DAPO; `drop_uniform=True`): a group whose rewards are all equal carries no
learning signal, so `put` drops it (an eviction with reason "uniform_reward"). Dropped groups
never train, so later tickets move up a step (`ticket_step`) and the workers generate more until
the batch is full. A long run of drops with nothing kept means the reward never varies: `put`
then raises instead of generating forever.

Batches are the `groups_per_step` waiting groups with the lowest tickets (oldest first), so the
order of training does not depend on which worker finished first.

Replay (`buffer.replay`, buffer/replay_pool.py): a batch then holds up to `R = share x
groups_per_step` groups from the replay pool and the rest fresh. How many are replayed at step s
is fixed when the learner first asks for that step (`_plan`): min(R, groups the pool can serve).
Tickets map to steps through that plan for the step being formed (before it is fixed: the
most the pool could serve, counting the groups lent to the step in training) and, beyond it,
through the fewest fresh groups a step can take (groups_per_step - R): a ticket is then never
placed at an earlier step than it will train at, so the staleness bound still holds at
generation. The controller reports each trained group back (`after_step`), and it re-enters the
pool.

The pinned schedule (`pinned=True`) makes asynchronous runs repeatable: ticket k is granted only
while the workers hold exactly version `pinned_version(k) = max(0, step(k) - max_lag)`, and the
controller publishes the next version only once every ticket pinned to the current one is back
(`generated_through`). No group then spans versions, every token's version is a function of
its ticket, and (with batch-invariant numerics and per-sample seeds) the run does not depend on
timing. The overlap stays: while the learner trains step s, the workers generate step s+max_lag.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from slipstream.buffer.config import ReplayConfig
from slipstream.buffer.records import Group, group_from_json, to_json_dict
from slipstream.buffer.replay_pool import ReplayPool

# Evictions of fresh groups, which never trained: later tickets move up a step for each.
FRESH_REASONS = frozenset({"stale", "uniform_reward"})


def is_uniform(group: Group) -> bool:
    """Every sample of the group has exactly the same reward: no learning signal (its
    group-relative advantages are all 0)."""
    return len(set(group.rewards_G)) == 1


@dataclass(frozen=True)
class Eviction:
    group_id: str
    ticket: int
    reason: str               # FRESH_REASONS, or a replay pool's (buffer/replay_pool.py)
    oldest_version: int
    learner_version: int


@dataclass
class ReplayBuffer:
    groups_per_step: int
    max_lag: int
    capacity_groups: int
    rollout_version: int = 0                 # the weights the rollout workers hold
    next_ticket: int = 0
    waiting: dict[int, Group] = field(default_factory=dict)   # ticket -> finished group
    in_flight: set[int] = field(default_factory=set)          # tickets handed out, not yet put
    # Tickets handed out once whose group never came back (a run resumed from a checkpoint, a
    # worker that died): handed out again, lowest first, before any new ticket.
    reissue: list[int] = field(default_factory=list)
    evictions: list[Eviction] = field(default_factory=list)
    eviction_counts: Counter = field(default_factory=Counter)
    groups_put: int = 0
    groups_taken: int = 0
    pinned: bool = False                     # the pinned schedule (module docstring)
    drop_uniform: bool = False               # dynamic sampling (module docstring)
    max_uniform_drops: int = 0               # drops in a row that end the run (0: no limit)
    uniform_drops_in_row: int = 0
    learner_version: int = 0                 # the last version that asked for a batch
    replay: ReplayConfig | None = None       # None or one pass: consume once
    pool: ReplayPool | None = None
    lent: dict[str, Group] = field(default_factory=dict)     # trained, awaiting after_step
    batches_taken: int = 0
    fresh_taken: int = 0                     # fresh groups handed out in batches
    replayed_taken: int = 0                  # replayed groups handed out in batches
    plan: tuple[int, int] | None = None      # (step, replayed groups) of the batch being formed

    def __post_init__(self) -> None:
        if self.capacity_groups < self.groups_per_step:
            raise ValueError(f"buffer capacity ({self.capacity_groups} groups) is smaller than "
                             f"one step's batch ({self.groups_per_step} groups)")
        if self.replay is not None and self.replay.enabled:
            self.pool = ReplayPool(self.replay, self.replay.resolved_max_age(self.max_lag))

    @property
    def fresh_evicted(self) -> int:
        return sum(n for reason, n in self.eviction_counts.items() if reason in FRESH_REASONS)

    def ticket_step(self, ticket: int) -> int:
        """The learner step that will train on `ticket`'s group. Evicted groups never train, so
        they do not count: later tickets move up instead of waiting for a step that never comes.
        With replay, an upper bound past the step being formed (module docstring)."""
        if self.pool is None:
            return (ticket - self.fresh_evicted) // self.groups_per_step
        wanted = self.replay.replay_groups(self.groups_per_step)
        fewest = self.groups_per_step - wanted
        if self.plan is not None and self.plan[0] == self.batches_taken:
            current = self.groups_per_step - self.plan[1]
        else:   # the pool can only grow by the groups lent out: at most that many replayed
            current = self.groups_per_step - min(wanted, len(self.pool) + len(self.lent))
        position = ticket - self.fresh_evicted - self.fresh_taken
        if position < current:
            return self.batches_taken
        return self.batches_taken + 1 + (position - current) // fewest

    def pinned_version(self, ticket: int) -> int:
        """The one weight version the pinned schedule generates `ticket` with."""
        return max(0, self.ticket_step(ticket) - self.max_lag)

    def try_ticket(self) -> int | None:
        """The next ticket if the staleness bound and the capacity allow starting it, else None.
        A ticket to re-issue comes first, under the same rules: the same prompt and seeds, and
        a weight version its step allows (under the pinned schedule, exactly its own)."""
        if len(self.waiting) + len(self.in_flight) >= self.capacity_groups:
            return None
        ticket = self.reissue[0] if self.reissue else self.next_ticket
        if self.ticket_step(ticket) - self.max_lag > self.rollout_version:
            return None
        if self.pinned and self.pinned_version(ticket) != self.rollout_version:
            return None
        if self.reissue:
            self.reissue.pop(0)
        else:
            self.next_ticket += 1
        self.in_flight.add(ticket)
        return ticket

    def reissue_tickets(self, tickets) -> None:
        """Hand these in-flight tickets out again (their worker is gone)."""
        lost = set(tickets) & self.in_flight
        self.in_flight -= lost
        self.reissue = sorted(set(self.reissue) | lost)

    def put(self, ticket: int, group: Group) -> None:
        if ticket not in self.in_flight:
            raise ValueError(f"group {group.group_id} came back with unknown ticket {ticket}")
        self.in_flight.discard(ticket)
        self.groups_put += 1
        if self.drop_uniform and is_uniform(group):
            self._evict(ticket, group, "uniform_reward", self.learner_version)
            self.uniform_drops_in_row += 1
            if self.max_uniform_drops and self.uniform_drops_in_row >= self.max_uniform_drops:
                raise ValueError(
                    f"dynamic sampling dropped {self.uniform_drops_in_row} groups in a row, every "
                    f"one with equal rewards (last: {group.rewards_G[0]}): the reward never "
                    "varies; check it, or turn trainer.loss.dynamic_sampling off")
            return
        self.uniform_drops_in_row = 0
        self.waiting[ticket] = group

    def set_rollout_version(self, version: int) -> None:
        self.rollout_version = version

    def generated_through(self, version: int) -> bool:
        """True once every ticket pinned to `version` or older has been granted and put back."""
        return (self.pinned_version(self.next_ticket) > version
                and all(self.pinned_version(t) > version
                        for t in (*self.in_flight, *self.reissue)))

    def _evict(self, ticket: int, group: Group, reason: str, learner_version: int) -> None:
        eviction = Eviction(group.group_id, ticket, reason, group.oldest_version, learner_version)
        self.evictions.append(eviction)
        self.eviction_counts[reason] += 1

    def _evict_from_pool(self, group: Group, reason: str, learner_version: int) -> None:
        self._evict(group.ticket, group, reason, learner_version)

    def drain_evictions(self) -> list[Eviction]:
        """The evictions since the last call, forgotten here (the actor writes them to disk),
        so a long run's buffer does not grow with them."""
        drained, self.evictions = self.evictions, []
        return drained

    def evict_stale(self, learner_version: int) -> None:
        """Drop waiting groups whose oldest token is beyond the staleness bound."""
        floor = learner_version - self.max_lag
        for ticket in sorted(t for t, g in self.waiting.items() if g.oldest_version < floor):
            self._evict(ticket, self.waiting.pop(ticket), "stale", learner_version)

    def _plan(self, learner_version: int) -> int:
        """How many replayed groups the batch being formed takes (fixed at its first ask)."""
        if self.pool is None:
            return 0
        self.pool.expire(learner_version, self._evict_from_pool)
        if self.plan is None or self.plan[0] != self.batches_taken:
            wanted = self.replay.replay_groups(self.groups_per_step)
            self.plan = (self.batches_taken, min(wanted, len(self.pool)))
        return self.plan[1]

    def take_batch(self, learner_version: int) -> list[Group] | None:
        """`groups_per_step` groups: fresh ones within the staleness bound, lowest tickets
        first, then (with replay) the planned number from the pool by priority; or None."""
        self.learner_version = learner_version
        self.evict_stale(learner_version)
        replayed = self._plan(learner_version)
        fresh = self.groups_per_step - replayed
        if len(self.waiting) < fresh:
            return None
        tickets = sorted(self.waiting)[:fresh]
        batch = [self.waiting.pop(t) for t in tickets]
        if self.pool is not None:
            batch += self.pool.take(replayed)
            self.lent.update((g.group_id, g) for g in batch)
        self.groups_taken += len(batch)
        self.batches_taken += 1
        self.fresh_taken += fresh
        self.replayed_taken += replayed
        return batch

    def after_step(self, trained: dict[str, dict[str, Any]], learner_version: int) -> None:
        """What a step did with the groups of its batch (group_id -> `anchor_logprobs` and
        `abs_advantage`: buffer/replay_pool.py `step_report`); `learner_version` is the version that
        trained them. Each goes back to the pool one pass further, or is retired."""
        if self.pool is None:
            return
        for group_id, report in trained.items():
            group = self.lent.pop(group_id, None)
            if group is None:
                raise ValueError(f"after_step: group {group_id} was not handed out")
            group = dataclasses.replace(
                group, reuse_count=group.reuse_count + 1, last_trained_version=learner_version,
                anchor_logprobs=tuple(tuple(a) for a in report["anchor_logprobs"]),
                last_abs_advantage=report["abs_advantage"])
            self.pool.admit(group, learner_version, self._evict_from_pool)

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to go on exactly where this one is, as plain JSON:
        the waiting groups whole, and the tickets in flight (to be generated again)."""
        return {"next_ticket": self.next_ticket,
                "reissue": sorted({*self.in_flight, *self.reissue}),
                "waiting": [to_json_dict(self.waiting[t]) for t in sorted(self.waiting)],
                "eviction_counts": dict(self.eviction_counts), "groups_put": self.groups_put,
                "groups_taken": self.groups_taken,
                "uniform_drops_in_row": self.uniform_drops_in_row,
                "learner_version": self.learner_version,
                # Groups lent to a step whose report never came are kept for replay as they were.
                "replay_pool": [to_json_dict(g) for g in self.held_for_replay()],
                "batches_taken": self.batches_taken, "fresh_taken": self.fresh_taken,
                "replayed_taken": self.replayed_taken,
                "plan": None if self.plan is None else list(self.plan)}

    def held_for_replay(self) -> list[Group]:
        if self.pool is None:
            return []
        kept = [*self.pool.groups.values(),
                *(g for g in self.lent.values() if g.reuse_count > 0)]
        return sorted(kept, key=lambda g: g.ticket)

    def restore(self, state: dict[str, Any]) -> None:
        """The inverse of `state`, into a new buffer of the same configuration."""
        self.next_ticket = state["next_ticket"]
        self.reissue = list(state["reissue"])
        self.in_flight = set()
        self.waiting = {g.ticket: g for g in map(group_from_json, state["waiting"])}
        self.eviction_counts = Counter(state["eviction_counts"])
        self.groups_put, self.groups_taken = state["groups_put"], state["groups_taken"]
        self.uniform_drops_in_row = state["uniform_drops_in_row"]
        self.learner_version = state["learner_version"]
        self.batches_taken = state.get("batches_taken", self.groups_taken // self.groups_per_step)
        self.fresh_taken = state.get("fresh_taken", self.groups_taken)
        self.replayed_taken = state.get("replayed_taken", 0)
        self.plan = tuple(state["plan"]) if state.get("plan") is not None else None
        self.restore_pool(map(group_from_json, state.get("replay_pool", [])))

    def restore_pool(self, groups) -> None:
        """Put these trained groups back in the replay pool (a resume, a snapshot read back)."""
        groups = list(groups)
        if groups and self.pool is None:
            raise ValueError(f"{len(groups)} replay groups to restore into a buffer without "
                             "replay (buffer.replay.passes is 1)")
        for group in groups:
            self.pool.groups[group.group_id] = group

    def stats(self, learner_version: int) -> dict[str, float]:
        ages = [learner_version - g.oldest_version for g in self.waiting.values()]
        return self._replay_stats(learner_version) | {
            "buffer/waiting_groups": len(self.waiting),
            "buffer/in_flight_groups": len(self.in_flight),
            "buffer/reissue_groups": len(self.reissue),
            "buffer/evicted_stale": self.eviction_counts["stale"],
            "buffer/dropped_uniform": self.eviction_counts["uniform_reward"],
            "buffer/groups_put": self.groups_put,
            "buffer/groups_taken": self.groups_taken,
            "buffer/max_age": max(ages, default=0),
        }

    def _replay_stats(self, learner_version: int) -> dict[str, float]:
        if self.pool is None:
            return {}
        ages = [learner_version - g.oldest_version for g in self.pool.groups.values()]
        stats = {"replay/pool_groups": len(self.pool), "replay/groups_taken": self.replayed_taken,
                 "replay/fresh_groups_taken": self.fresh_taken}
        if ages:
            stats["replay/pool_max_age"] = max(ages)
        for reason, count in self.eviction_counts.items():
            if reason not in FRESH_REASONS:
                stats[f"replay/evicted_{reason}"] = count
        return stats
