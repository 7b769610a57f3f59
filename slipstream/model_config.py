"""The model section of the config: the one section both sides read (the rollout engines load
the model, the learner trains it), so it lives with neither."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SMOLLM2 = "smollm2-135m-instruct"
# CPU flags with native bf16 arithmetic: without them (AVX2 only) PyTorch's CPU bf16 matmuls
# emulate it, and were measured about 5x slower than fp32 on such a machine.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def fastest_dtype(cpuinfo: str = "/proc/cpuinfo") -> Literal["bfloat16", "float32"]:
    """bf16 on a GPU (every CUDA device slipstream targets has bf16 units) and on a CPU with
    bf16 instructions; fp32 elsewhere. Read from the system, without importing torch."""
    if Path("/proc/driver/nvidia/gpus").is_dir() and os.listdir("/proc/driver/nvidia/gpus"):
        return "bfloat16"
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path(cpuinfo).open()
                      if line.startswith("flags")), [])
    except OSError:
        return "float32"
    return "bfloat16" if any(flag in flags for flag in BF16_CPU_FLAGS) else "float32"


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    path: str = Field(SMOLLM2, description=(
        "Local checkpoint directory, a hub name, or 'smollm2-135m-instruct' (shipped through the "
        "package index and converted once into ~/.cache/slipstream). The controller resolves it "
        "to a local directory once; the parts receive the resolved path."))
    dtype: Literal["bfloat16", "float32"] = Field(
        "auto", validate_default=True, description="Parameter dtype of the sampler and the "
        "learner (bf16 trains with fp32 master weights in the optimizer). 'auto': the fastest "
        "this machine runs (bf16 on a GPU or a CPU with AMX/AVX512-BF16, else fp32), resolved "
        "once and written to config.json as the dtype chosen.")

    @field_validator("dtype", mode="before")
    @classmethod
    def _resolve_auto(cls, value: object) -> object:
        if value not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"{value!r} is not one of auto, bfloat16, float32")
        return fastest_dtype() if value == "auto" else value

    max_model_len: int = Field(1024, ge=64, description="Longest prompt + completion, in tokens.")
