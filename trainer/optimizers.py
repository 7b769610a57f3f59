"""The learner's optimizer, chosen with `kind`: plain AdamW, or Muon on the hidden matrices.

    adamw  torch.optim.AdamW (fused) on every parameter (what the learner has always used).
    muon   Muon on the 2-D weight matrices inside the transformer blocks, AdamW on the rest.

Which parameters Muon gets. Muon replaces a matrix's update by (approximately) the nearest
orthogonal matrix, U V^T of the momentum's SVD: every direction of the layer's map moves by the
same amount. That is a statement about a linear map from one hidden space to another, so it
applies to the attention and MLP projections of each block and to nothing else:
  - token embeddings are a lookup table (each row is trained only by the tokens that occur), and
    the LM head (tied to them here) maps into the vocabulary; neither is a hidden transform;
  - norms and biases are vectors; there is no matrix to orthogonalise;
  - an extra head (the PPO `value_head`, a 1 x hidden linear layer) is an output head as well.
The rule, by name and shape: a parameter is Muon's when it is 2-D and lives under the model's
block stack, the `nn.ModuleList` that holds most of the parameters (`model.layers` for Qwen2 and
Llama, `policy.model.layers` once wrapped with a value head, `transformer.h` for GPT-2). Taking the
stack from the model rather than matching "embed"/"lm_head" in names is what keeps `value_head`
(2-D, outside the stack) on AdamW; DeepSpeed's own name rule would hand it to Muon.

Why DeepSpeed's Muon and not torch.optim.Muon. DeepSpeed 0.19.8 ships `MuonWithAuxAdam` (Muon
and an auxiliary Adam in one optimizer, the groups told apart by `use_muon`) and its ZeRO 1/2
optimizer recognises it: it orthogonalises each matrix's full 2-D gradient at the accumulation
boundary, before flattening it into the 1-D partition, and the bf16 wrappers keep 2-D fp32
masters for it. torch.optim.Muon under ZeRO 1/2 would be handed the flat 1-D partitions, and
it rejects any gradient that is not 2-D. So `build_optimizer` builds DeepSpeed's class itself
(rather than through DeepSpeed's `"optimizer": {"type": "muon"}` config, which picks parameters
by its name rule above), tags every parameter's `use_muon` for the ZeRO code, and gives the
auxiliary half torch's AdamW, so the non-Muon parameters step exactly as in the adamw arm.

One learning rate for both halves. DeepSpeed's Muon scales its update like Keller Jordan's
original, lr * sqrt(max(1, rows/cols)) (torch's `adjust_lr_fn="original"`), which moves a hidden
matrix by about lr / sqrt(cols) per entry, far less than AdamW's ~lr; one `lr` could not suit
both. The default `adjust_lr_fn="match_rms_adamw"` (Moonshot's rule, torch's option of the same
name) uses lr * 0.2 * sqrt(max(rows, cols)) instead, which gives the update the RMS of a typical
AdamW update, so the run's single `lr` (and the warm-up schedule) drives both halves. It is
applied as a per-shape learning-rate factor on the Muon groups, with the weight decay divided by
the same factor so that decay stays lr * weight_decay, as in torch.optim.Muon. The LambdaLR
schedule multiplies every group's initial lr, so the factors survive it; the AdamW group comes
first, so `get_last_lr()[0]` is still the run's lr.

Fixed by DeepSpeed, so not configurable: Nesterov momentum and 5 Newton-Schulz steps with
Keller Jordan's coefficients (the defaults of DeepSpeed's `muon_update`, which its ZeRO path calls
without a way to change them; they are also torch.optim.Muon's defaults).

What works under DeepSpeed, measured on the CPU accelerator with a world of one (the tiny 2-layer
Qwen2; two steps of two micro-batches against torch.optim.Muon, its Newton-Schulz in float64, and
torch.optim.AdamW from the same gradients; relative error of each parameter's update):
  - ZeRO 0, float32: Muon steps the model's own 2-D parameters. Matrices <= 3e-4, rest <= 1e-5.
  - ZeRO 0, bfloat16: DeepSpeed's unfused bf16 wrapper keeps a 2-D fp32 master per parameter.
    Matrices <= 0.055, rest <= 0.02 (bf16 rounding; after one step: 2e-3). Gradient clipping
    acts on the raw gradient, as with AdamW. This wrapper takes one optimizer step with zero
    gradients when it is built (`initialize_optimizer_states`), for either kind: weight decay is
    applied once more and AdamW's step count starts at 1 (its first real update is ~0.74 lr).
  - ZeRO 1 and 2, float32, gradient_clipping 0: matrices <= 1e-4, rest <= 1e-5.
  - ZeRO 1 and 2, bfloat16, gradient_clipping 0: matrices <= 0.11, rest <= 0.02. Muon's momentum,
    Nesterov blend and Newton-Schulz input are bf16 here (the gradient's dtype), fp32 at ZeRO 0;
    torch.optim.Muon's own bf16 Newton-Schulz is 0.09 off float64 on the same gradient.
  - ZeRO 1 and 2 with gradient_clipping > 0: REFUSED. The partition handed to the clip holds
    Muon's orthogonalised update, not the gradient, so the clip's "grad norm" is the norm of the
    updates (39.8 on the tiny model, whose gradient norm was 1.8) and the Muon step shrank by that
    factor (0.975 off at clip 1.0); the logged grad norm is that norm too. ZeRO 0 clips the raw
    gradient and is unaffected.
ZeRO 3 was not tried (the learner refuses it for weight publishing) and is refused with Muon.
Checkpoints (save/load_checkpoint) carry Muon's momentum: a resumed ZeRO 0, 1 or 2 engine steps
bit-for-bit like the one that kept going.
On the CPU, DeepSpeed's `muon_update` is torch.compile'd: the first step compiles it per matrix
shape (about 30 s on a busy 2-core machine for the tiny model).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field

from slipstream.errors import SlipstreamError

_Beta = Annotated[float, Field(ge=0.0, lt=1.0)]

_DTYPES = ("bfloat16", "float32")


class OptimizerSettingError(SlipstreamError, ValueError):
    """An optimizer asked for with a DeepSpeed setting it cannot work under; one readable line."""


class AdamWConfig(BaseModel):
    """torch.optim.AdamW on every parameter. Defaults are torch's, except weight decay 0."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["adamw"] = Field("adamw", description="AdamW on every parameter.")
    betas: tuple[_Beta, _Beta] = Field((0.9, 0.999), description=(
        "AdamW's (beta1, beta2): decay rates of the first and second moment estimates."))
    eps: float = Field(1e-8, gt=0.0, le=1e-2, description=(
        "Added to the second-moment root in AdamW's denominator."))
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description=(
        "Decoupled weight decay: each step multiplies the weights by (1 - lr * weight_decay)."))


