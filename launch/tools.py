"""Multi-turn tool use: GRPO on word problems the policy may solve with a calculator or a
sandboxed Python, over up to four turns (envs/tools.py).

    python launch/tools.py [--steps 20] [--env.path my.jsonl] [--env.max-turns 4]
                           [--env.sandbox.timeout-s 3]

The tools' output comes back as the env's turn; its tokens are in the sample (the inspector
shows them) but never trained on. A tool call that loops, hangs, floods its output or reaches
for the network or the filesystem comes back as an error message, counted in
`env/tool_failures`, and the run goes on.
"""

from __future__ import annotations

from slipstream.launch.cli import main_guard, parse_config

DEFAULTS = {
    "steps": 20,
    "output_dir": "runs/tools",
    "model": {"path": "smollm2-135m-instruct", "dtype": "auto"},
    "env": {"kind": "tools", "max_turns": 4},
    "reward": {"kind": "math_verify", "timeout_s": 5.0},
    # One budget for policy and env tokens together; the tool instructions make the prompt long.
    "rollout": {"group_size": 8, "groups_in_flight": 4, "max_new_tokens": 256,
                "temperature": 1.0, "kv_cache_gb": 0.5},
    "buffer": {"max_lag": 1},
    "trainer": {"groups_per_step": 4, "micro_batch_size": 8, "lr": 1e-5,
                "loss": {"kind": "grpo", "clip_low": 0.2, "clip_high": 0.28}},
}


def main() -> None:
    config = parse_config(**DEFAULTS)
    from slipstream.launch.pipeline import run  # heavy (Ray, torch): only for a valid config

    run(config)


if __name__ == "__main__":
    main_guard(main)
