"""The pure half of `launch/compare.py`: per-run numbers, their aggregation over seeds, the noise
test, the markdown report and the curves behind the plot. No subprocesses, no files, no plotting
library: everything here is checked against hand computations in tests/test_compare_report.py.

The noise rule (`verdict`), stated once here and in every report:
* fewer than 2 successful seeds in either arm: no estimate of the noise, so nothing is called real;
* enough seeds for the exact permutation test to reach p < 0.05 (e.g. 3 + 4 or 4 + 4): a
  two-sided exact permutation test of the difference in means over seeds, real if p < 0.05;
* fewer (2 + 2 .. 3 + 3): that test's smallest possible p is 0.33 .. 0.10, so it can never call
  anything real; instead a difference is real only if the two arms' seed ranges are disjoint and
  the gap between them is at least twice the wider range. With normal seed noise and no true
  difference this fires about 4% of the time at 2 + 2 seeds (0.15% at 3 + 3), by simulation.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

ALPHA = 0.05
SEPARATION_MARGIN = 2.0   # gap between seed ranges, in units of the wider range
_EXACT_LIMIT = 200_000    # relabelings enumerated exactly; above this, a seeded random sample


@dataclass
class RunResult:
    """One arm x seed, as stored in DIR/runs/<arm>-seed<k>/result.json."""

    arm: str
    seed: int
    status: str                      # "ok", "train_failed" or "eval_failed"
    error: str | None = None         # the run's last stderr line when it failed
    steps: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)   # timing/wall_s of each step
    samples_per_step: int = 0
    fresh_samples: list[int] = field(default_factory=list)   # rollout/fresh_samples_total
    accuracy: float | None = None
    eval_count: int = 0
    train_s: float = 0.0             # the training subprocess, start to exit
    eval_s: float = 0.0

    @property
    def trained(self) -> bool:
        return self.status != "train_failed" and bool(self.steps)


# ---- one run's numbers ---------------------------------------------------------------------

def reward_auc_steps(rewards: Sequence[float]) -> float:
    """Area under reward-vs-step with unit-width steps, divided by the number of steps: the mean
    reward over steps, in the reward's own units."""
    return sum(rewards) / len(rewards)


def reward_auc_time(wall_s: Sequence[float], rewards: Sequence[float]) -> float:
    """Area under reward-vs-wall-clock (trapezoids) divided by the time spanned, from the first
    step's end to the last's: a time-weighted mean reward. Startup before the first step is left
    out, since no reward exists then. One step: its reward."""
    span = wall_s[-1] - wall_s[0]
    if len(rewards) < 2 or span <= 0:
        return reward_auc_steps(rewards)
    area = sum((t1 - t0) * (r0 + r1) / 2
               for t0, t1, r0, r1 in zip(wall_s, wall_s[1:], rewards, rewards[1:]))
    return area / span


def samples_per_second(run: RunResult) -> float:
    """Trained samples per second of run wall time (samples per step x steps / wall time)."""
    return run.samples_per_step * len(run.steps) / run.wall_s[-1]


def run_metrics(run: RunResult, auc_over: str) -> dict[str, float]:
    """The table's numbers for one run; a metric the run did not produce is absent."""
    out: dict[str, float] = {}
    if run.accuracy is not None:
        out["accuracy"] = run.accuracy
    if run.trained:
        out["reward_auc"] = (reward_auc_time(run.wall_s, run.rewards) if auc_over == "time"
                             else reward_auc_steps(run.rewards))
        out["samples_per_s"] = samples_per_second(run)
        out["wall_min"] = run.wall_s[-1] / 60
        out["steps"] = float(len(run.steps))
    return out


# ---- the test ------------------------------------------------------------------------------

def permutation_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided exact permutation test of mean(a) - mean(b): the share of all ways to split the
    pooled values into groups of len(a) and len(b) whose |difference of means| is at least the
    observed one (the observed split included, so p > 0)."""
    pooled, k = list(a) + list(b), len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    total = sum(pooled)
    if math.comb(len(pooled), k) <= _EXACT_LIMIT:
        splits = itertools.combinations(range(len(pooled)), k)
    else:   # many seeds: a fixed random sample of relabelings keeps it fast and repeatable
        rng = random.Random(0)
        splits = (rng.sample(range(len(pooled)), k) for _ in range(_EXACT_LIMIT))
    hits = count = 0
    for chosen in splits:
        first = sum(pooled[i] for i in chosen)
        diff = first / k - (total - first) / (len(pooled) - k)
        hits += abs(diff) >= observed - 1e-12 * max(1.0, observed)   # float ties count
        count += 1
    return hits / count


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest p the exact permutation test can give with these seed counts (with equal
    counts, a split and its mirror image are equally extreme)."""
    return (2 if n_a == n_b else 1) / math.comb(n_a + n_b, n_a)


