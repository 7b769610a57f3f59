"""The off-policy tables of the README from playground runs (launch/compare.py output folders).

    python benchmarks/offpolicy_report.py runs/offpolicy-replay [runs/offpolicy-staleness ...] \
        [--base-accuracy 0.06]

Per run (arm x seed): its loss, replay passes, max_lag, learner steps, generated samples
(`rollout/fresh_samples_total`: fresh samples the learner took) and trained samples (replayed
ones counted at every pass), held-out accuracy, training wall minutes, the realised staleness
(mean over the run's steps of `staleness/mean`, and the largest `staleness/max`), the share of
tokens the loss masked, truncated or clipped, the mean reward of the last 5 steps, and, given
the base model's accuracy on the same problems, the accuracy gained per 1000 generated samples
and per training minute. Reads only DIR/runs/*/result.json, config.json and metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def masked_share(metrics: list[dict]) -> float | None:
    """Mean over steps of the share of tokens the loss masked, truncated or clipped, by
    whichever metric the recipe writes (M2PO's mask, decoupled PPO's TIS truncation, else the
    objective's clip fraction)."""
    keys = ("mismatch/m2po_masked_frac", "mismatch/tis_truncated_frac", "loss/clip_frac")
    for key in keys:
        values = [m[key] for m in metrics if key in m]
        if values:
            return mean(values)
    return None


def run_row(folder: Path, base: float | None) -> dict:
    result = json.loads((folder.parent / f"{folder.name}" / "result.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    generated = metrics[-1].get("rollout/fresh_samples_total", 0)
    per_step = config["trainer"]["groups_per_step"] * config["rollout"]["group_size"]
    minutes = metrics[-1]["timing/wall_s"] / 60
    accuracy = result.get("accuracy")
    gain = None if accuracy is None or base is None else accuracy - base
    return {
        "run": folder.name, "loss": config["trainer"]["loss"]["kind"],
        "passes": config["buffer"]["replay"]["passes"], "max_lag": config["buffer"]["max_lag"],
        "steps": len(metrics), "generated": generated, "trained": per_step * len(metrics),
        "accuracy": accuracy, "minutes": minutes,
        "staleness": mean([m["staleness/mean"] for m in metrics if "staleness/mean" in m]),
        "staleness_max": max((m.get("staleness/max", 0) for m in metrics), default=0),
        "masked": masked_share(metrics),
        "reward_last5": mean([m["reward/mean"] for m in metrics[-5:]]),
        "gain_per_1k": None if gain is None or not generated else 1000 * gain / generated,
        "gain_per_min": None if gain is None else gain / minutes,
    }


def cell(value, spec: str) -> str:
    return "n/a" if value is None else spec.format(value)


def print_table(rows: list[dict]) -> None:
    head = ["run", "loss", "passes", "max_lag", "steps", "generated", "trained",
            "held-out acc.", "gain / 1k generated", "train min", "gain / min",
            "staleness mean (max)", "masked, truncated or clipped", "reward, last 5 steps"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join([
            r["run"], r["loss"], str(r["passes"]), str(r["max_lag"]), str(r["steps"]),
            str(r["generated"]), str(r["trained"]), cell(r["accuracy"], "{:.2f}"),
            cell(r["gain_per_1k"], "{:+.3f}"), f"{r['minutes']:.1f}",
            cell(r["gain_per_min"], "{:+.4f}"),
            f"{cell(r['staleness'], '{:.2f}')} ({r['staleness_max']})",
            cell(r["masked"], "{:.3f}"), cell(r["reward_last5"], "{:.3f}")]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="launch/compare.py output dirs")
    parser.add_argument("--base-accuracy", type=float, help="the base model's held-out accuracy")
    args = parser.parse_args()
    for folder in args.folders:
        runs = sorted(p.parent for p in (folder / "runs").glob("*/result.json"))
        order = json.loads((folder / "compare.json").read_text()).get("arms", {})
        runs.sort(key=lambda p: list(order).index(p.name.rsplit("-seed", 1)[0])
                  if p.name.rsplit("-seed", 1)[0] in order else len(order))
        print(f"\n{folder}\n")
        print_table([run_row(run, args.base_accuracy) for run in runs])


if __name__ == "__main__":
    main()
