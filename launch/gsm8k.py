"""GRPO on GSM8K-style word problems from a JSONL file (the shipped sample by default).

    python launch/gsm8k.py [--model PATH_OR_HUB_NAME] [--env.path my.jsonl] [--steps 20]

`--model` takes a local checkpoint directory or a hub name (a hub name downloads; the default,
SmolLM2-135M-Instruct, comes from the package index and needs no hub).
"""

from __future__ import annotations

import sys

from slipstream.launch.cli import main_guard, parse_config

DEFAULTS = {
    "steps": 20,
    "output_dir": "runs/gsm8k",
    "env": {"kind": "jsonl", "prompt_suffix": "\nGive the final answer after '####'."},
    "rollout": {"group_size": 8, "groups_in_flight": 4, "max_new_tokens": 192},
    "buffer": {"max_lag": 1},
    "trainer": {"groups_per_step": 4, "micro_batch_size": 8, "lr": 1e-5},
}


def _model_alias(argv: list[str]) -> list[str]:
    """`--model X` is short for `--model.path X`."""
    return ["--model.path" if arg == "--model" else
            arg.replace("--model=", "--model.path=", 1) if arg.startswith("--model=") else arg
            for arg in argv]


def main() -> None:
    config = parse_config(_model_alias(sys.argv[1:]), **DEFAULTS)
    from slipstream.launch.pipeline import run  # heavy (Ray, torch): only for a valid config

    run(config)


if __name__ == "__main__":
    main_guard(main)
