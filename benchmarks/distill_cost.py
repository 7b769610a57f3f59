"""What a teacher costs: distillation against GRPO at the same batch, side by side in one run.

    python benchmarks/distill_cost.py [--steps 6] [--pairs 1] [--teacher PATH]

Each pair runs the quickstart's settings twice, as a user would launch them: GRPO, and on-policy
distillation (`--trainer.loss.kind distill`) from a frozen model teacher in its own vLLM engine
(default: the student's own checkpoint, which costs what any 135M teacher does, e.g. the
quickstart's `runs/quickstart/final`). The order alternates between pairs so drift on a shared
machine falls on both arms. Steady-state figures skip the first step (engine start, first fill).

Prints, per arm: wall seconds per learner step (the figure the issue bounds: distillation at most
1.3x GRPO), the learner's own seconds per step, the teacher's seconds per group and its tokens
per second, and the rollout tokens per second; then the ratio of the two arms' wall seconds per
step, per pair and their median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import slipstream  # noqa: F401  (before torch/vLLM: hides the broken vision packages)
from measure import quickstart_flags, run_script  # benchmarks/ is on the path of its scripts


def steady_mean(metrics: list[dict], key: str) -> float | None:
    values = [m[key] for m in metrics[1:] if key in m]
    return sum(values) / len(values) if values else None


def summary(metrics: list[dict]) -> dict[str, float | None]:
    wall = metrics[-1]["timing/wall_s"] - metrics[0]["timing/wall_s"]
    tokens = metrics[-1]["rollout/tokens_total"] - metrics[0]["rollout/tokens_total"]
    return {"wall s/step": wall / (len(metrics) - 1),
            "learner s/step": steady_mean(metrics, "timing/step_s"),
            "teacher s/group": steady_mean(metrics, "timing/teacher_score_s"),
            "teacher tok/s": steady_mean(metrics, "throughput/teacher_tokens_per_s"),
            "rollout tok/s": tokens / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: student)")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3 (the first step is left out)")
    from slipstream.launch.models import resolve_model
    from slipstream.launch.quickstart import DEFAULTS

    teacher = args.teacher or resolve_model(DEFAULTS["model"]["path"])
    arms = {"grpo": [],
            "distill": ["--trainer.loss.kind", "distill", "--teacher.kind", "model",
                        "--teacher.path", teacher, "--teacher.kv-cache-gb", "0.25"]}
    common = [*quickstart_flags(), "--steps", str(args.steps)]
    results: dict[str, list[dict]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory(prefix="distill-cost-") as scratch:
        for pair in range(args.pairs):
            order = list(arms) if pair % 2 == 0 else list(reversed(arms))
            for name in order:
                out = Path(scratch) / f"{name}-{pair}"
                print(f"pair {pair + 1}/{args.pairs}: {name} ...", flush=True)
                results[name].append(summary(run_script("quickstart.py", out,
                                                        [*common, *arms[name]]).metrics))
    for name, runs in results.items():
        for i, figures in enumerate(runs):
            text = ", ".join(f"{k} {v:.2f}" for k, v in figures.items() if v is not None)
            print(f"{name} (pair {i + 1}): {text}")
    ratios = [d["wall s/step"] / g["wall s/step"]
              for d, g in zip(results["distill"], results["grpo"])]
    print("distill / grpo wall seconds per step: "
          + ", ".join(f"{r:.2f}" for r in ratios)
          + f"; median {statistics.median(ratios):.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
