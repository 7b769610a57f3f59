"""On-policy distillation: SmolLM2-135M-Instruct samples 2-digit additions, a teacher scores every
sampled token in the rollout path, and the student moves toward the teacher on its own states
(trainer/losses/on_policy_distill.py). The default teacher is the student itself with the answer
in its context (a privileged self-teacher), so the script runs anywhere; the others are flags:

    python launch/distill.py                                          # self-teacher, answer hint
    python launch/distill.py --teacher.kind model --teacher.path runs/quickstart/final
    python launch/distill.py --teacher.kind ensemble --teacher.combine poe --teacher.members \\
        '[{"source": "model", "path": "runs/quickstart/final"}, {"source": "self", "context": "answer"}]'
    python launch/distill.py --trainer.loss.distill.reward-weight 1   # + the task reward (GRPO)

`runs/quickstart/final` is what launch/quickstart.py leaves. The settings are the quickstart's, so
a distillation arm and a GRPO arm compare on the playground at equal cost (docs/playground.md).
"""

from __future__ import annotations

import copy

from slipstream.launch.cli import main_guard, parse_config
from slipstream.launch.quickstart import DEFAULTS as QUICKSTART

DEFAULTS = copy.deepcopy(QUICKSTART)
DEFAULTS.update(output_dir="runs/distill",
                teacher={"kind": "self", "context": "answer", "kv_cache_gb": 0.25})
DEFAULTS["trainer"]["loss"] = {"kind": "distill"}


def main() -> None:
    config = parse_config(**DEFAULTS)
    from slipstream.launch.pipeline import run  # heavy (Ray, torch): only for a valid config

    run(config)


if __name__ == "__main__":
    main_guard(main)
