"""The quickstart against TRL's GRPOTrainer: the same task and settings, the same wall clock.

    pip install -e ".[cpu,test,bench]"
    python benchmarks/peer_trl.py [--minutes 12] [--seeds 0 1] [--count 200] [--out DIR]

For each seed the two runs go back to back on this machine, each for `--minutes` on its own clock
(start-up included; a run ends after the first step that finishes past it). The order alternates
from seed to seed, so a machine that slows down over the hour favours neither side. TRL's run is
benchmarks/trl_arm.py (its docstring maps every quickstart setting onto GRPOConfig).

Per run it prints optimizer steps, trained samples per minute and trained tokens (prompt and
completion) per second, both over the process's whole wall time as the user waits; the reward
curve (mean reward of the steps finishing in each 2-minute window); held-out accuracy of the
final policy (launch/evaluate.py: greedy answers to the env's held-out stream, the same reward);
the peak PSS of the process tree. Then slipstream / TRL ratios, mean and range over the seeds.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import ROOT, MeasuredRun, run_measured, run_script  # benchmarks/ is on the path
from slipstream.launch.quickstart import DEFAULTS

WINDOW_MIN = 2.0
SAMPLES_PER_STEP = (DEFAULTS["trainer"]["groups_per_step"]     # trl_arm.py uses the same
                    * DEFAULTS["rollout"]["group_size"])


def slipstream_arm(out: Path, seed: int, minutes: float) -> MeasuredRun:
    return run_script("quickstart.py", out, ["--seed", str(seed), "--time-budget-min",
                                             str(minutes), "--steps", "100000"])


def trl_arm(out: Path, seed: int, minutes: float, precision: str) -> MeasuredRun:
    return run_measured([sys.executable, str(ROOT / "benchmarks" / "trl_arm.py"), "--out",
                         str(out), "--seed", str(seed), "--minutes", str(minutes),
                         "--precision", precision], out)


def held_out_accuracy(models: list[Path], count: int) -> dict[str, float]:
    """launch/evaluate.py on every final policy (one engine at a time), parsed from its lines."""
    base = "smollm2-135m-instruct"
    command = [sys.executable, str(ROOT / "launch" / "evaluate.py"), base,
               *map(str, models), "--count", str(count)]
    output = subprocess.run(command, capture_output=True, text=True)
    if output.returncode != 0:
        sys.exit(f"evaluate.py failed:\n{output.stderr[-3000:]}")
    found = re.findall(r"^(.*): held-out accuracy ([0-9.]+) on", output.stdout, re.MULTILINE)
    return {name: float(score) for name, score in found}


def summarise(name: str, seed: int, run: MeasuredRun, accuracy: float | None) -> dict:
    steps = len(run.metrics)
    windows: dict[int, list[float]] = {}
    for m in run.metrics:
        windows.setdefault(int(m["timing/wall_s"] / 60 / WINDOW_MIN), []).append(m["reward/mean"])
    return {
        "arm": name, "seed": seed, "steps": steps,
        "samples_per_min": steps * SAMPLES_PER_STEP / (run.wall_s / 60),
        "tokens_per_s": sum(m["throughput/step_tokens"] for m in run.metrics) / run.wall_s,
        "wall_min": run.wall_s / 60, "held_out": accuracy, "peak_pss_gib": run.peak_pss_gib,
        "reward_curve": [round(sum(r) / len(r), 3) for _, r in sorted(windows.items())],
    }


def print_table(rows: list[dict], base_accuracy: float | None) -> None:
    print("| run | seed | steps | wall (min) | trained samples/min | trained tokens/s | "
          "held-out accuracy | peak PSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        accuracy = "n/a" if r["held_out"] is None else f"{r['held_out']:.3f}"
        print(f"| {r['arm']} | {r['seed']} | {r['steps']} | {r['wall_min']:.1f} | "
              f"{r['samples_per_min']:.1f} | {r['tokens_per_s']:.1f} | {accuracy} | "
              f"{r['peak_pss_gib']:.2f} |")
    if base_accuracy is not None:
        print(f"\nthe model before training: held-out accuracy {base_accuracy:.3f}")
    print(f"\nreward curve (mean reward of the steps ending in each {WINDOW_MIN:g}-minute window):")
    for r in rows:
        curve = " ".join(f"{v:.2f}" for v in r["reward_curve"])
        print(f"  {r['arm']:10s} seed {r['seed']}: {curve}")
    print()
    for key, label in [("samples_per_min", "trained samples per minute"),
                       ("tokens_per_s", "trained tokens per second"),
                       ("held_out", "held-out accuracy")]:
        ratios = [ours[key] / theirs[key] for ours, theirs in zip(rows[0::2], rows[1::2])
                  if ours[key] is not None and theirs[key]]
        if ratios:
            print(f"slipstream / TRL, {label}: mean {sum(ratios) / len(ratios):.2f}x "
                  f"(range {min(ratios):.2f}x-{max(ratios):.2f}x over {len(ratios)} seeds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="wall-clock budget per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--count", type=int, default=200, help="held-out problems (0: skip)")
    parser.add_argument("--precision", default="autocast", help="TRL's (trl_arm.py --precision)")
    parser.add_argument("--out", default=None, help="keep the run directories here")
    args = parser.parse_args()
    try:
        trl_version = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        sys.exit('TRL is not installed: pip install -e ".[bench]"')
    out = Path(args.out or tempfile.mkdtemp(prefix="slipstream-vs-trl-"))
    runs: list[tuple[str, int, Path, MeasuredRun]] = []
    for index, seed in enumerate(args.seeds):
        arms = [("slipstream", slipstream_arm), ("trl", trl_arm)]
        for name, arm in arms if index % 2 == 0 else arms[::-1]:
            print(f"running {name}, seed {seed}, {args.minutes:g} minutes ...", flush=True)
            directory = out / f"{name}-s{seed}"
            extra = (args.precision,) if name == "trl" else ()
            runs.append((name, seed, directory, arm(directory, seed, args.minutes, *extra)))
    runs.sort(key=lambda run: (run[1], run[0] != "slipstream"))   # pairs: ours, then TRL's
    accuracy = (held_out_accuracy([d / "final" for _, _, d, _ in runs], args.count)
                if args.count else {})
    rows = [summarise(name, seed, run, accuracy.get(str(d / "final")))
            for name, seed, d, run in runs]
    print(f"\nslipstream quickstart vs TRL {trl_version} GRPOTrainer, "
          f"{args.minutes:g} minutes each, run directories in {out}\n")
    print_table(rows, accuracy.get("smollm2-135m-instruct"))
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
