"""Quickstart: GRPO teaches SmolLM2-135M-Instruct 2-digit addition, on vLLM + Ray + DeepSpeed.

About 15 to 20 minutes on 2 CPU cores (40 steps). Watch the curves live with
`tensorboard --logdir runs/quickstart/tb`; the run ends by printing the mean reward of its first
and last 5 steps.

    python launch/quickstart.py [--steps 40] [--output-dir runs/quickstart] [--trainer.lr 5e-5 ...]
"""

from __future__ import annotations

from slipstream.launch.cli import main_guard, parse_config

DEFAULTS = {
    "steps": 40,
    "output_dir": "runs/quickstart",
    # dtype auto: bf16 where the CPU has bf16 instructions, fp32 where bf16 is emulated (slow).
    "model": {"path": "smollm2-135m-instruct", "dtype": "auto"},
    "env": {"kind": "arithmetic", "digits": 2},
    "reward": {"kind": "math_verify", "timeout_s": 5.0},
    # KV cache: 64 sequences in flight x ~90 tokens x 23 KiB a token is 0.13 GiB; vLLM
    # allocates the whole cache up front, so 0.25 GiB instead of its 1 GiB default.
    "rollout": {"group_size": 8, "groups_in_flight": 8, "max_new_tokens": 48,
                "temperature": 1.0, "kv_cache_gb": 0.25},
    "buffer": {"max_lag": 1},
    # 4 prompts x 8 samples per step: on 2 cores the learner is the bottleneck (about 25 s a
    # step), and a high learning rate makes the reward rise within the run.
    "trainer": {"groups_per_step": 4, "micro_batch_size": 16, "lr": 5e-5,
                "loss": {"kind": "grpo", "clip_low": 0.2, "clip_high": 0.28}},
}


def main() -> None:
    config = parse_config(**DEFAULTS)
    from slipstream.launch.pipeline import run  # heavy (Ray, torch): only for a valid config

    run(config)


if __name__ == "__main__":
    main_guard(main)