@dataclass(frozen=True)
class Verdict:
    real: bool
    reason: str   # which rule decided, with its numbers


def verdict(a: Sequence[float], b: Sequence[float]) -> Verdict:
    """Real difference or within noise, by the rule in the module docstring."""
    if min(len(a), len(b)) < 2:
        return Verdict(False, "one seed measures no noise, so no difference can be called real")
    if smallest_p(len(a), len(b)) < ALPHA:
        p = permutation_p(a, b)
        return Verdict(p < ALPHA, f"exact permutation test p = {p:.3f}")
    wider = max(max(a) - min(a), max(b) - min(b))
    gap = max(min(b) - max(a), min(a) - max(b))   # negative when the ranges overlap
    if gap <= 0:
        return Verdict(False, "the seed ranges overlap")
    real = gap >= SEPARATION_MARGIN * wider
    relation = "at least" if real else "less than"
    return Verdict(real, f"the seed ranges are disjoint, gap {gap:.4g} {relation} "
                         f"{SEPARATION_MARGIN:g} x the wider range ({wider:.4g})")


# ---- aggregation and the report -------------------------------------------------------------

METRICS = {   # key: (column title, format)
    "accuracy": ("held-out accuracy", "{:.3f}"),
    "reward_auc": ("reward AUC", "{:.3f}"),
    "samples_per_s": ("samples/s", "{:.2f}"),
    "wall_min": ("wall time (min)", "{:.1f}"),
}
TESTED = ("accuracy", "reward_auc", "samples_per_s")


@dataclass
class ArmSummary:
    name: str
    flags: list[str]
    runs: list[RunResult]
    values: dict[str, list[float]]   # metric -> one value per seed that produced it

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.runs if r.status != "ok"]


def summarise(name: str, flags: list[str], runs: list[RunResult], auc_over: str) -> ArmSummary:
    values: dict[str, list[float]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        for key, value in run_metrics(run, auc_over).items():
            values.setdefault(key, []).append(value)
    return ArmSummary(name, flags, runs, values)


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    mean = fmt.format(statistics.fmean(values))
    if len(values) == 1:
        return mean
    return f"{mean} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _runs_cell(arm: ArmSummary) -> str:
    ok = len(arm.runs) - len(arm.failed)
    failed = ", ".join(f"seed{r.seed} {r.status.replace('_', ' ')}" for r in arm.failed)
    return f"{ok}/{len(arm.runs)}" + (f" ({failed})" if failed else "")


def table(arms: list[ArmSummary]) -> str:
    """One row per arm: each metric's mean over seeds and, in brackets, its min–max."""
    head = ["arm", "runs ok"] + [title for title, _ in METRICS.values()] + ["steps"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        cells = [arm.name, _runs_cell(arm)]
        cells += [_cell(arm.values.get(key, []), fmt) for key, (_, fmt) in METRICS.items()]
        cells.append(_cell(arm.values.get("steps", []), "{:.0f}"))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def pair_sentence(metric: str, a: ArmSummary, b: ArmSummary) -> str:
    title, fmt = METRICS[metric]
    va, vb = a.values.get(metric, []), b.values.get(metric, [])
    if not va or not vb:
        return f"{a.name} vs {b.name}: no {title} to compare (a run failed or was not evaluated)."
    v = verdict(va, vb)
    diff = statistics.fmean(va) - statistics.fmean(vb)
    words = "a real difference" if v.real else "within noise"
    return (f"{a.name} vs {b.name}: {words}: {title} {fmt.format(statistics.fmean(va))} vs "
            f"{fmt.format(statistics.fmean(vb))} (difference {diff:+.4g}; {len(va)} vs {len(vb)} "
            f"seeds; {v.reason}).")


def _spread_line(arm: ArmSummary, metric: str) -> str:
    fmt = METRICS[metric][1]
    values = arm.values.get(metric, [])
    if not values:
        return f"- {arm.name}: n/a"
    seeds = ", ".join(fmt.format(v) for v in values)
    spread = max(values) - min(values)
    std = f", std {statistics.stdev(values):.4g}" if len(values) > 1 else ""
    return f"- {arm.name}: {seeds} (range {spread:.4g}{std})"


def noise_section(arms: list[ArmSummary]) -> str:
    lines = ["## Noise", "",
             "Spread over seeds (range = max - min; std = sample standard deviation), then one "
             "verdict per pair of arms. The rule: with fewer than 2 seeds in an arm nothing is "
             "called real; when the exact two-sided permutation test over seed values can reach "
             f"p < {ALPHA:g} (e.g. 3 + 4 or 4 + 4 seeds) it decides; with fewer seeds it cannot "
             "(its smallest p is 0.33 at 2 + 2, 0.10 at 3 + 3), so a difference is real only if "
             "the seed ranges are disjoint and the gap is at least "
             f"{SEPARATION_MARGIN:g} x the wider range (a false alarm about 4% of the time at "
             "2 + 2 seeds under normal seed noise with no true difference)."]
    for metric in TESTED:
        lines += ["", f"### {METRICS[metric][0]}", ""]
        if not any(arm.values.get(metric) for arm in arms):
            lines.append("No values: not measured (e.g. --eval-count 0) or every run failed.")
            continue
        lines += [_spread_line(arm, metric) for arm in arms]
        pairs = list(itertools.combinations(arms, 2))
        if pairs:
            lines.append("")
            lines += [f"- {pair_sentence(metric, a, b)}" for a, b in pairs]
    return "\n".join(lines)


def definitions(auc_over: str) -> str:
    auc = ("the time-weighted mean reward: the area under reward against wall-clock "
           "(trapezoids, first to last step) divided by the time spanned"
           if auc_over == "time" else
           "the mean reward over steps: the area under reward against step (unit steps) "
           "divided by the number of steps")
    return "\n".join([
        "Each cell: mean over seeds, then (min–max over seeds).",
        "* held-out accuracy: greedy accuracy of DIR/runs/<arm>-seed<k>/final on the env's "
        "held-out problems (launch/evaluate.py), the same problems for every run;",
        f"* reward AUC: {auc}, where a step's reward is the mean over the samples it trained "
        "on (`reward/mean`): an arm with dynamic sampling (dapo) trains only on groups whose "
        "rewards differ, so its reward is higher by construction and held-out accuracy is the "
        "fair comparison;",
        "* samples/s: trained samples per step x steps / wall time;",
        "* wall time: timing/wall_s of the last step (run directory created to last step, "
        "engine start-up included, the final save not)."])


def report(arms: list[ArmSummary], *, budget: str, command: str, common: list[str],
           auc_over: str) -> str:
    """The whole compare.md."""
    lines = ["# Comparison", "", f"Budget: {budget}.", "", "Command:", "", "```",
             command, "```", "",
             f"Common overrides (every arm): `{' '.join(common) or '(none)'}`", "", "Arms:", ""]
    lines += [f"- {arm.name}: `{' '.join(arm.flags) or '(script defaults)'}`" for arm in arms]
    lines += ["", table(arms), "", definitions(auc_over), "", noise_section(arms)]
    failed = [r for arm in arms for r in arm.failed]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r.arm}-seed{r.seed}: {r.status.replace('_', ' ')}: {r.error}"
                  for r in failed]
    return "\n".join(lines) + "\n"


