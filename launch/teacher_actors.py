"""Starting the run's teachers: one `TeacherActor` (rollout/teacher_actor.py) per distinct frozen
checkpoint among the teacher's members, shared by every rollout worker, with its vocabulary
checked against the student's before any actor starts; and a rubric reward's judge, in one more
(rewards/judge.py)."""

from __future__ import annotations

import ray
from ray.exceptions import RayActorError, RayTaskError

from slipstream.errors import SlipstreamError, one_line
from slipstream.launch.config import RunConfig
from slipstream.launch.models import resolve_model
from slipstream.model_config import ModelConfig
from slipstream.rewards import RewardConfig
from slipstream.rollout.teacher_actor import TeacherActor, vocabulary_signature
from slipstream.rollout.teachers import context_function

_RUBRIC_TOKENS = 256       # a judge prompt's own words around the task and the response


def teacher_paths(config: RunConfig, student: ModelConfig) -> dict[str, list[str]]:
    """Resolved checkpoint -> the members scoring with it. A frozen self-teacher is the student's
    starting checkpoint; a live one scores on the workers' engines and needs no actor."""
    paths: dict[str, list[str]] = {}
    for member in config.teacher.resolved_members:
        if member.source == "self":
            if member.weights == "live":
                continue
            path = student.path
        else:
            try:
                path = resolve_model(member.path)
            except SlipstreamError as error:
                raise SlipstreamError(f"teacher {member.name}: {error}") from None
        paths.setdefault(path, []).append(member.name)
    return paths


def check_teachers(config: RunConfig, student: ModelConfig) -> None:
    """What can fail before any actor starts, in one line: a teacher path that does not exist,
    a context function that cannot be imported."""
    from transformers import AutoTokenizer

    paths = teacher_paths(config, student)
    for member in config.teacher.resolved_members:
        context_function(member.context)
    expected = vocabulary_signature(AutoTokenizer.from_pretrained(student.path))
    for path, names in paths.items():
        signature = vocabulary_signature(AutoTokenizer.from_pretrained(path))
        if signature != expected:
            raise SlipstreamError(
                f"teacher {', '.join(names)} ({path}) has another vocabulary than the student "
                f"({signature[0]} tokens against {expected[0]}, or the same count numbered "
                "differently): distillation compares token ids, so the teacher needs the "
                "student's tokenizer")


def start_teachers(config: RunConfig, student: ModelConfig) -> tuple[dict, list]:
    """(member name -> actor handle, every actor), started (`check_teachers` ran first)."""
    paths = teacher_paths(config, student)
    if not paths:
        return {}, []
    actors = {path: TeacherActor.options(num_cpus=0).remote(
        student.model_copy(update={"path": path}), config.teacher.kv_cache_gb, config.seed,
        config.deterministic) for path in paths}
    for path, actor in actors.items():
        try:
            ray.get(actor.start.remote(), timeout=600)
        except (RayTaskError, RayActorError) as error:
            raise SlipstreamError(f"teacher {', '.join(paths[path])} ({path}) failed to start: "
                                  f"{one_line(error)}") from None
    handles = {name: actors[path] for path, names in paths.items() for name in names}
    return handles, list(actors.values())


def start_judge(config: RunConfig, student: ModelConfig
                ) -> tuple[ray.actor.ActorHandle | None, RewardConfig]:
    """The judge's actor, started, and the reward config with the judge's path resolved; no
    actor for a reward that needs none. The judge runs vLLM whatever `deterministic` says
    (RunConfig refuses the two together)."""
    reward = config.reward
    if reward.kind != "judge":
        return None, reward
    reward = reward.model_copy(update={"model": resolve_model(reward.model)})
    # The judge reads the prompt and the response, in its own tokens, and the rubric's text.
    context = 2 * student.max_model_len + _RUBRIC_TOKENS
    judge = TeacherActor.options(num_cpus=0).remote(
        student.model_copy(update={"path": reward.model, "max_model_len": context}),
        reward.kv_cache_gb, config.seed, False)
    try:
        ray.get(judge.start.remote(), timeout=600)
    except (RayTaskError, RayActorError) as error:
        raise SlipstreamError(f"reward judge ({reward.model}) failed to start: "
                              f"{one_line(error)}") from None
    return judge, reward
