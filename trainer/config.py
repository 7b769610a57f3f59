"""The trainer section of the config: the learner, its optimizer, its loss and its syncs."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from slipstream.trainer.losses import GRPOLossConfig, LossConfig
from slipstream.trainer.optimizers import AdamWConfig, OptimizerConfig


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    groups_per_step: int = Field(8, ge=1, description="Groups (prompts) per learner step.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward pass.")
    lr: float = Field(1e-5, gt=0, description=(
        "Learning rate (constant after warm-up), one for every optimizer, so arms compare on "
        "one footing (Muon scales its matrices' steps to AdamW's RMS: trainer/optimizers.py)."))
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    optimizer: OptimizerConfig = Field(default_factory=AdamWConfig, description=(
        "adamw: AdamW on every parameter. muon: Muon on the transformer blocks' matrices, AdamW "
        "on embeddings, head, norms and biases. Each with its own settings."))
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clip (0: none).")
    # An int range, not Literal[0, 1, 2]: the command line hands over the string "0", which a
    # Literal of ints refuses.
    zero_stage: int = Field(0, ge=0, le=2, description=(
        "DeepSpeed ZeRO stage 0, 1 or 2. The learner is one process, so ZeRO shards nothing: "
        "stage 0 is the default because 1 and 2 flatten every gradient into a new fp32 buffer "
        "at each optimizer step (SmolLM2-135M: peak 5.6 GiB against 5.0 at stage 0). "
        "3 is refused for now: a publish already gathers the "
        "shards one decoder layer at a time (trainer/weight_transfer.py, tested), but the "
        "stale-token replay's weight copies and the final save do not gather yet."))
    num_gpus: float | None = Field(None, ge=0, description=(
        "GPUs Ray gives the learner (0: CPU; a fraction shares a GPU with an engine). None: "
        "chosen from the node (launch/placement.py)."))
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field("auto", description=(
        "torch threads of the learner. 'auto': set before every step to the cores the rollout "
        "engines left idle during the last one (launch/placement.py `LearnerThreads`); a "
        "number: fixed."))
    loss: LossConfig = Field(default_factory=GRPOLossConfig, description=(
        "The loss recipe (`kind`) and its pieces; see trainer/losses/."))
    reference_model: bool = Field(False, description=(
        "Keep a frozen copy of the initial policy for the KL (loss.kl) and kl/ref."))
    mismatch_probe: int = Field(4, ge=0, description=(
        "Sequences per step whose stale tokens are rescored under the weights that sampled them "
        "(kept for the versions within buffer.max_lag), so mismatch/* measures the numerics gap "
        "every step even when every trained token is stale; 0 turns it off (and keeps no copy "
        "of old weights). Deterministic mode rescores every sequence."))
    sync_every: int = Field(1, ge=1, description="Learner steps between weight publishes.")
    sync_timeout_s: float = Field(120.0, gt=0, description="A weight sync that has not landed "
                                  "after this many seconds stops the run (also bounds each "
                                  "broadcast and the transfer group's rendezvous).")
    weight_transfer: Literal["auto", "shm", "collective", "ipc"] = Field("auto", description=(
        "How weights reach the engines. shm: one file on tmpfs (one host). collective: "
        "broadcasts over a process group the engines join at start (gloo on the CPU, NCCL on "
        "GPUs; any node). ipc: CUDA IPC handles, learner and engine on one GPU. auto: "
        "launch/placement.py picks."))
    bucket_mb: int = Field(32, ge=1, description=(
        "collective: size of each packed broadcast, in MiB."))
    checkpoint_every: int = Field(10, ge=0, description=(
        "Steps between checkpoints, each a point `--resume` can continue from (0: only at the "
        "end). A Ctrl-C or SIGTERM also checkpoints before stopping; a SIGKILL loses the steps "
        "since the last one."))
    keep_checkpoints: int = Field(2, ge=1, description=(
        "Complete checkpoints kept (the newest); each is written to a temporary name, renamed, "
        "then given a manifest, so a half-written one is never taken for whole."))


def initial_threads(threads: int | str, deterministic: bool) -> int:
    """torch threads to start with. auto: every core until the controller says otherwise
    (launch/placement.py LearnerThreads; the reference loop's learner trains while its engine
    waits), but one in deterministic mode: a reduction outside the batch-invariant context (the
    gradient norm) splits its sum by thread count, so a count that varied from step to step
    would change the bits."""
    if threads != "auto":
        return int(threads)
    return 1 if deterministic else (os.cpu_count() or 1)
