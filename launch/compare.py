"""The playground: several algorithms ("arms") on the same model, prompts, sampling and budget,
each over a few seeds, then which differences are real.

    python launch/compare.py --recipes grpo,muon --seeds 2 --steps 40 --output-dir runs/cmp \
        [--minutes 10] [--samples 1024] [--eval-count 200] [--arm fast='--trainer.lr 1e-4'] \
        [--script quickstart] [--trainer.groups-per-step 2 --model.dtype float32 ... (every arm)]

An arm is a user-defined `--arm NAME='flags'`, a preset (compare_plan.PRESETS), or else a loss
kind (`--trainer.loss.kind NAME`, validated by the run config). Arms may change only the
algorithm: `trainer.*`, `buffer.replay.*`, `buffer.max_lag`, `teacher.*` and `curriculum.*`.
`--samples N` gives every run the same budget of generated samples (replay arms then take more
steps).
Each arm x seed is one run of the launch script (DIR/runs/<arm>-seed<k>, its output in
DIR/runs/<arm>-seed<k>.log), then launch/evaluate.py on its final policy; its numbers go to
DIR/runs/<arm>-seed<k>/result.json, so re-running the same command skips finished runs and
resumes (`--resume`) a run that was stopped or killed after a checkpoint; a run that finished
and was evaluated keeps its final policy and drops its checkpoints.
Writes DIR/compare.md (table, noise verdicts; rules in launch/compare_report.py) and
DIR/compare.png (reward against step, wall-clock and generated samples).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from slipstream.errors import SlipstreamError
from slipstream.launch import compare_report as cr
from slipstream.launch.cli import main_guard, parse_config
from slipstream.launch.compare_plan import (LAUNCH, NO_STEP_LIMIT, Arm, Plan, parse_args,
                                            run_dir, run_flags)
from slipstream.trainer.checkpoints import complete_checkpoints, read_manifest

# Config fields that differ between runs or belong to training only; evaluation gets the rest.
PER_RUN = {"output_dir", "overwrite", "resume", "resumes", "seed", "steps", "progress",
           "time_budget_min", "sample_budget"}


def validate(plan: Plan) -> int:
    """Every arm's config through the script's own defaults and checks, before any run starts.
    Returns the script's default steps (the budget when neither --steps nor --minutes is given)."""
    spec = importlib.util.spec_from_file_location("_compared_script", plan.script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # launch scripts import their heavy parts inside main()
    defaults = getattr(module, "DEFAULTS", {})
    steps = 0
    for arm in plan.arms:
        try:
            steps = parse_config(run_flags(plan, arm, 0), **defaults).steps
        except SlipstreamError as error:
            raise SlipstreamError(f"arm {arm.name!r}: {error}") from None
    return steps


def write_json(path: Path, data: dict) -> None:
    """Atomically: a reader (or a re-run after a crash) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def claim_output_dir(plan: Plan) -> None:
    """Refuse a DIR that holds something else, or another comparison's footing or arm flags."""
    stored_path = plan.out / "compare.json"
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else None
    if stored is None and plan.out.exists() and any(plan.out.iterdir()):
        raise SlipstreamError(f"{plan.out} is not empty and holds no compare.json: "
                              "use an empty or new --output-dir")
    stored = stored or {"footing": plan.footing(), "arms": {}}
    for key, value in plan.footing().items():
        if stored["footing"].get(key) != value:
            raise SlipstreamError(f"{plan.out} holds a comparison with {key} = "
                                  f"{stored['footing'].get(key)!r}, not {value!r}: use another "
                                  "--output-dir")
    for arm in plan.arms:
        if stored["arms"].get(arm.name, arm.flags) != arm.flags:
            raise SlipstreamError(f"arm {arm.name!r} ran in {plan.out} with flags "
                                  f"{stored['arms'][arm.name]}: rename it or use another dir")
        stored["arms"][arm.name] = arm.flags
    write_json(stored_path, stored)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


class StepWatcher:
    """Reads the growing metrics.jsonl of a running run; a half-written last line waits."""

    def __init__(self, path: Path) -> None:
        self.path, self._pos, self.rows = path, 0, []

    def poll(self) -> list[dict]:
        if self.path.exists():
            if self.path.stat().st_size < self._pos:   # a resume rewound it: read it again
                self._pos, self.rows = 0, []
            with self.path.open("rb") as f:
                f.seek(self._pos)
                chunk = f.read()
            complete = chunk[:chunk.rfind(b"\n") + 1]
            self._pos += len(complete)
            self.rows += [json.loads(line) for line in complete.decode().splitlines()
                          if line.strip()]
        return self.rows


def resumable(out: Path, steps: int | None) -> bool:
    """An earlier try of this run left a complete checkpoint before its last step."""
    if not (out / "config.json").exists():
        return False
    saved = complete_checkpoints(out / "checkpoints")
    return bool(saved) and read_manifest(saved[-1])["client_state"]["step"] < (steps or 0)


def train(plan: Plan, arm: Arm, seed: int, bar: tqdm, done: float) -> tuple[int, str, float]:
    """One run of the launch script; the bar follows its steps. Returns (exit code, last line
    of its output, seconds)."""
    out, log_path = run_dir(plan, arm, seed), plan.out / "runs" / f"{arm.name}-seed{seed}.log"
    flags = run_flags(plan, arm, seed)
    # An earlier try that was stopped or killed after a checkpoint goes on from there.
    if resumable(out, plan.steps or NO_STEP_LIMIT):
        flags += ["--resume", str(out)]
        tqdm.write(f"compare: {arm.name}-seed{seed} resumes from its last checkpoint")
    else:
        shutil.rmtree(out, ignore_errors=True)   # an unfinished try with no checkpoint
    log_path.parent.mkdir(parents=True, exist_ok=True)
    watcher, started = StepWatcher(out / "metrics.jsonl"), time.monotonic()
    with log_path.open("a") as log:
        proc = subprocess.Popen([sys.executable, str(plan.script), *flags],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                rows, elapsed = watcher.poll(), time.monotonic() - started
                fresh = rows[-1].get("rollout/fresh_samples_total", 0) if rows else 0
                fraction = max(len(rows) / plan.steps if plan.steps else 0.0,
                               elapsed / (plan.minutes * 60) if plan.minutes else 0.0,
                               fresh / plan.samples if plan.samples else 0.0)
                bar.n = done + min(fraction, 0.99)
                reward = f" reward {rows[-1]['reward/mean']:.3f}" if rows else ""
                bar.set_postfix_str(f"{arm.name} seed{seed} step {len(rows)}{reward}")
        finally:
            if proc.poll() is None:   # interrupted: let the run stop its actors cleanly
                proc.terminate()
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return proc.returncode, last_line(log_path.read_text()), time.monotonic() - started


def eval_flags(config: dict) -> list[str]:
    """The run's resolved config (script defaults, common overrides, arm flags) as flags for
    launch/evaluate.py: same env, reward, sampling length and dtype, and a config that passes the
    same cross-field checks. The seed stays evaluate's default: every run sees the same problems."""
    flags = []
    for key, value in config.items():
        if key not in PER_RUN:
            text = json.dumps(value) if isinstance(value, dict | list | bool) else str(value)
            flags += [f"--{key.replace('_', '-')}", text]
    return flags


def evaluate(plan: Plan, out: Path) -> tuple[float | None, str | None, float]:
    """Held-out accuracy of out/final: (accuracy or None, error line or None, seconds)."""
    config = json.loads((out / "config.json").read_text())
    command = [sys.executable, str(LAUNCH / "evaluate.py"), str(out / "final"), "--count",
               str(plan.eval_count), *eval_flags(config)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    with (out.parent / f"{out.name}.log").open("a") as log:
        log.write(f"\n=== {shlex.join(command)}\n{result.stdout}{result.stderr}")
    found = re.search(r"held-out accuracy ([0-9.]+) on", result.stdout)
    error = None if result.returncode == 0 and found else last_line(result.stderr or
                                                                       result.stdout)
    return (float(found[1]) if found else None), error, time.monotonic() - started


def run_curve(out: Path) -> dict:
    """The run's reward curve and samples per step, from metrics.jsonl and config.json."""
    rows = StepWatcher(out / "metrics.jsonl").poll()
    config_path = out / "config.json"
    per_step = 0
    if config_path.exists():
        config = json.loads(config_path.read_text())
        per_step = config["trainer"]["groups_per_step"] * config["rollout"]["group_size"]
    return {"steps": [r["step"] for r in rows], "rewards": [r["reward/mean"] for r in rows],
            "wall_s": [r["timing/wall_s"] for r in rows], "samples_per_step": per_step,
            "fresh_samples": [r.get("rollout/fresh_samples_total", 0) for r in rows]}


def run_one(plan: Plan, arm: Arm, seed: int, bar: tqdm, done: float) -> cr.RunResult:
    """Train (unless an earlier try trained it and only its evaluation failed), then evaluate."""
    out = run_dir(plan, arm, seed)
    path = out / "result.json"
    earlier = cr.RunResult(**json.loads(path.read_text())) if path.exists() else None
    if earlier and earlier.status == "eval_failed":
        result = dataclasses.replace(earlier, status="ok", error=None)
    else:
        code, line, seconds = train(plan, arm, seed, bar, done)
        result = cr.RunResult(arm.name, seed, "ok" if code == 0 else "train_failed",
                              None if code == 0 else line, train_s=seconds, **run_curve(out))
        if code != 0:
            tqdm.write(f"{arm.name}-seed{seed} failed: {line}")
    if result.status == "ok" and plan.eval_count:
        bar.n = done + 1
        bar.set_postfix_str(f"{arm.name} seed{seed} evaluating")
        result.accuracy, error, result.eval_s = evaluate(plan, out)
        result.eval_count = plan.eval_count
        if error:
            result.status, result.error = "eval_failed", error
            tqdm.write(f"{arm.name}-seed{seed} evaluation failed: {error}")
    write_json(path, dataclasses.asdict(result))
    if result.status == "ok":
        # A finished run is never resumed: its checkpoints (1.2 GB each for SmolLM2 with its
        # optimizer) only fill the disk; final/ keeps the policy. A playground of 10 runs filled
        # this machine's disk before this.
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return result


def load_finished(plan: Plan) -> dict[tuple[str, int], cr.RunResult]:
    found = {}
    for arm in plan.arms:
        for seed in range(plan.seeds):
            path = run_dir(plan, arm, seed) / "result.json"
            result = cr.RunResult(**json.loads(path.read_text())) if path.exists() else None
            if result and result.status == "ok":
                found[arm.name, seed] = result
    return found


def plot(summaries: list[cr.ArmSummary], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")   # files only, no display
    import matplotlib.pyplot as plt

    fig, (by_step, by_time, by_samples) = plt.subplots(1, 3, figsize=(17, 4.5))
    for arm in summaries:
        runs = [r for r in arm.runs if r.trained]
        if not runs:
            continue
        bands = [(by_step, cr.band_by_step(runs)), (by_time, cr.band_by_time(runs))]
        if all(r.fresh_samples and r.fresh_samples[-1] for r in runs):
            bands.append((by_samples, cr.band_by_samples(runs)))
        for axis, band in bands:
            x, mean, low, high = band
            line, = axis.plot(x, mean, label=f"{arm.name} ({len(runs)} seeds)")
            axis.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    by_step.set(xlabel="learner step", ylabel="reward (mean of the step's samples)")
    by_time.set(xlabel="wall clock (minutes)", ylabel="reward")
    by_samples.set(xlabel="generated samples trained on (fresh)", ylabel="reward")
    for axis in (by_step, by_time, by_samples):
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize="small")
    fig.suptitle("reward: mean over seeds, band = min-max over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    plan = parse_args(sys.argv[1:] if argv is None else argv)
    default_steps = validate(plan)
    if plan.steps is None and plan.minutes is None and plan.samples is None:
        plan.steps = default_steps   # explicit, so compare.json and the report name it
    claim_output_dir(plan)
    results = load_finished(plan)
    for arm_name, seed in results:
        print(f"compare: skipped {arm_name}-seed{seed}: its result.json exists")
    todo = [(a, s) for a in plan.arms for s in range(plan.seeds) if (a.name, s) not in results]
    bar = tqdm(total=2 * len(todo), desc="compare", dynamic_ncols=True, disable=not todo,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
    for i, (arm, seed) in enumerate(todo):
        results[arm.name, seed] = run_one(plan, arm, seed, bar, done=2.0 * i)
        bar.n = 2.0 * (i + 1)
        bar.refresh()
    bar.close()
    # With a clock budget runs end at different steps: wall time is the common axis.
    auc_over = "time" if plan.minutes or plan.samples else "steps"
    summaries = [cr.summarise(a.name, a.flags, [results[a.name, s] for s in range(plan.seeds)],
                              auc_over) for a in plan.arms]
    (plan.out / "compare.md").write_text(cr.report(
        summaries, budget=plan.budget_text(), command=plan.command, common=plan.common,
        auc_over=auc_over))
    plot(summaries, plan.out / "compare.png")
    print(f"compare: wrote {plan.out / 'compare.md'} and {plan.out / 'compare.png'}")
    failed = [f"{r.arm}-seed{r.seed}" for r in results.values() if r.status != "ok"]
    if failed:
        raise SlipstreamError(f"{len(failed)} of {len(results)} runs failed ({', '.join(failed)});"
                              f" the others are compared in {plan.out / 'compare.md'}")


if __name__ == "__main__":
    main_guard(main)
