"""`--resume DIR`: continue a run from its last complete checkpoint as if it had never stopped.

A checkpoint (trainer/checkpoints.py: written whole or known incomplete) holds
* the learner's state: weights, optimizer moments, the learning-rate schedule, the step, the RNG
  states, the value head, and in deterministic mode the weights of the versions still within
  max_lag (trainer/learner.py `save_checkpoint`);
* `RUN_STATE`, the controller's part: the buffer's waiting groups whole (tokens, logprobs,
  versions, rewards: bitwise), its ticket counter and the tickets in flight, its counts, how many
  lines of `evictions.jsonl` were written, the tokens generated and the wall time so far.

Resuming from the checkpoint of step k:
1. the config is the run's own `config.json`; the command line may change only
   `SAFE_ON_RESUME` (the step budget, output options), anything else is refused in one line, and
   the resume is recorded in `config.json` (`resumes`);
2. the run directory is rewound to step k: rows of `metrics.jsonl`, `rollouts/` step files and
   index lines, buffer snapshots and eviction lines from after it are removed, and TensorBoard
   drops its events past k (`SummaryWriter(purge_step=k + 1)`), so every curve continues at step
   k + 1 with no gap and no duplicate;
3. the learner loads the checkpoint and publishes version k to the engines before any generation;
4. the buffer starts from its state: the tickets that were in flight are generated again first,
   from the same prompts with the same seeds (`ReplayBuffer.reissue`), under the version the
   schedule allows them (under `buffer.schedule=pinned`, exactly their own: the controller takes
   a pinned run's checkpoint when every ticket of the version in use is back).

With `--deterministic true --buffer.schedule pinned` a run killed at any point and resumed gives
the same losses and bit-identical final weights as the run that was never stopped
(tests/test_resume_e2e.py).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from slipstream.errors import SlipstreamError
from slipstream.launch.config import ResumeRecord, RunConfig
from slipstream.trainer.checkpoints import latest_complete, read_manifest

RUN_STATE = "run_state.json"
# What a resume may change: how long to go on and what to write, never what is computed.
SAFE_ON_RESUME = frozenset({
    "steps", "time_budget_min", "sample_budget", "progress", "output_dir", "resume", "resumes",
    "overwrite",
    "trainer.checkpoint_every", "trainer.keep_checkpoints", "trainer.sync_timeout_s",
    "buffer.snapshot_every"})


@dataclass(frozen=True)
class ResumePoint:
    folder: Path               # the checkpoint
    step: int                  # the learner step it was taken after
    state: dict[str, Any]      # RUN_STATE


def saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json as a dict, or one line saying why there is none to resume."""
    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SlipstreamError(f"--resume {run_dir}: no config.json there, so no run to "
                              "resume") from None
    except (OSError, ValueError) as error:
        raise SlipstreamError(f"--resume {run_dir}: config.json cannot be read ({error})"
                              ) from None
    if not isinstance(data, dict):
        raise SlipstreamError(f"--resume {run_dir}: config.json is not a run's config")
    return data


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "changed":
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_fields(before: RunConfig, after: RunConfig) -> dict[str, list]:
    """Dotted field name -> [before, after] for every field that differs."""
    old, new = (_flatten(c.model_dump(mode="json")) for c in (before, after))
    return {k: [old.get(k), new.get(k)] for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)}


