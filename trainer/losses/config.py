"""The pieces every loss recipe is made of, as typed config: advantage estimator, policy
objective, aggregation, sampler/trainer corrections, KL, and DAPO's batch-shaping options.

A recipe (grpo.py, dapo.py, ...) is a subclass of `LossConfigBase` that names itself with
`kind` and changes defaults; every piece stays overridable from the command line
(`--trainer.loss.kind grpo --trainer.loss.aggregation sequence_mean`), so a recipe is a starting
combination, not a cage. The formulas are in the modules that compute them: advantages in
trainer/advantages.py, objectives in objectives.py, corrections in corrections.py, KL in kl.py.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slipstream.trainer.losses.distill import DistillConfig

GroupAdvantage = Literal["group_std", "group_center", "leave_one_out", "group_batch_norm"]
Objective = Literal["ppo_clip", "gspo", "cispo", "ratio", "topr"]
Aggregation = Literal["token_mean", "sequence_mean", "constant"]
Level = Literal["off", "token", "sequence", "geometric"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CorrectionConfig(_Section):
    """Corrections for the gap between the sampler (mu) and the trainer at the start of the
    step (pi_prox), on the ratio rho = pi_prox / mu. Any correction switches the objective's
    ratio from pi/mu to pi/pi_prox ("decoupled": the trust region is the trainer's own, and
    rho is handled here); with none, the objective's ratio is pi/mu and its clip acts on the gap.
    Masks are applied first, then weights; they compose (SkyRL's advice: a geometric sequence mask,
    then token TIS, then an IcePop band)."""

    tis: Level = Field("off", description=(
        "Truncated importance sampling: weight each token by min(rho, tis_cap) (token), or "
        "every token of a sequence by min(prod rho, tis_cap) (sequence) or by "
        "min(exp(mean log rho), tis_cap) (geometric)."))
    tis_cap: float = Field(2.0, gt=0, description="Truncation of the TIS weight.")
    mis: Level = Field("off", description=(
        "Masked importance sampling: drop tokens (token) or whole sequences (sequence: prod "
        "rho; geometric: exp(mean log rho)) whose ratio leaves [mis_low, mis_high]."))
    mis_low: float = Field(0.5, gt=0, description="Lower edge of the MIS band.")
    mis_high: float = Field(2.0, gt=0, description="Upper edge of the MIS band.")
    icepop: bool = Field(False, description=(
        "IcePop: drop tokens whose rho leaves [1/icepop_beta, icepop_beta]."))
    icepop_beta: float = Field(2.0, gt=1, description="IcePop's band half-width (> 1).")
    m2_threshold: float | None = Field(None, gt=0, description=(
        "M2PO's second-moment mask: drop the tokens with the largest (log mu - log pi)^2 until "
        "the mean over the rest is at most this (0.04 in the paper); None: off. A mask on the "
        "trained tokens, it leaves the objective's ratio as it is."))

    @model_validator(mode="after")
    def _band(self) -> CorrectionConfig:
        if self.mis_low >= self.mis_high:
            raise ValueError(f"mis band is inverted or empty: mis_low ({self.mis_low}) must be "
                             f"below mis_high ({self.mis_high})")
        return self

    @property
    def active(self) -> bool:
        return self.tis != "off" or self.mis != "off" or self.icepop


class KLConfig(_Section):
    """KL(policy || reference) with one of Schulman's estimators (kl.py), either as a loss term
    (its gradient pulls the policy to the reference) or folded into the reward as a per-token
    penalty before the advantages are computed (no gradient through it)."""

    coef: float = Field(0.0, ge=0, description=(
        "Weight of the KL; > 0 needs trainer.reference_model=true."))
    estimator: Literal["k1", "k2", "k3"] = Field("k3", description=(
        "k1 = log(pi/ref), k2 = (log(pi/ref))^2 / 2, k3 = ref/pi - log(ref/pi) - 1."))
    placement: Literal["loss", "reward"] = Field("loss", description=(
        "loss: coef * KL added to the loss. reward: coef * KL subtracted from each token's "
        "reward before the advantages (the penalty shapes the advantage, not the gradient)."))


class LossConfigBase(_Section):
    """Every loss is these pieces; a recipe sets `kind` and its own defaults."""

    # A recipe's own correction defaults, merged under what the command line sets, so that
    # `--trainer.loss.correction.icepop true` adds IcePop to decoupled_ppo's TIS instead of
    # replacing the recipe's whole correction section with the plain defaults.
    CORRECTION_DEFAULTS: ClassVar[dict[str, object]] = {}
    DISTILL_DEFAULTS: ClassVar[dict[str, object]] = {}    # the same for the distill section

    kind: str
    advantage: GroupAdvantage = Field("group_std", description=(
        "group_std: (R - group mean) / group std (GRPO). group_center: R - group mean "
        "(Dr.GRPO). leave_one_out: R - mean of the other samples (RLOO). group_batch_norm: "
        "R - group mean, divided by the std over the batch's tokens (REINFORCE++-baseline). "
        "(ppo has its own: GAE with a learned value head.)"))
    objective: Objective = Field("ppo_clip", description=(
        "ppo_clip: -min(r A, clip(r) A) per token. gspo: the same on the sequence's "
        "length-normalised ratio. cispo: -sg(clip(r)) A log pi (every token keeps a gradient). "
        "ratio: -r A, unclipped (M2PO). topr: -w A log pi with w = 1 for A >= 0 and the "
        "sequence ratio truncated at 1 for A < 0 (TOPR)."))
    aggregation: Aggregation = Field("token_mean", description=(
        "token_mean: every trained token weighs the same. sequence_mean: tokens averaged "
        "within a sequence, then over sequences. constant: summed and divided by sequences x "
        "rollout.max_new_tokens (Dr.GRPO), so no sequence's length scales its tokens."))
    clip_low: float = Field(0.2, ge=0, le=1, description=(
        "Lower clip of the ratio: 1 - clip_low (1 removes the lower bound)."))
    clip_high: float = Field(0.2, ge=0, description=(
        "Upper clip of the ratio: 1 + clip_high; above clip_low it is DAPO's clip-higher."))
    correction: CorrectionConfig = Field(default_factory=CorrectionConfig,
                                         description="Sampler/trainer gap corrections.")
    kl: KLConfig = Field(default_factory=KLConfig, description="KL to the reference model.")
    dynamic_sampling: bool = Field(False, description=(
        "DAPO's dynamic sampling: groups whose rewards are all equal are dropped in the buffer "
        "and more are generated until the batch is full (counted in buffer/dropped_uniform)."))
    dynamic_sampling_max_batches: int = Field(10, ge=1, description=(
        "Stop the run when this many batches' worth of groups in a row were all dropped "
        "(the reward never varies: a dead end, not a slow start)."))
    overlong: Literal["off", "shape", "filter"] = Field("off", description=(
        "DAPO's overlong handling. shape: a reward penalty rising linearly to "
        "-overlong_penalty over the last overlong_buffer_tokens before rollout.max_new_tokens. "
        "filter: truncated completions are masked out of the loss."))
    overlong_buffer_tokens: int = Field(16, ge=1, description=(
        "Length of the soft penalty zone before the completion limit (shape)."))
    overlong_penalty: float = Field(1.0, ge=0, description="Penalty at the limit (shape).")
    distill: DistillConfig = Field(default_factory=DistillConfig, description=(
        "Distillation from the run's teacher (trainer/losses/distill.py), beside the task "
        "reward; any recipe can take it, `distill` is the recipe made for it."))

    @model_validator(mode="before")
    @classmethod
    def _recipe_sections(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        for name, defaults in (("correction", cls.CORRECTION_DEFAULTS),
                               ("distill", cls.DISTILL_DEFAULTS)):
            given = data.get(name, {})
            if defaults and isinstance(given, dict):
                data = {**data, name: {**defaults, **given}}
        return data

    @property
    def needs_reference(self) -> bool:
        """A frozen reference model is needed (the run config checks it is configured)."""
        return self.kl.coef > 0

    @property
    def needs_values(self) -> bool:
        """A value head is needed (ppo overrides this)."""
        return False

    @property
    def needs_logits(self) -> bool:
        """The sampled tokens' logits are needed besides their logprobs (soft_q)."""
        return False


def recipe_default(name: str, value: object):
    """A recipe's own default for one of the shared pieces, keeping the piece's description
    (pydantic would otherwise drop it when a subclass re-declares the field)."""
    return Field(value, description=LossConfigBase.model_fields[name].description)
