"""One logger with namespaced keys (docs/ARCHITECTURE.md's metric names), and the batch-level
metrics that both the pipeline and the reference loop compute the same way."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from slipstream.buffer.records import Group


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
    return (replayed if replay else {}) | {
        "reward/mean": sum(rewards) / len(rewards),
        "reward/errors": sum(s.reward_error is not None for s in samples),
        "reward/zero_variance_groups": zero_variance,
        "rollout/completion_len_mean": sum(lengths) / len(lengths),
        "rollout/truncated_frac": sum(s.finish_reason == "length" for s in samples) / len(samples),
    }
