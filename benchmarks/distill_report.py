"""The distillation table of the README from a playground folder (launch/compare.py output).

    python benchmarks/distill_report.py runs/distill-compare [--base-accuracy 0.06]

Per run (arm x seed): its teacher, learner steps in the budget, wall minutes, wall seconds per
step, held-out accuracy, `kl/teacher` and `distill/agree_frac` over the first and the last 3
steps (how far the student was from its teacher and how close it came), the teacher's seconds
per group, and the mean reward of the last 5 steps. Reads only DIR/runs/*/result.json,
config.json and metrics.jsonl; a figure a run never logged (GRPO has no teacher) is "n/a".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def window(metrics: list[dict], key: str, last: bool) -> float | None:
    values = [m[key] for m in metrics if key in m]
    return mean(values[-3:] if last else values[:3])


def teacher_text(config: dict) -> str:
    teacher = config.get("teacher", {"kind": "none"})
    if teacher["kind"] in ("none", "model", "self"):
        detail = teacher.get("path") if teacher["kind"] == "model" else teacher.get("context")
        return teacher["kind"] if teacher["kind"] == "none" else f"{teacher['kind']} ({detail})"
    names = "+".join(m.get("name") or m["source"] for m in teacher["members"])
    return f"{teacher['kind']} {teacher['combine']} ({names})"


def run_row(folder: Path) -> dict:
    result = json.loads((folder / "result.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    wall = metrics[-1]["timing/wall_s"]
    return {"run": folder.name, "teacher": teacher_text(config), "steps": len(metrics),
            "minutes": wall / 60, "s_per_step": wall / len(metrics),
            "accuracy": result.get("accuracy"),
            "kl": (window(metrics, "kl/teacher", False), window(metrics, "kl/teacher", True)),
            "agree": (window(metrics, "distill/agree_frac", False),
                      window(metrics, "distill/agree_frac", True)),
            "teacher_s": mean([m["timing/teacher_score_s"] for m in metrics
                               if "timing/teacher_score_s" in m]),
            "reward_last5": mean([m["reward/mean"] for m in metrics[-5:]])}


def cell(value, spec: str) -> str:
    return "n/a" if value is None else spec.format(value)


def pair(values: tuple, spec: str) -> str:
    return "n/a" if values[0] is None else f"{spec.format(values[0])} -> {spec.format(values[1])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a launch/compare.py output folder")
    args = parser.parse_args()
    order = list(json.loads((args.folder / "compare.json").read_text()).get("arms", {}))
    runs = sorted((p.parent for p in (args.folder / "runs").glob("*/result.json")),
                  key=lambda p: order.index(p.name.rsplit("-seed", 1)[0])
                  if p.name.rsplit("-seed", 1)[0] in order else len(order))
    head = ["run", "teacher", "steps", "wall min", "s / step", "held-out acc.",
            "kl/teacher first -> last 3 steps", "agree_frac first -> last", "teacher s / group",
            "reward, last 5 steps"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in map(run_row, runs):
        print("| " + " | ".join([
            r["run"], r["teacher"], str(r["steps"]), f"{r['minutes']:.1f}",
            f"{r['s_per_step']:.1f}", cell(r["accuracy"], "{:.2f}"), pair(r["kl"], "{:.3f}"),
            pair(r["agree"], "{:.2f}"), cell(r["teacher_s"], "{:.2f}"),
            cell(r["reward_last5"], "{:.3f}")]) + " |")


if __name__ == "__main__":
    main()
