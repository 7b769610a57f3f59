"""What a comparison is, from its command line: the arms, the footing every arm shares (script,
common overrides, budget, evaluation size) and each run's flags. Pure: no runs, no files, so the
refusals (an arm that changes the model or the budget, a reserved flag, --seeds 0) are tested fast.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from slipstream.errors import SlipstreamError

LAUNCH = Path(__file__).resolve().parent
PRESETS: dict[str, list[str]] = {   # named arms besides loss kinds
    "muon": ["--trainer.optimizer.kind", "muon"],
    "adamw": ["--trainer.optimizer.kind", "adamw"],
}
# Set by compare itself, never by the user's common overrides.
RESERVED = {"seed": "seeds come from --seeds", "output_dir": "use --output-dir",
            "time_budget_min": "use --minutes", "sample_budget": "use --samples"}
# What an arm may change besides trainer.*: how the buffer reuses and ages data, and the teacher
# a distillation arm learns from, are part of the algorithm being compared.
# What an arm may set besides trainer.*: how data is reused, how stale, who teaches, and which
# prompts are drawn (a curriculum changes the order of the env's own prompts, not the env).
ARM_KEYS = ("buffer.replay.", "buffer.max_lag", "teacher.", "curriculum.")
NO_STEP_LIMIT = 1_000_000   # --minutes without --steps: the clock is the budget
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Arm:
    name: str
    flags: list[str]


@dataclass
class Plan:
    script: Path
    out: Path
    arms: list[Arm]
    seeds: int
    steps: int | None
    minutes: float | None
    eval_count: int
    common: list[str]
    command: str
    samples: int | None = None       # a budget of generated samples per run

    def footing(self) -> dict:
        """What every arm must share; a re-run into the same DIR must match it."""
        return {"script": self.script.name, "common": self.common, "steps": self.steps,
                "minutes": self.minutes, "samples": self.samples, "eval_count": self.eval_count}

    def budget_flags(self) -> list[str]:
        steps = self.steps or (NO_STEP_LIMIT if self.minutes or self.samples else None)
        flags = ["--steps", str(steps)] if steps else []
        flags += ["--sample-budget", str(self.samples)] if self.samples else []
        return flags + (["--time-budget-min", f"{self.minutes:g}"] if self.minutes else [])

    def budget_text(self) -> str:
        parts = [f"{self.steps} learner steps"] if self.steps else []
        if self.samples:
            parts.append(f"{self.samples} generated samples (`--sample-budget`: fresh samples "
                         "the learner took; replayed ones do not count again)")
        if self.minutes:
            parts.append(f"{self.minutes:g} minutes of wall time (`--time-budget-min`)")
        first = ", whichever comes first," if len(parts) > 1 else ""
        return f"{' or '.join(parts)} per run{first} on {self.seeds} seed(s) per arm"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line via main_guard, not argparse's usage+exit
        raise SlipstreamError(f"invalid arguments: {message}")


def override_keys(flags: list[str]) -> list[str]:
    """The dotted config keys a flag list sets, snake_case: ['--trainer.loss.clip-high', '0.3']
    -> ['trainer.loss.clip_high']."""
    return [f[2:].split("=", 1)[0].replace("-", "_") for f in flags if f.startswith("--")]


def _arm_error(name: str, flags: list[str]) -> str | None:
    """Why this arm would change the footing (model, env, reward, sampling, buffer, budget)."""
    for key in override_keys(flags):
        if key.split(".")[0] != "trainer" and not key.startswith(ARM_KEYS):
            return (f"arm {name!r} sets {key}: an arm may change only the algorithm (trainer.*, "
                    "buffer.replay.*, buffer.max_lag, teacher.*, curriculum.*); settings for "
                    "every arm go on the command line outside --arm")
        if key == "trainer.groups_per_step":
            return f"arm {name!r} sets {key}: it changes the samples per step, i.e. the budget"
    return None


def resolve_arms(recipes: list[str], user: list[str]) -> list[Arm]:
    """--recipes names (user arm, preset, or loss kind) then user arms not listed there."""
    defined: dict[str, list[str]] = {}
    for spec in user:
        name, sep, flags = spec.partition("=")
        if not sep:
            raise SlipstreamError(f"--arm {spec!r}: expected NAME='--trainer.x value ...'")
        defined[name.strip()] = shlex.split(flags)
    names = recipes + [n for n in defined if n not in recipes]
    if not names:
        raise SlipstreamError("no arms: give --recipes a,b and/or --arm NAME='flags'")
    arms = []
    for name in names:
        if not _NAME.fullmatch(name):
            raise SlipstreamError(f"arm name {name!r}: use letters, digits, '_', '.', '-'")
        if names.count(name) > 1:
            raise SlipstreamError(f"arm {name!r} is listed twice")
        flags = defined.get(name, PRESETS.get(name, ["--trainer.loss.kind", name]))
        if error := _arm_error(name, flags):
            raise SlipstreamError(error)
        arms.append(Arm(name, flags))
    return arms


def parse_args(argv: list[str]) -> Plan:
    parser = _Parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--recipes", default="", help="comma-separated arm names")
    parser.add_argument("--arm", action="append", default=[], help="NAME='--trainer.x v ...'")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per arm")
    parser.add_argument("--steps", type=int, help="learner steps per run")
    parser.add_argument("--minutes", type=float, help="wall-clock budget per run")
    parser.add_argument("--samples", type=int, help="budget of generated samples per run")
    parser.add_argument("--eval-count", type=int, default=200, help="held-out problems (0: none)")
    parser.add_argument("--output-dir", default="runs/compare")
    parser.add_argument("--script", default="quickstart", help="launch/<script>.py or a path")
    args, common = parser.parse_known_args(argv)
    if args.seeds < 1:
        raise SlipstreamError(f"--seeds must be at least 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1 or args.minutes is not None and args.minutes <= 0 \
            or args.samples is not None and args.samples < 1:
        raise SlipstreamError("--steps, --minutes and --samples must be positive")
    if args.eval_count < 0:
        raise SlipstreamError(f"--eval-count must be >= 0, got {args.eval_count}")
    for key in override_keys(common):
        if key.split(".")[0] in RESERVED:
            raise SlipstreamError(f"--{key} is set by compare: {RESERVED[key.split('.')[0]]}")
    script = Path(args.script if args.script.endswith(".py") else LAUNCH / f"{args.script}.py")
    if not script.is_file():
        raise SlipstreamError(f"launch script {script} does not exist")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    return Plan(script.resolve(), Path(args.output_dir), resolve_arms(recipes, args.arm),
                args.seeds, args.steps, args.minutes, args.eval_count, common,
                shlex.join(["python", "launch/compare.py", *argv]), args.samples)


def run_flags(plan: Plan, arm: Arm, seed: int) -> list[str]:
    """Arm flags come last, so they win over the common overrides."""
    return ["--output-dir", str(run_dir(plan, arm, seed)), "--seed", str(seed),
            "--progress", "false", *plan.budget_flags(), *plan.common, *arm.flags]


def run_dir(plan: Plan, arm: Arm, seed: int) -> Path:
    return plan.out / "runs" / f"{arm.name}-seed{seed}"


