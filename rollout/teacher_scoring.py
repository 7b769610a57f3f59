"""`GroupTeacher`: the rollout worker's teacher step (rollout/teachers.py has the rules).

Failures follow `teacher.on_failure`: a member whose actor died, or whose context function
raised, stops the run with one line naming it (`stop`), or is skipped for that group and counted
(`continue`; a dead actor is skipped from then on). A sample that no member scored carries
`teacher_error` and trains on the task reward alone; nothing is dropped from the buffer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

from slipstream.buffer.records import Group, Sample
from slipstream.envs import Prompt
from slipstream.errors import SlipstreamError
from slipstream.rollout.engine_api import TokenScores
from slipstream.rollout.group import encode_prompt, sample_seed
from slipstream.rollout.teacher_config import TeacherConfig, TeacherMember
from slipstream.rollout.teachers import (NoContext, combined_fields, context_function,
                                         member_label, route_choice, teacher_name,
                                         teacher_prompt)


class _OwnEngine:
    """A live self-teacher's access to the worker's own engine, shaped like a TeacherActor."""

    def __init__(self, engine) -> None:
        self._engine = engine

    async def score(self, requests, topk: int, request_id: str) -> list[TokenScores]:
        return list(await asyncio.gather(*(
            self._engine.score(prompt, tokens, topk, f"{request_id}-{i}")
            for i, (prompt, tokens) in enumerate(requests))))

    async def generate(self, prompt_ids, max_tokens: int, seed: int, request_id: str):
        from slipstream.rollout.engine_api import SamplingSettings

        return await self._engine.generate(prompt_ids, SamplingSettings(max_tokens=max_tokens),
                                           seed, request_id)


class _ActorEngine:
    def __init__(self, actor) -> None:
        self._actor = actor

    async def score(self, requests, topk: int, request_id: str) -> list[TokenScores]:
        return await self._actor.score.remote(requests, topk, request_id)

    async def generate(self, prompt_ids, max_tokens: int, seed: int, request_id: str):
        return await self._actor.generate.remote(prompt_ids, max_tokens, seed, request_id)


def _engine_for(member: TeacherMember, actors: Mapping[str, object], own_engine):
    """A live self-teacher scores on the worker's own engine; every other member on its actor."""
    if member.source == "self" and member.weights == "live":
        return _OwnEngine(own_engine)
    if member.name not in actors:
        raise SlipstreamError(f"{member_label(member)} has no teacher actor")
    return _ActorEngine(actors[member.name])


@dataclass
class _MemberResult:
    """One member's view of a group, per sample: its scores (None: none), why none, the tokens
    it scored (context included) and its context's hash."""

    name: str
    scores: list[TokenScores | None]
    reasons: list[str]
    tokens: list[int]
    hashes: list[str]

    @classmethod
    def empty(cls, name: str, size: int) -> _MemberResult:
        return cls(name, [None] * size, [""] * size, [0] * size, [""] * size)


