"""The replay pool: trained groups kept to serve more batches (`buffer.replay`).

A group enters the pool after a learner step trained on it (`admit`, with what the learner
reported: each sample's trainer logprobs then, the group's mean |advantage|), and leaves it when
a batch takes it (it comes back after that step, one pass further) or when it is evicted, always
with a reason:

    passes_used     it has served `passes` steps
    zero_advantage  its last advantages were all 0 (equal rewards): another pass trains nothing
    solved          priority "medium": every sample solved it (ExGRPO retires such prompts)
    unsolved        priority "medium": no sample solved it (no success to learn from)
    replay_age      its oldest token is more than `max_age` versions behind the learner
    capacity        the pool holds `capacity_groups`; the lowest-priority group leaves

Priorities (which groups serve first; ties go to the lower ticket, so the order is
deterministic):

    oldest     lowest ticket first (first in, first out)
    advantage  largest mean |advantage| when last trained (TRL's replay ranks by |A|)
    medium     ExGRPO's (Zhan et al. 2025, arXiv 2510.02245) buckets by success rate p (the share
               of samples whose reward reaches `success_threshold`), the bucket closest to
               p = 1/2 first. ExGRPO draws buckets at random with Gaussian weights around 1/2 and
               replays one trajectory per prompt; here whole groups are replayed (group-relative
               advantages need the group) in a fixed order, so a run repeats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from slipstream.buffer.config import ReplayConfig
from slipstream.buffer.records import Group, TrainedSample

Evict = Callable[[Group, str, int], None]   # (group, reason, learner_version)


def success_rate(group: Group, threshold: float) -> float:
    return sum(s.reward >= threshold for s in group.samples) / len(group.samples)


@dataclass
class ReplayPool:
    config: ReplayConfig
    max_age: int
    groups: dict[str, Group] = field(default_factory=dict)   # group_id -> group

    def priority_key(self, group: Group) -> tuple:
        """Sorts the pool so that the group to serve first comes first."""
        if self.config.priority == "advantage":
            return (-(group.last_abs_advantage or 0.0), group.ticket)
        if self.config.priority == "medium":
            p = success_rate(group, self.config.success_threshold)
            return (abs(p - 0.5), group.ticket)
        return (group.ticket,)

    def _retire_reason(self, group: Group) -> str | None:
        if group.reuse_count >= self.config.passes:
            return "passes_used"
        if group.last_abs_advantage == 0.0:
            return "zero_advantage"
        if self.config.priority == "medium":
            p = success_rate(group, self.config.success_threshold)
            if p == 1.0:
                return "solved"
            if p == 0.0:
                return "unsolved"
        return None

    def admit(self, group: Group, learner_version: int, evict: Evict) -> None:
        """A group a step just trained on (its replay fields already updated): kept, or
        retired with its reason; then the capacity is enforced."""
        reason = self._retire_reason(group)
        if reason is not None:
            evict(group, reason, learner_version)
            return
        self.groups[group.group_id] = group
        if len(self.groups) > self.config.capacity_groups:
            worst = max(self.groups.values(), key=self.priority_key)
            evict(self.groups.pop(worst.group_id), "capacity", learner_version)

    def expire(self, learner_version: int, evict: Evict) -> None:
        """Evict every group older than `max_age` at `learner_version`."""
        for group in sorted(self.groups.values(), key=lambda g: g.ticket):
            if learner_version - group.oldest_version > self.max_age:
                evict(self.groups.pop(group.group_id), "replay_age", learner_version)

    def take(self, count: int) -> list[Group]:
        """The `count` highest-priority groups, removed from the pool."""
        chosen = sorted(self.groups.values(), key=self.priority_key)[:count]
        for group in chosen:
            del self.groups[group.group_id]
        return chosen

    def __len__(self) -> int:
        return len(self.groups)


def step_report(trained: Iterable[TrainedSample]) -> dict[str, dict]:
    """What the buffer needs back from a learner step about each group it trained
    (ReplayBuffer.after_step): every sample's trainer logprobs (the policy before the step's
    update: the proximal anchor when the group is replayed) and the group's mean |advantage|."""
    by_group: dict[str, list[TrainedSample]] = {}
    for record in trained:
        by_group.setdefault(record.sample.group_id, []).append(record)
    return {group_id: {"anchor_logprobs": [list(r.trainer_logprobs_T) for r in records],
                       "abs_advantage": sum(abs(r.advantage) for r in records) / len(records)}
            for group_id, records in by_group.items()}