# ---- curves for the plot ------------------------------------------------------------------

Band = tuple[list[float], list[float], list[float], list[float]]   # x, mean, low, high


def band_by_step(runs: list[RunResult]) -> Band:
    """Mean, min and max reward over seeds at every step some seed reached (with a time budget
    runs end at different steps: each step averages the seeds that reached it)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, reward in zip(run.steps, run.rewards):
            by_step.setdefault(step, []).append(reward)
    steps = sorted(by_step)
    return ([float(s) for s in steps], [statistics.fmean(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear y at x, held constant beyond the ends (xs ascending)."""
    if x <= xs[0]:
        return ys[0]
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def _band_over(xs_per_run: list[list[float]], runs: list[RunResult], points: int) -> Band:
    """Mean, min and max reward over seeds on a grid over the x range all seeds share (each
    seed interpolated linearly between its steps)."""
    start = max(xs[0] for xs in xs_per_run)
    end = min(xs[-1] for xs in xs_per_run)
    if end <= start:   # no shared stretch: cover all of it; ends are held flat
        start, end = min(xs[0] for xs in xs_per_run), max(xs[-1] for xs in xs_per_run)
    n = 1 if end <= start else points
    grid = [start + (end - start) * i / max(n - 1, 1) for i in range(n)]
    at = [[interpolate(xs, r.rewards, x) for xs, r in zip(xs_per_run, runs)] for x in grid]
    return (grid, [statistics.fmean(v) for v in at], [min(v) for v in at], [max(v) for v in at])


def band_by_time(runs: list[RunResult], points: int = 100) -> Band:
    """The reward band against wall-clock minutes."""
    grid, mean, low, high = _band_over([r.wall_s for r in runs], runs, points)
    return [t / 60 for t in grid], mean, low, high


def band_by_samples(runs: list[RunResult], points: int = 100) -> Band:
    """The reward band against generated samples trained on (rollout/fresh_samples_total)."""
    return _band_over([[float(n) for n in r.fresh_samples] for r in runs], runs, points)
