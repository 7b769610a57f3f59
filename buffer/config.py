"""The buffer section of the config: staleness, capacity, snapshots and the schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
