"""The teacher section of the run config: who scores the student's tokens for distillation.

    --teacher.kind model    --teacher.path runs/quickstart/final      a frozen model
    --teacher.kind self     --teacher.context answer                  the student's own weights,
                                                                      with privileged context
    --teacher.kind ensemble --teacher.members '[{...}, {...}]' --teacher.combine poe
    --teacher.kind debate   --teacher.members '[{...}, {...}]' --teacher.debate_rounds 2

Every kind is a list of members internally (`TeacherConfig.resolved_members`); a single teacher
is an ensemble of one. The objective that uses the scores is the loss's `distill` section
(trainer/losses/distill.py).
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A context function: a built-in name, or "module:function" taking (sample, group, prompt).
_CONTEXTS = ("none", "answer", "sibling", "feedback")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TeacherMember(_Section):
    """One model that scores: a frozen checkpoint, or the student's own weights."""

    name: str = Field("", pattern=r"^[\w.-]*$", max_length=40, description=(
        "The member's id in the records and metrics (kl/teacher/<name>); default: its source "
        "and position."))
    source: Literal["model", "self"] = Field("model", description=(
        "model: a frozen checkpoint at `path`. self: the student's weights (`weights`)."))
    path: str | None = Field(None, min_length=1, description=(
        "model: a local checkpoint directory (e.g. runs/quickstart/final) or a hub name."))
    weights: Literal["frozen", "live"] = Field("frozen", description=(
        "self: frozen = the student's initial weights in the teacher's own engine (OPSD's "
        "stabilising choice); live = the rollout engine's current weights (the score records "
        "their version)."))
    context: str = Field("none", description=(
        "Privileged context the member sees and the student does not: none; answer (the "
        "reference answer); sibling (a completion of the same group that earned the reward, "
        "best-of-N); feedback (each sample's own reward and error); or 'module:function' "
        "taking (sample, group, prompt) and returning a string."))

    @model_validator(mode="after")
    def _check(self) -> TeacherMember:
        if self.source == "model" and self.path is None:
            raise ValueError("a model teacher needs a path (--teacher.path DIR)")
        if self.source == "self" and self.path is not None:
            raise ValueError("a self teacher uses the student's weights; drop its path")
        if self.source == "model" and self.weights == "live":
            raise ValueError("weights=live is for a self teacher (a model teacher is frozen)")
        if self.context not in _CONTEXTS and not _IMPORT_PATH.match(self.context):
            raise ValueError(f"context {self.context!r} is not one of {', '.join(_CONTEXTS)} "
                             "or 'module:function'")
        return self


class TeacherConfig(_Section):
    kind: Literal["none", "model", "self", "ensemble", "debate"] = Field("none", description=(
        "none: no teacher. model/self: one member, from path/weights/context below. "
        "ensemble: `members` combined by `combine`. debate: `members` argue "
        "`debate_rounds` rounds about the prompt; the transcript is every member's privileged "
        "context when it scores."))
    path: str | None = Field(None, min_length=1, description="model: the teacher checkpoint.")
    weights: Literal["frozen", "live"] = Field("frozen", description="self: see members.")
    context: str = Field("none", description="model/self: privileged context (see members).")
    members: list[TeacherMember] = Field(default_factory=list, description=(
        "ensemble/debate: the members, as JSON: '[{\"source\": \"model\", \"path\": "
        "\"runs/quickstart/final\"}, {\"source\": \"self\", \"context\": \"answer\"}]'."))
    combine: Literal["route", "poe", "confidence"] = Field("poe", description=(
        "route: one member per sample, chosen by `route_key`. poe: product of experts, the "
        "teacher logprob is sum_i w_i log q_i (distils toward tokens every member accepts). "
        "confidence: poe with per-sample weights proportional to each member's confidence, "
        "its mean top-1 probability over the completion."))
    member_weights: list[float] | None = Field(None, description=(
        "poe: one weight per member, each > 0, summing to 1 (default: equal)."))
    route_key: str = Field("prompt_id", min_length=1, description=(
        "route: the prompt's id, or a key of its env metadata; a value equal to a member's "
        "name goes to that member, any other value to a member chosen by its hash."))
    debate_rounds: int = Field(2, ge=1, le=8, description="debate: rounds of arguments.")
    debate_max_tokens: int = Field(48, ge=1, description="debate: longest argument, in tokens.")
    topk: int = Field(1, ge=1, le=20, description=(
        "Teacher tokens kept per position, best first (vLLM's limit is 20); the forward-KL "
        "and JSD objectives need more than 1."))
    on_failure: Literal["stop", "continue"] = Field("stop", description=(
        "A member that fails (its actor died, a context function raised): stop the run with "
        "one line naming it, or go on without its scores (counted in faults/teacher_errors)."))
    kv_cache_gb: float = Field(0.25, ge=0.03125, description="Each teacher engine's KV cache.")

    @model_validator(mode="after")
    def _check(self) -> TeacherConfig:
        many = self.kind in ("ensemble", "debate")
        if many and len(self.members) < 2:
            raise ValueError(f"a {self.kind} teacher needs at least two members")
        if not many and self.members:
            raise ValueError(f"members are for ensemble and debate teachers, not {self.kind}")
        if self.member_weights is not None:
            if len(self.member_weights) != len(self.members):
                raise ValueError(f"{len(self.member_weights)} member_weights for "
                                 f"{len(self.members)} members")
            # Zero is refused too: a member weighted 0 still costs its scoring, and if it were
            # the only one to score a sample the renormalised weights would divide by zero.
            if any(w <= 0 for w in self.member_weights) or \
                    not math.isclose(sum(self.member_weights), 1.0, abs_tol=1e-6):
                raise ValueError(f"member_weights {self.member_weights} must each be > 0 and "
                                 "sum to 1 (drop a member rather than weigh it 0)")
        names = [m.name for m in self.resolved_members]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher members need distinct names, got {names}")
        return self

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def resolved_members(self) -> list[TeacherMember]:
        """The members, named: a single teacher is a list of one."""
        if self.kind == "none":
            return []
        members = self.members or [TeacherMember(
            source="model" if self.kind == "model" else "self", path=self.path,
            weights=self.weights, context=self.context)]
        return [m if m.name else m.model_copy(update={"name": f"{m.source}{i}"})
                for i, m in enumerate(members)]

    @property
    def weights_of_members(self) -> list[float]:
        members = self.resolved_members
        return self.member_weights or [1.0 / len(members)] * len(members)
