"""The typed configuration of a run: each part's own section, composed into `RunConfig`.

Each part owns its section and takes it as is (`model_config.py`, `rollout/config.py`,
`buffer/config.py`, `trainer/config.py`, envs, rewards, losses), so a new knob is one edit in
one place. This module composes them and checks what spans sections. Every field has a
description and a range; a bad value fails validation with a message naming the field
(`launch/cli.py` turns it into one line). Choices among implementations are `kind:
Literal[...]` discriminated unions (envs, rewards, losses), never string registries. The resolved
config is written to `DIR/config.json`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slipstream.buffer.config import BufferConfig
from slipstream.envs import TURN_ENV_KINDS, ArithmeticEnvConfig, EnvConfig
from slipstream.envs.curriculum import CurriculumConfig
from slipstream.model_config import ModelConfig
from slipstream.rewards import MathVerifyRewardConfig, RewardConfig
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.teacher_config import TeacherConfig
from slipstream.trainer.config import TrainerConfig
from slipstream.trainer.optimizers import check_zero_stage

__all__ = ["BufferConfig", "ModelConfig", "ResumeRecord", "RolloutConfig", "RunConfig",
           "TrainerConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class ResumeRecord(_Strict):
    """One `--resume` of a run, as config.json records it."""

    from_step: int = Field(ge=0, description="The checkpoint's step: the first new step is "
                           "the one after it.")
    checkpoint: str = Field(description="The checkpoint folder the run continued from.")
    at: str = Field(description="When the resumed run started (UTC, ISO 8601).")
    changed: dict[str, list] = Field(default_factory=dict, description=(
        "Fields changed on resume (all safe to change): name -> [before, after]."))


class RunConfig(_Strict):
    """A whole experiment. `python launch/<script>.py --trainer.lr 1e-5 ...` overrides any field."""

    steps: int = Field(50, ge=1, description="Learner steps to run (at most).")
    time_budget_min: float | None = Field(None, gt=0, description=(
        "A wall-clock budget in minutes, on the clock of `timing/wall_s` (from the run's start, "
        "actor start-up included, going on across resumes): the run ends after the first step "
        "that finishes past it (then saves its final policy as usual), or at `steps`, "
        "whichever comes first."))
    sample_budget: int | None = Field(None, ge=1, description=(
        "A budget of generated samples: the run ends after the first step at which the "
        "learner has taken this many freshly generated samples (`rollout/fresh_samples_total`; "
        "replayed groups do not count again), or at `steps`, whichever comes first. The "
        "footing on which replay and on-policy runs compare."))
    output_dir: str = Field("runs/latest", min_length=1, description=(
        "The run directory (the layout in docs/ARCHITECTURE.md). One that already holds a run "
        "is refused unless `overwrite` is set."))
    overwrite: bool = Field(False, description=(
        "Replace the run already in output_dir (its config, metrics, TensorBoard files, "
        "rollouts, buffer, checkpoints and final policy) instead of refusing to start."))
    resume: str | None = Field(None, min_length=1, description=(
        "Continue the run in this directory from its last complete checkpoint: the learner "
        "(weights, optimizer, schedule, RNG), the buffer (waiting groups; tickets in flight are "
        "generated again with their prompts and seeds), and the metrics from the next step. "
        "The run's own config.json is used; only the fields launch/resume.py SAFE_ON_RESUME "
        "names (steps, budget, output options) may be changed."))
    resumes: list[ResumeRecord] = Field(default_factory=list, description=(
        "Written by the run, not set by hand: one entry per resume."))
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
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig, description=(
        "Which prompts the workers get: the env's stream, or the edge of competence first "
        "(envs/curriculum.py)."))
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description=(
        "Who scores the student's tokens for distillation (rollout/teacher_config.py)."))
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _check_consistency(self) -> RunConfig:
        if self.resume is not None and self.overwrite:
            raise ValueError("resume continues the run in its directory and overwrite replaces "
                             "it: give one of them")
        if self.rollout.max_new_tokens >= self.model.max_model_len:
            raise ValueError(
                f"rollout.max_new_tokens ({self.rollout.max_new_tokens}) leaves no room for a "
                f"prompt in model.max_model_len ({self.model.max_model_len}): raise "
                "model.max_model_len (up to the model's own context) or lower max_new_tokens")
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
        if self.buffer.schedule == "pinned" and self.trainer.sync_every != 1:
            raise ValueError("buffer.schedule=pinned needs trainer.sync_every=1 (each step's "
                             "groups are pinned to the version published before it)")
        pinned_groups = self.trainer.groups_per_step * (self.buffer.max_lag + 1)
        if self.buffer.schedule == "pinned" and self.buffer.capacity_groups < pinned_groups:
            raise ValueError(
                f"buffer.capacity_groups ({self.buffer.capacity_groups}) must hold max_lag + 1 "
                f"steps of groups ({pinned_groups}) for buffer.schedule=pinned")
        self._check_loss()
        self._check_teacher()
        self._check_env()
        self._check_exploration()
        self.buffer.replay.check(self.buffer.max_lag, self.trainer.groups_per_step,
                                 self.buffer.schedule)
        check_zero_stage(self.trainer.optimizer, self.trainer.zero_stage, self.model.dtype,
                         grad_clip=self.trainer.grad_clip)
        if self.deterministic and self.rollout.top_p != 1.0:
            raise ValueError("deterministic=true samples the full distribution the learner "
                             "recomputes: rollout.top_p must be 1")
        return self

    def _check_loss(self) -> None:
        """What the loss recipe asks of the other sections (trainer/losses/config.py)."""
        loss = self.trainer.loss
        if loss.needs_reference and not self.trainer.reference_model:
            why = f"the KL in the {loss.kl.placement}" if loss.kl.coef > 0 else "its soft values"
            raise ValueError(f"trainer.loss.kind={loss.kind} ({why}) needs "
                             "trainer.reference_model=true")
        if loss.overlong == "shape" and loss.overlong_buffer_tokens > self.rollout.max_new_tokens:
            raise ValueError(f"trainer.loss.overlong_buffer_tokens ({loss.overlong_buffer_tokens})"
                             f" must not exceed rollout.max_new_tokens "
                             f"({self.rollout.max_new_tokens})")
        if loss.dynamic_sampling and self.buffer.schedule == "pinned":
            raise ValueError("trainer.loss.dynamic_sampling drops groups and so moves later "
                             "tickets to earlier steps, which buffer.schedule=pinned cannot do")
        if loss.advantage in ("group_std", "group_center", "leave_one_out", "group_batch_norm") \
                and self.rollout.group_size < 2:
            raise ValueError(f"trainer.loss.advantage={loss.advantage} compares the samples of "
                             f"a group: rollout.group_size must be at least 2")

    def _check_exploration(self) -> None:
        explore_k = self.curriculum.explore_k
        if not explore_k:
            return
        if self.curriculum.kind != "edge":
            raise ValueError("curriculum.explore_k explores the edge curriculum's unsolved "
                             "buckets: set curriculum.kind=edge")
        if explore_k <= self.rollout.group_size:
            raise ValueError(f"curriculum.explore_k ({explore_k}) must exceed "
                             f"rollout.group_size ({self.rollout.group_size}): exploring asks "
                             "for more samples than a group already draws")
        if self.buffer.schedule == "pinned":
            raise ValueError("curriculum.explore_k makes the prompts depend on when workers sat "
                             "idle, which buffer.schedule=pinned exists to rule out")

    def _check_env(self) -> None:
        """What the env asks of the reward and the loss, and the reward of the run."""
        if self.reward.kind == "judge" and self.deterministic:
            raise ValueError("reward.kind=judge answers on vLLM, whose greedy verdicts may "
                             "change with batching: deterministic=true could not repeat them")
        if self.reward.kind == "reasoning_gym" and self.env.kind != "reasoning_gym":
            raise ValueError(f"reward.kind=reasoning_gym scores with the task the env generated "
                             f"from: env.kind={self.env.kind} has none (env.kind reasoning_gym)")
        loss = self.trainer.loss
        if self.env.kind in TURN_ENV_KINDS and (loss.needs_values or loss.kind == "soft_q"):
            # GAE and the soft values walk a sequence's tokens as one run; env tokens break it.
            raise ValueError(f"trainer.loss.kind={loss.kind} needs contiguous policy tokens: "
                             f"env.kind={self.env.kind} interleaves env turns (use a "
                             "critic-free recipe: grpo, dr_grpo, rloo, ...)")

    def _check_teacher(self) -> None:
        """A teacher and the loss that uses it come together."""
        distill, teacher = self.trainer.loss.distill, self.teacher
        if distill.enabled and not teacher.enabled:
            raise ValueError("trainer.loss.distill needs a teacher: --teacher.kind "
                             "model|self|ensemble|debate (with --teacher.path for a model)")
        if teacher.enabled and not distill.enabled:
            raise ValueError(f"teacher.kind={teacher.kind} scores tokens no loss uses: "
                             "--trainer.loss.kind distill, or trainer.loss.distill.coef > 0")
        if not teacher.enabled:
            return
        if self.trainer.loss.kind == "soft_q":
            raise ValueError("trainer.loss.kind=soft_q has no advantage to mix a teacher into")
        if self.rollout.temperature != 1.0:
            raise ValueError(f"teachers score at temperature 1, the student samples at "
                             f"rollout.temperature={self.rollout.temperature}: distillation "
                             "would compare two different distributions")
        if distill.needs_topk and teacher.topk < 2:
            raise ValueError(f"trainer.loss.distill.objective={distill.objective} compares "
                             "top-k distributions: set teacher.topk to 2..20")
        if distill.needs_topk and len(teacher.resolved_members) > 1 \
                and teacher.combine != "route":
            raise ValueError(f"trainer.loss.distill.objective={distill.objective} needs one "
                             "teacher per sample (teacher.combine=route): a product of "
                             "experts has no top-k list")

    @property
    def samples_per_step(self) -> int:
        return self.trainer.groups_per_step * self.rollout.group_size
