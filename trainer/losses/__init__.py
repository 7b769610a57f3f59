"""Pluggable losses behind one interface: `compute_loss(LossInputs, config) -> LossOutput`.

Adding a loss is one function `(LossInputs, MyLossConfig) -> LossOutput`, one pydantic config
class with a `kind: Literal["my_loss"]` field, and registering both here: the config in the
`LossConfig` union, the function in `_LOSSES` under the same kind. Nothing else changes: the
learner, the run config and the CLI (`--trainer.loss.kind my_loss`) pick it up from the union.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Union

from pydantic import Field

from slipstream.trainer.losses.base import MASK_REASONS, MASKING_REASONS, LossInputs, LossOutput
from slipstream.trainer.losses.grpo import GRPOLossConfig, grpo_loss

# With one member `Union[X]` collapses to X, and pydantic (2.x) still accepts the discriminator on
# it: a wrong `kind` fails with a message listing the valid ones, and the schema and error paths
# (`trainer.loss.grpo.clip_low`) already have the shape they keep when a second loss is added.
# One consequence: a config given as a plain dict must name its `kind` (the CLI merges overrides
# into the defaults, so `--trainer.loss.clip-high 0.3` alone works).
LossConfig = Annotated[Union[GRPOLossConfig], Field(discriminator="kind")]

# Keyed by `kind`; each function takes its own config class (hence Any in the value type).
_LOSSES: dict[str, Callable[[LossInputs, Any], LossOutput]] = {"grpo": grpo_loss}


def compute_loss(inputs: LossInputs, config: LossConfig) -> LossOutput:
    """Dispatch on `config.kind` to the registered loss function."""
    return _LOSSES[config.kind](inputs, config)


__all__ = ["MASK_REASONS", "MASKING_REASONS", "GRPOLossConfig", "LossConfig", "LossInputs",
           "LossOutput", "compute_loss"]
