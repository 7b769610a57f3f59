"""The buffer section of the config: staleness, capacity, snapshots, the schedule and replay."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ReplayConfig(BaseModel):
    """Replay of trained groups (buffer/replay_pool.py): a group that trained once may serve
    `passes - 1` more batches while it is at most `max_age` versions old."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    passes: int = Field(1, ge=1, description=(
        "How many learner steps a group may serve in all (1: consume once, no replay; 2: each "
        "group trains up to twice)."))
    share: float | None = Field(None, ge=0, lt=1, description=(
        "Share of each batch's groups drawn from replay once the pool holds enough (the rest "
        "are freshly generated). Default (None): (passes - 1) / passes, the share at which "
        "every group can serve all its passes."))
    max_age: int | None = Field(None, ge=1, description=(
        "Oldest a group may be when replayed: learner version minus its oldest token's "
        "version. Separate from max_lag, which bounds freshness at first use, and at least "
        "max_lag. Default (None): max_lag + 4 x passes."))
    capacity_groups: int = Field(256, ge=1, description=(
        "Trained groups kept for replay; past it the lowest-priority ones are evicted "
        "(reason 'capacity'). It never holds the workers back."))
    priority: Literal["oldest", "advantage", "medium"] = Field("oldest", description=(
        "Which waiting replay groups serve first. oldest: lowest ticket. advantage: largest "
        "mean |advantage| when last trained. medium: ExGRPO's buckets by group success rate, "
        "closest to half solved first; fully solved and unsolved groups are retired."))
    success_threshold: float = Field(0.5, description=(
        "A sample counts as solved for the medium priority when its reward is at least this."))

    @property
    def enabled(self) -> bool:
        return self.passes > 1

    def resolved_share(self) -> float:
        return (self.passes - 1) / self.passes if self.share is None else self.share

    def resolved_max_age(self, max_lag: int) -> int:
        return max_lag + 4 * self.passes if self.max_age is None else self.max_age

    def replay_groups(self, groups_per_step: int) -> int:
        """Replayed groups in a full batch (the rest are fresh)."""
        return round(self.resolved_share() * groups_per_step) if self.enabled else 0

    def check(self, max_lag: int, groups_per_step: int, schedule: str) -> None:
        """What cannot be satisfied, as one ValueError line before anything starts."""
        share = self.resolved_share()
        if not self.enabled:
            if share > 0:
                raise ValueError(f"buffer.replay.share={share:g} needs buffer.replay.passes >= 2 "
                                 "(with one pass no group is ever replayed)")
            return
        if self.share == 0:
            raise ValueError(f"buffer.replay.passes={self.passes} with share 0 never replays a "
                             "group: give a share > 0 or leave it unset")
        replayed = self.replay_groups(groups_per_step)
        if replayed == 0:
            raise ValueError(f"buffer.replay.share={share:g} of {groups_per_step} groups per step "
                             "rounds to 0 replayed groups: raise the share or groups_per_step")
        if replayed >= groups_per_step:
            raise ValueError(f"buffer.replay.share={share:g} leaves no fresh group in a batch of "
                             f"{groups_per_step}: the replay pool starts empty and would never "
                             "fill")
        if self.resolved_max_age(max_lag) < max_lag:
            raise ValueError(f"buffer.replay.max_age ({self.max_age}) is below buffer.max_lag "
                             f"({max_lag}): a group could be too old to replay when first used")
        if schedule == "pinned":
            raise ValueError("buffer.replay with buffer.schedule=pinned: how many fresh groups "
                             "a step takes depends on the replay pool at run time, which the "
                             "pinned schedule cannot plan; use schedule=free (deterministic "
                             "mode still holds bitwise)")


class BufferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    max_lag: int = Field(1, ge=0, description=(
        "Staleness bound: no trained token is older than learner version minus max_lag. "
        "0 reproduces synchronous on-policy training."))
    capacity_groups: int = Field(64, ge=1, description="Finished groups the buffer holds before "
                                 "it holds the workers back.")
    snapshot_every: int = Field(10, ge=1, description="Learner steps between buffer snapshots.")
    schedule: Literal["free", "pinned"] = Field("free", description=(
        "free: a group starts as soon as the staleness bound allows, and weight updates land "
        "mid-generation. pinned: every group is generated whole with version step - max_lag "
        "and an update waits for the groups of the version before it, so asynchronous runs "
        "repeat exactly (with deterministic=true) at the price of some overlap."))
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description=(
        "Replay of trained groups with importance-corrected losses (off by default)."))