class GroupTeacher:
    def __init__(self, config: TeacherConfig, actors: Mapping[str, object], own_engine,
                 tokenizer, seed: int) -> None:
        """`actors`: member name -> TeacherActor handle (live self-teachers have none)."""
        self.config, self._tokenizer, self._seed = config, tokenizer, seed
        self.members = config.resolved_members
        self._engines = {m.name: _engine_for(m, actors, own_engine) for m in self.members}
        self._contexts = {m.name: context_function(m.context) for m in self.members}
        self._dead: set[str] = set()
        self.errors = 0              # member failures skipped under on_failure=continue
        self.name = teacher_name(config)

    async def score(self, group: Group, prompt: Prompt) -> Group:
        """The group with its samples' teacher fields filled, and the cost on the group."""
        started = time.perf_counter()
        debate, debate_tokens = "", 0
        if self.config.kind == "debate":
            debate, debate_tokens = await self._debate(group, prompt)
        members = self.members
        if self.config.combine == "route" and len(members) > 1:   # one member per prompt
            chosen = route_choice(self._route_key(prompt), [m.name for m in members])
            members = [m for m in members if m.name == chosen]
        results = await asyncio.gather(*(self._score_member(m, group, prompt, debate)
                                         for m in members))
        samples, scored_tokens = [], 0
        for i, sample in enumerate(group.samples):
            parts = {r.name: r.scores[i] for r in results if r.scores[i] is not None}
            hashes = [r.hashes[i] for r in results if r.hashes[i]]
            sample = dataclasses.replace(sample, teacher_context_hash=",".join(hashes))
            samples.append(self._with_scores(sample, prompt, parts,
                                             [r.reasons[i] for r in results if r.reasons[i]]))
            scored_tokens += sum(r.tokens[i] for r in results if r.scores[i] is not None)
        return dataclasses.replace(group, samples=tuple(samples),
                                   teacher_score_s=time.perf_counter() - started,
                                   teacher_tokens=scored_tokens, debate_tokens=debate_tokens)

    def _with_scores(self, sample: Sample, prompt: Prompt, parts: dict[str, TokenScores],
                     reasons: list[str]) -> Sample:
        if not parts:
            return dataclasses.replace(sample, teacher_id=self.name, teacher_error="; ".join(
                reasons) or "no teacher member scored this sample")
        return dataclasses.replace(sample, teacher_id=self.name,
                                   **combined_fields(self.config, parts,
                                                     self._route_key(prompt)))

    def _route_key(self, prompt: Prompt) -> str:
        if self.config.route_key == "prompt_id":
            return prompt.prompt_id
        return str(prompt.metadata.get(self.config.route_key, prompt.prompt_id))

    async def _score_member(self, member: TeacherMember, group: Group, prompt: Prompt,
                            debate: str) -> _MemberResult:
        """One member's scores of the group's samples; where it gave none, the reason."""
        result = _MemberResult.empty(member.name, len(group.samples))
        if member.name in self._dead:
            result.reasons[:] = [f"{member.name}: down since an earlier failure"] * len(
                result.reasons)
            return result
        requests: dict[int, tuple[list[int], list[int]]] = {}
        for i, sample in enumerate(group.samples):
            try:
                context = self._context(member, sample, group, prompt, debate)
            except NoContext as why:
                result.reasons[i] = f"{member.name}: {why}"
                continue
            except Exception as error:  # noqa: BLE001 - a user's context function
                result.reasons[i] = self._fail(
                    member, f"context {member.context!r} raised on prompt {prompt.prompt_id}: "
                    f"{type(error).__name__}: {error}")
                continue
            _, prompt_ids = encode_prompt(self._tokenizer, teacher_prompt(prompt, context))
            requests[i] = (prompt_ids, list(sample.completion_ids_T))
            result.hashes[i] = hashlib.sha256(context.encode()).hexdigest()[:12]
        if not requests:
            return result
        try:
            scores = await self._engines[member.name].score(
                list(requests.values()), self.config.topk, f"{group.group_id}-{member.name}")
        except Exception as error:  # noqa: BLE001 - a dead actor or a failed engine
            lines = str(error).strip().splitlines()
            why = self._fail(member, f"scoring failed: {type(error).__name__}: "
                             f"{lines[-1][:200] if lines else ''}", dead=True)
            for i in requests:
                result.reasons[i] = why
            return result
        for (i, (prompt_ids, tokens)), score in zip(requests.items(), scores, strict=True):
            result.scores[i], result.tokens[i] = score, len(prompt_ids) + len(tokens)
        return result

    def _context(self, member: TeacherMember, sample: Sample, group: Group, prompt: Prompt,
                 debate: str) -> str:
        context = self._contexts[member.name](sample, group, prompt)
        if not isinstance(context, str):
            raise TypeError(f"returned {type(context).__name__}, not a string")
        if debate:
            context = f"{context}\n\n{debate}".strip()
        return context

    def _fail(self, member: TeacherMember, why: str, dead: bool = False) -> str:
        """Stop the run (on_failure=stop), or count the failure and return it as the reason
        the affected samples carry; `dead`: skip the member from now on."""
        message = f"{member_label(member)}: {why}"
        if self.config.on_failure == "stop":
            raise SlipstreamError(f"{message} (teacher.on_failure=continue goes on without it)")
        self.errors += 1
        if dead:
            self._dead.add(member.name)
        return message

    async def _debate(self, group: Group, prompt: Prompt) -> tuple[str, int]:
        """Members argue `debate_rounds` rounds in turn about the prompt (not the student's
        answer); the transcript becomes every member's privileged context. Returns it and the
        tokens generated (the debate's cost)."""
        lines: list[str] = []
        generated = 0
        for round_index in range(self.config.debate_rounds):
            for k, member in enumerate(self.members):
                if member.name in self._dead:
                    continue
                so_far = "\n".join(lines) or "(nothing yet)"
                ask = (f"Debate so far:\n{so_far}\n\nYou are {member.name}. Give your answer "
                       "and one line of reasoning.")
                _, ids = encode_prompt(self._tokenizer, teacher_prompt(prompt, ask))
                seed = sample_seed(self._seed, group.ticket, 1000 + round_index * 64 + k)
                try:
                    said = await self._engines[member.name].generate(
                        ids, self.config.debate_max_tokens, seed,
                        f"{group.group_id}-debate-{round_index}-{member.name}")
                except Exception as error:  # noqa: BLE001 - as in _score_member
                    self._fail(member, f"debate failed: {type(error).__name__}", dead=True)
                    continue
                generated += len(said.token_ids)
                lines.append(f"{member.name}: {said.text.strip()}")
        transcript = "(A discussion of this problem:\n" + "\n".join(lines) + ")"
        return (transcript if lines else ""), generated
