"""GRPO on reasoning-gym's countdown: reach a target from a few numbers with + - * /.

    python launch/countdown.py [--steps 30] [--env.levels '[0,1]'] [--env.config '{...}']

The task and its scorer are reasoning-gym's (`--env.task` takes any of its 100+ tasks, with
`--reward.kind reasoning_gym` scoring each by its own rule). The default is made small enough for
SmolLM2-135M to earn some reward: three numbers up to 20 and a target up to 60, the answer an
expression between <answer> tags (reasoning-gym's "direct" system prompt). Its scorer gives
0.01 for an unusable answer, 0.05 for a valid expression over the wrong numbers or value, 1.0 for
a right one, so the mean reward moves before the first right answer does.
"""

from __future__ import annotations

from slipstream.launch.cli import main_guard, parse_config

DEFAULTS = {
    "steps": 30,
    "output_dir": "runs/countdown",
    "model": {"path": "smollm2-135m-instruct", "dtype": "auto"},
    "env": {"kind": "reasoning_gym", "task": "countdown", "system_prompt": "direct",
            "config": {"min_numbers": 3, "max_numbers": 3, "min_value": 1, "max_value": 20,
                       "min_target": 10, "max_target": 60}},
    "reward": {"kind": "reasoning_gym", "timeout_s": 5.0},
    "rollout": {"group_size": 8, "groups_in_flight": 8, "max_new_tokens": 64,
                "temperature": 1.0, "kv_cache_gb": 0.25},
    "buffer": {"max_lag": 1},
    "trainer": {"groups_per_step": 4, "micro_batch_size": 16, "lr": 5e-5,
                "loss": {"kind": "grpo", "clip_low": 0.2, "clip_high": 0.28}},
}


def main() -> None:
    config = parse_config(**DEFAULTS)
    from slipstream.launch.pipeline import run  # heavy (Ray, torch): only for a valid config

    run(config)


if __name__ == "__main__":
    main_guard(main)
