"""The run directory (DESIGN.md's contract) and the per-step bookkeeping shared by the pipeline
and the reference loop: settings built from the config, metrics logged, samples recorded.

    DIR/config.json   DIR/tb/   DIR/metrics.jsonl   DIR/rollouts/   DIR/buffer/
    DIR/checkpoints/  DIR/final/
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from slipstream.buffer.rollout_log import write_step
from slipstream.launch.config import RunConfig
from slipstream.launch.metrics import TensorBoardLogger
from slipstream.rollout.engine import EngineSettings, SamplingSettings
from slipstream.rollout.group import GroupSettings
from slipstream.trainer.learner import LearnerSettings, StepResult
from slipstream.trainer.weight_publish import shm_dir


def engine_settings(config: RunConfig, model_path: str) -> EngineSettings:
    return EngineSettings(model=model_path, dtype=config.model.dtype,
                          max_model_len=config.model.max_model_len,
                          kv_cache_gb=config.rollout.kv_cache_gb, seed=config.seed,
                          sampler="reference" if config.deterministic else "vllm")


def group_settings(config: RunConfig, worker_id: int = 0) -> GroupSettings:
    sampling = SamplingSettings(temperature=config.rollout.temperature,
                                top_p=config.rollout.top_p,
                                max_tokens=config.rollout.max_new_tokens)
    return GroupSettings(group_size=config.rollout.group_size, sampling=sampling,
                         seed=config.seed, worker_id=worker_id)


def learner_settings(config: RunConfig, model_path: str, run_dir: Path) -> LearnerSettings:
    t = config.trainer
    return LearnerSettings(
        model_path=model_path, dtype=config.model.dtype, loss=t.loss,
        samples_per_step=config.samples_per_step, micro_batch_size=t.micro_batch_size,
        lr=t.lr, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
        grad_clip=t.grad_clip, zero_stage=t.zero_stage, threads=t.threads,
        temperature=config.rollout.temperature, reference_model=t.reference_model,
        seed=config.seed, deterministic=config.deterministic, max_lag=config.buffer.max_lag,
        weights_dir=str(shm_dir(f"{run_dir.resolve().name}-{os.getpid()}")))


class RunDirectory:
    """Creates the layout, writes config.json, and records each step's metrics and samples."""

    def __init__(self, config: RunConfig) -> None:
        self.path = Path(config.output_dir)
        for sub in ("tb", "rollouts", "buffer", "checkpoints"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
        self._logger = TensorBoardLogger(self.path / "tb")
        self._metrics = (self.path / "metrics.jsonl").open("a")
        self.history: list[dict[str, float]] = []
        self._started = time.monotonic()

    @property
    def rollouts(self) -> Path:
        return self.path / "rollouts"

    @property
    def buffer(self) -> Path:
        return self.path / "buffer"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def record(self, result: StepResult, extra: dict[str, float]) -> dict[str, float]:
        """Log one learner step: TensorBoard, metrics.jsonl, and the trained samples."""
        trained_tokens = sum(t.sample.num_tokens for t in result.trained)
        metrics = {**result.metrics, **extra, "timing/wall_s": time.monotonic() - self._started,
                   "throughput/step_tokens": trained_tokens}
        if not all(math.isfinite(float(v)) for v in metrics.values()):
            bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
            print(f"slipstream: warning: non-finite metrics at step {result.step}: {bad}")
        write_step(self.rollouts, result.step, result.trained)
        self._logger.log(metrics, result.step)
        self._metrics.write(json.dumps({"step": result.step, **metrics}) + "\n")
        self._metrics.flush()
        self.history.append(metrics)
        return metrics

    def close(self) -> None:
        self._logger.close()
        self._metrics.close()


def reward_summary(history: list[dict[str, float]], window: int = 5) -> str:
    """"mean reward: first 5 steps 0.13, last 5 steps 0.41" for the end of a run."""
    rewards = [m["reward/mean"] for m in history]
    if not rewards:
        return "no steps completed"
    n = min(window, len(rewards))
    first, last = sum(rewards[:n]) / n, sum(rewards[-n:]) / n
    return f"mean reward: first {n} steps {first:.3f}, last {n} steps {last:.3f}"
