"""The model section of the config: the one section both sides read (the rollout engines load
the model, the learner trains it), so it lives with neither."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SMOLLM2 = "smollm2-135m-instruct"


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    path: str = Field(SMOLLM2, description=(
        "Local checkpoint directory, a hub name, or 'smollm2-135m-instruct' (shipped through the "
        "package index and converted once into ~/.cache/slipstream). The controller resolves it "
        "to a local directory once; the parts receive the resolved path."))
    dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="Parameter dtype of the sampler and the learner (bf16 trains with "
        "fp32 master weights in the optimizer).")
    max_model_len: int = Field(1024, ge=64, description="Longest prompt + completion, in tokens.")