class MuonConfig(BaseModel):
    """Muon on the 2-D matrices inside the transformer blocks, AdamW (`adamw`) on the rest.

    With the default `adjust_lr_fn="match_rms_adamw"` the run's single `lr` suits both halves:
    a Muon update gets the RMS of a typical AdamW update (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["muon"] = Field("muon", description=(
        "Muon on the hidden matrices, AdamW on embeddings, head, norms, biases and extra heads."))
    momentum: float = Field(0.95, ge=0.0, lt=1.0, description=(
        "Muon's momentum (always Nesterov, as DeepSpeed's Muon has it)."))
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description=(
        "Decoupled weight decay on the Muon matrices: (1 - lr * weight_decay) per step."))
    adjust_lr_fn: Literal["match_rms_adamw", "original"] = Field("match_rms_adamw", description=(
        "How a matrix's step follows from lr, as torch.optim.Muon names it. match_rms_adamw: "
        "lr * 0.2 * sqrt(max(rows, cols)), an update with AdamW's RMS, so one lr serves both "
        "halves. original: lr * sqrt(max(1, rows/cols)), Keller Jordan's, which needs a much "
        "larger lr than AdamW."))
    ns_method: Literal["gram", "standard"] = Field("gram", description=(
        "DeepSpeed's Newton-Schulz variant: gram iterates on the smaller Gram matrix in fp16 "
        "(fp32 where the accelerator has no fp16, as on the CPU); standard is the textbook "
        "iteration in bf16, like torch.optim.Muon."))
    adamw: AdamWConfig = Field(default_factory=AdamWConfig, description=(
        "The AdamW settings for the parameters Muon does not take; the same model as the adamw "
        "arm's, so that the two arms differ only on the hidden matrices."))


OptimizerConfig = Annotated[Union[AdamWConfig, MuonConfig], Field(discriminator="kind")]


def check_zero_stage(config: AdamWConfig | MuonConfig, zero_stage: int, dtype: str, *,
                     grad_clip: float) -> None:
    """Raise OptimizerSettingError (a ValueError) when `config` cannot work under DeepSpeed with
    this ZeRO stage, dtype and gradient clipping; see the module docstring for what was measured.
    `grad_clip` is DeepSpeed's `gradient_clipping` (0 turns clipping off)."""
    if dtype not in _DTYPES:
        raise OptimizerSettingError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    if config.kind != "muon":
        return
    if zero_stage not in (0, 1, 2):
        raise OptimizerSettingError(
            f"optimizer muon with ZeRO stage {zero_stage} is not supported: use zero_stage 0, or "
            f"1 or 2 with grad_clip 0")
    if zero_stage in (1, 2) and grad_clip > 0:
        raise OptimizerSettingError(
            f"optimizer muon with ZeRO stage {zero_stage} needs grad_clip 0 (got {grad_clip}): "
            f"ZeRO {zero_stage} clips by the norm of Muon's orthogonalised updates, not of the "
            f"gradient, which shrinks the Muon step; use zero_stage 0 to keep clipping")


