"""One logger with namespaced keys (docs/ARCHITECTURE.md's metric names), and the batch-level
metrics that both the pipeline and the reference loop compute the same way."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from slipstream.buffer.records import Group, TrainedSample


class TensorBoardLogger:
    """`log(metrics, step)` / `close()`; events are flushed every step so curves are live.
    `purge_step`: a resumed run's first step; TensorBoard drops the events the earlier run
    wrote from that step on (a run killed after its last checkpoint logged a few)."""

    def __init__(self, directory: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(directory), flush_secs=5,
                                     purge_step=purge_step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def batch_metrics(groups: Sequence[Group], replay: bool = False) -> dict[str, float]:
    """Reward statistics of the samples trained on at one step; with `replay`, the batch's
    share of replayed groups and how often its groups had trained before."""
    samples = [s for g in groups for s in g.samples]
    rewards = [s.reward for s in samples]
    zero_variance = sum(len(set(g.rewards_G)) == 1 for g in groups)
    lengths = [len(s.completion_ids_T) for s in samples]
    replayed = {"replay/groups": sum(g.reuse_count > 0 for g in groups),
                "replay/share": sum(g.reuse_count > 0 for g in groups) / len(groups),
                "replay/reuse_mean": sum(g.reuse_count for g in groups) / len(groups)}
    # reward/mean counts replayed groups at the reward they earned when generated; this is the
    # current policy's own (the step's fresh groups; absent when all were replayed).
    fresh = [s.reward for g in groups if g.reuse_count == 0 for s in g.samples]
    if fresh:
        replayed["replay/fresh_reward_mean"] = sum(fresh) / len(fresh)
    return (replayed if replay else {}) | env_metrics(samples) | {
        "reward/mean": sum(rewards) / len(rewards),
        "reward/errors": sum(s.reward_error is not None for s in samples),
        "reward/zero_variance_groups": zero_variance,
        "rollout/completion_len_mean": sum(lengths) / len(lengths),
        "rollout/truncated_frac": sum(s.finish_reason == "length" for s in samples) / len(samples),
    }


def env_metrics(samples: Sequence) -> dict[str, float]:
    """Turns and tool calls of multi-turn samples (rollout/episode.py); empty when the step has
    none. `env/tool_failures` counts calls whose tool did not finish normally (an error, a
    timeout, a limit, a refused access); `env/turn_limit_frac` the episodes `max_turns` cut."""
    episodes = [s for s in samples if s.env_tokens_T]
    if not episodes:
        return {}
    calls = [turn for s in episodes for turn in s.env_metadata.get("env_info", ())
             if turn.get("tool")]
    env_tokens = sum(sum(s.env_tokens_T) for s in episodes)
    return {"env/turns_mean": sum(s.turns for s in episodes) / len(episodes),
            "env/tool_calls": len(calls),
            "env/tool_failures": sum(turn.get("status") != "ok" for turn in calls),
            "env/turn_limit_frac": sum(s.finish_reason == "turns" for s in episodes)
            / len(episodes),
            "env/token_frac": env_tokens / sum(len(s.env_tokens_T) for s in episodes)}


def teacher_metrics(groups: Sequence[Group], trained: Sequence[TrainedSample]) -> dict[str, float]:
    """What the teacher cost and how far the student is from each member, over the step's fresh
    groups (a replayed group's teacher ran when it was generated). `kl/teacher/<member>`: mean
    log p - log q_member over the tokens that member scored, p the learner's logprobs at the
    step (the loss's own `kl/teacher` is the same figure for the combined teacher). Empty
    without a teacher."""
    fresh = [g for g in groups if g.reuse_count == 0 and g.teacher_score_s is not None]
    metrics: dict[str, float] = {}
    if fresh:
        seconds = sum(g.teacher_score_s for g in fresh)
        metrics["timing/teacher_score_s"] = seconds / len(fresh)
        if seconds > 0:
            metrics["throughput/teacher_tokens_per_s"] = sum(g.teacher_tokens for g in fresh) \
                / seconds
        scored = sum(g.teacher_tokens for g in fresh)
        if any(g.debate_tokens for g in fresh) and scored:
            metrics["distill/debate_tokens_per_scored_token"] = \
                sum(g.debate_tokens for g in fresh) / scored
    samples = [t for t in trained if t.sample.teacher_id]
    if samples:
        metrics["distill/scored_frac"] = sum(t.sample.has_teacher for t in samples) / len(samples)
    gaps: dict[str, list[float]] = {}
    for t in samples:
        if not t.sample.has_teacher:
            continue
        parts = t.sample.teacher_parts or {t.sample.teacher_id: t.sample.teacher_logprobs_T}
        for name, logprobs in parts.items():
            gaps.setdefault(name, []).extend(
                p - q for p, q in zip(t.trainer_logprobs_T, logprobs))
    for name, values in gaps.items():
        if values:
            metrics[f"kl/teacher/{name}"] = sum(values) / len(values)
    return metrics
