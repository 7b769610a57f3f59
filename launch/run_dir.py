"""The run directory (docs/ARCHITECTURE.md's contract) and the per-step bookkeeping shared by
the pipeline and the reference loop: the resolved model, the learner's arguments, metrics logged,
samples recorded.

    DIR/config.json   DIR/tb/   DIR/metrics.jsonl   DIR/rollouts/   DIR/buffer/
    DIR/checkpoints/  DIR/final/
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from slipstream.buffer.rollout_log import write_step
from slipstream.errors import SlipstreamError
from slipstream.launch.config import RunConfig
from slipstream.launch.metrics import TensorBoardLogger
from slipstream.launch.models import resolve_model
from slipstream.launch.placement import check_machine
from slipstream.launch.resume import ResumePoint, rewind_run_files
from slipstream.model_config import ModelConfig
from slipstream.trainer.step_record import StepResult
from slipstream.trainer.value_head import check_value_head_fits
from slipstream.trainer.weight_publish import shm_dir


def resolved_model(config: RunConfig) -> ModelConfig:
    """The model section with its path resolved to a local directory (or a hub name), once,
    in the controller: every part then loads the same files. What the loss needs of the model,
    and what the machine can hold, are checked here too, before any actor starts."""
    model = config.model.model_copy(update={"path": resolve_model(config.model.path)})
    check_machine(config, model.path)
    if config.trainer.loss.needs_values:
        check_value_head_fits(model.path)
    return model


def learner_args(config: RunConfig, run_dir: Path) -> dict:
    """The learner's keyword arguments from the other sections (trainer/learner.py) and its
    per-run tmpfs folder for published weights. `max_lag` sets how many versions' weights the
    learner keeps to rescore stale tokens under their own version: in deterministic mode with
    replay, a replayed group's bound (buffer.replay.max_age), so every token is still checked
    bitwise; otherwise max_lag (the mismatch probe then skips older replayed tokens rather than
    hold a copy of the weights per version they span)."""
    oldest = config.buffer.max_lag
    if config.buffer.replay.enabled and config.deterministic:
        oldest = max(oldest, config.buffer.replay.resolved_max_age(oldest))
    return {"group_size": config.rollout.group_size, "temperature": config.rollout.temperature,
            "max_new_tokens": config.rollout.max_new_tokens, "max_lag": oldest,
            "seed": config.seed, "deterministic": config.deterministic,
            "weights_dir": str(shm_dir(f"{run_dir.resolve().name}-{os.getpid()}"))}


# What a run writes into its directory: a directory holding any of these holds a run.
RUN_FILES = ("config.json", "metrics.jsonl", "tb", "rollouts", "buffer", "checkpoints", "final")


def claim_run_dir(path: Path, overwrite: bool) -> None:
    """Make `path` ready for a new run, or refuse in one line: a file in the way, a directory
    that cannot be written, or a run already there (two runs' metrics must never mix) unless
    `overwrite`, which removes that run's own files and nothing else."""
    if path.exists() and not path.is_dir():
        raise SlipstreamError(f"output_dir {path} is a file, not a directory")
    held = [name for name in RUN_FILES if (path / name).exists()]
    if held and not overwrite:
        raise SlipstreamError(f"output_dir {path} already holds a run ({', '.join(held)}): "
                              "choose another --output-dir, or pass --overwrite true to "
                              "replace it")
    try:
        for name in held:
            target = path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".slipstream-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise SlipstreamError(f"output_dir {path} cannot be written: {error.strerror or error}"
                              ) from None


class RunDirectory:
    """Creates the layout, writes config.json, and records each step's metrics and samples.
    `resume`: continue the run already there from that checkpoint (launch/resume.py): what it
    wrote after the checkpoint's step is removed, and `history` and the wall clock go on."""

    def __init__(self, config: RunConfig, resume: ResumePoint | None = None) -> None:
        self.path = Path(config.output_dir)
        self.history: list[dict[str, float]] = []
        if resume is None:
            claim_run_dir(self.path, config.overwrite)
        else:
            self.history = rewind_run_files(self.path, resume)
        for sub in ("tb", "rollouts", "buffer", "checkpoints"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
        self._logger = TensorBoardLogger(self.path / "tb",
                                         purge_step=None if resume is None else resume.step + 1)
        self._metrics = (self.path / "metrics.jsonl").open("a")
        wall_s = self.history[-1].get("timing/wall_s", 0.0) if self.history else 0.0
        self.opened = time.monotonic()
        self._started = self.opened - wall_s   # a resumed run's clock goes on

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