def build_optimizer(model: torch.nn.Module, config: AdamWConfig | MuonConfig,
                    lr: float) -> torch.optim.Optimizer:
    """The optimizer for `model`'s trainable parameters, to hand to `deepspeed.initialize`."""
    if lr <= 0:
        raise OptimizerSettingError(f"learning rate must be positive, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    if config.kind == "adamw":
        # Fused: one kernel per parameter, no full-size temporaries (the unfused step on a
        # flat fp32 buffer held another 0.5 GiB at SmolLM2's size) and about 10% faster here.
        return torch.optim.AdamW(params, **_adamw_settings(config, lr), fused=True)
    return _build_muon(model, config, lr)


def muon_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters Muon takes: the 2-D ones under the block stack (module doc)."""
    prefix = _block_stack_prefix(model)
    return {name for name, p in model.named_parameters()
            if p.ndim == 2 and name.startswith(prefix)}


def _adamw_settings(config: AdamWConfig, lr: float) -> dict:
    return {"lr": lr, "betas": tuple(config.betas), "eps": config.eps,
            "weight_decay": config.weight_decay}


def _block_stack_prefix(model: torch.nn.Module) -> str:
    """`name.` of the ModuleList holding the most parameters: the transformer's block stack."""
    best, best_count = None, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList):
            count = sum(p.numel() for p in module.parameters())
            if count > best_count:
                best, best_count = name, count
    if best is None:
        raise OptimizerSettingError(
            f"optimizer muon needs a model with a stack of blocks (an nn.ModuleList), and "
            f"{type(model).__name__} has none")
    return best + "."


def muon_lr_factor(shape: torch.Size | tuple[int, ...], adjust_lr_fn: str) -> float:
    """The factor on lr that turns DeepSpeed's Muon step into `adjust_lr_fn`'s.

    DeepSpeed's `muon_update` already multiplies the orthogonalised update by
    sqrt(max(1, rows/cols)), which is torch's "original"."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn == "original":
        return 1.0
    return 0.2 * math.sqrt(max(rows, cols)) / math.sqrt(max(1.0, rows / cols))


def _build_muon(model: torch.nn.Module, config: MuonConfig, lr: float) -> torch.optim.Optimizer:
    # Imported here: it pulls in DeepSpeed, which the adamw arm and config-only code do not need.
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam

    muon_names = muon_parameter_names(model)
    if not muon_names:
        raise OptimizerSettingError("optimizer muon found no 2-D matrix in the model's blocks")
    aux: list[torch.nn.Parameter] = []
    by_shape: dict[tuple[int, int], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # DeepSpeed's ZeRO 1/2 (and BF16_Optimizer) read this flag off each parameter to decide
        # whose gradient to orthogonalise before flattening; an untagged one counts as AdamW's.
        p.use_muon = name in muon_names
        if p.use_muon:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        else:
            aux.append(p)
    # The AdamW group first: the learner logs get_last_lr()[0] as `optim/lr`, the run's lr.
    groups = [dict(params=aux, use_muon=False, name="adamw-params",
                   **_adamw_settings(config.adamw, lr))] if aux else []
    for shape, params in sorted(by_shape.items()):
        factor = muon_lr_factor(shape, config.adjust_lr_fn)
        groups.append(dict(params=params, use_muon=True, name=f"muon-{shape[0]}x{shape[1]}",
                           lr=lr * factor, weight_decay=config.weight_decay / factor,
                           momentum=config.momentum, ns_method=config.ns_method))
    # torch's AdamW as the auxiliary optimizer (DeepSpeed would otherwise use FusedAdam or an
    # inline Adam), so the non-Muon parameters step exactly as under the adamw arm.
    return MuonWithAuxAdam(groups, adam_optimizer=torch.optim.AdamW, adam_optimizer_kwargs={})