def find_resume_point(run_dir: str | Path) -> ResumePoint:
    """The newest complete checkpoint of the run (incomplete newer ones are passed over, each
    with a one-line warning), or one line saying there is none."""
    folder = latest_complete(Path(run_dir) / "checkpoints")
    if folder is None:
        raise SlipstreamError(f"--resume {run_dir}: no complete checkpoint in "
                              f"{Path(run_dir) / 'checkpoints'} (the run stopped before its "
                              "first; see trainer.checkpoint_every)")
    try:
        state = json.loads((folder / RUN_STATE).read_text())
        step = int(read_manifest(folder)["client_state"]["step"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SlipstreamError(f"--resume {run_dir}: checkpoint {folder.name} has no readable "
                              f"run state ({error}); it was not written by this version of "
                              "slipstream's pipeline") from None
    return ResumePoint(folder, step, state)


def begin_resume(config: RunConfig) -> tuple[RunConfig, ResumePoint]:
    """Check that `config` may continue the run in `config.resume` (same directory, nothing but
    safe fields changed, a checkpoint to start from, steps left) and return it with the resume
    recorded, and where to start."""
    run_dir = Path(config.resume)
    if Path(config.output_dir).resolve() != run_dir.resolve():
        raise SlipstreamError(f"--resume {run_dir} continues that run in its own directory: "
                              f"drop --output-dir {config.output_dir}")
    try:
        before = RunConfig.model_validate(saved_config(run_dir))
    except ValidationError as error:
        raise SlipstreamError(f"--resume {run_dir}: its config.json is not a valid run config "
                              f"({error.errors()[0]['msg']})") from None
    changed = changed_fields(before, config)
    unsafe = {k: v for k, v in changed.items() if k.split(".")[0] not in ("resume", "resumes")
              and k not in SAFE_ON_RESUME}
    if unsafe:
        name, (old, new) = next(iter(unsafe.items()))
        more = f" (and {len(unsafe) - 1} more)" if len(unsafe) > 1 else ""
        raise SlipstreamError(
            f"--resume {run_dir}: {name} was {old!r} in that run, not {new!r}{more}; a resume "
            f"may change only {', '.join(sorted(SAFE_ON_RESUME - {'resume', 'resumes'}))}. "
            "Start a new run (another --output-dir) to change it")
    point = find_resume_point(run_dir)
    if point.step >= config.steps:
        raise SlipstreamError(f"--resume {run_dir}: its last checkpoint is at step {point.step}"
                              f" and steps is {config.steps}: pass a larger --steps to go on")
    record = ResumeRecord(from_step=point.step, checkpoint=str(point.folder),
                          at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          changed={k: v for k, v in changed.items()
                                   if k not in ("resume", "resumes")})
    return config.model_copy(update={"resumes": [*config.resumes, record]}), point


def _lines_through(path: Path, step: int) -> list[tuple[str, dict]]:
    """(line, row) for each whole row of a JSON Lines file whose `step` is at most `step`; a
    half-written or damaged line is dropped. Lines are kept as written, not re-encoded."""
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append((line, row))
    return kept


def _rewrite(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.rewind")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def _step_of(path: Path) -> int | None:
    match = re.search(r"(\d+)\.jsonl$", path.name)
    return int(match.group(1)) if match else None


def rewind_run_files(run_dir: Path, point: ResumePoint) -> list[dict[str, float]]:
    """Remove what the run wrote after `point.step` (steps 2 above); returns the metrics rows
    of steps 1..k (without their `step` key), the history the resumed run continues."""
    k = point.step
    metrics_path = run_dir / "metrics.jsonl"
    metrics = _lines_through(metrics_path, k)
    _rewrite(metrics_path, [line for line, _ in metrics])
    rollouts, buffer = run_dir / "rollouts", run_dir / "buffer"
    for path in [*rollouts.glob("step-*.jsonl"), *buffer.glob("snapshot-step*.jsonl")]:
        if (_step_of(path) or 0) > k:
            path.unlink()
    for path in [*rollouts.glob("*.tmp"), *buffer.glob("*.tmp"),
                 buffer / "snapshot-final.jsonl"]:
        path.unlink(missing_ok=True)
    index = rollouts / "index.jsonl"
    if index.exists():
        _rewrite(index, [line for line, _ in _lines_through(index, k)])
    evictions = buffer / "evictions.jsonl"
    if evictions.exists():
        kept = point.state.get("evictions_logged", 0)
        _rewrite(evictions, evictions.read_text().splitlines()[:kept])
    return [{key: value for key, value in row.items() if key != "step"} for _, row in metrics]
