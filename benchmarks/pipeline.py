"""Pipeline benchmark: every figure a ratio measured side by side in one run, on this machine.

    python benchmarks/pipeline.py [--model smollm2-135m-instruct] [--steps 6]

1. standalone vLLM (our engine wrapper alone, same settings, the same groups) against the
   rollout tokens/s inside the asynchronous pipeline;
2. share of the pipeline's wall time in which generation was stalled by weight syncs, and the
   sync's seconds per GB of weights;
3. trained tokens/s of the asynchronous pipeline against the synchronous reference loop;
4. peak memory (RSS of the whole process tree) of the pipeline.

Each run is a real launch script in a subprocess, as a user would start it. Steady-state figures
skip the first step (engine and DeepSpeed start-up, first-batch fill).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import slipstream  # noqa: F401  (before torch/vLLM: hides the broken vision packages)
from measure import quickstart_flags, run_script  # benchmarks/ is on the path of its scripts


def steady(metrics: list[dict], key: str) -> float:
    """Sum of `key` per second of wall time over steps 2..N."""
    wall = metrics[-1]["timing/wall_s"] - metrics[0]["timing/wall_s"]
    return sum(m[key] for m in metrics[1:]) / wall


def steady_generation(metrics: list[dict]) -> float:
    """Tokens generated per second of wall time over steps 2..N (a cumulative counter)."""
    wall = metrics[-1]["timing/wall_s"] - metrics[0]["timing/wall_s"]
    return (metrics[-1]["rollout/tokens_total"] - metrics[0]["rollout/tokens_total"]) / wall


async def standalone_tokens_per_s(config, model_path: str, groups: int) -> float:
    from slipstream.envs import build_env
    from slipstream.rewards import RewardRunner, build_reward
    from slipstream.rollout.engine import VLLMEngine
    from slipstream.rollout.group import generate_group
    from transformers import AutoTokenizer

    model = config.model.model_copy(update={"path": model_path})
    engine = VLLMEngine(model, config.rollout, config.seed)
    await engine.start()
    env = build_env(config.env, config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    in_flight = config.rollout.groups_in_flight
    with RewardRunner(build_reward(config.reward), config.reward.timeout_s) as rewards:
        started, tokens = time.monotonic(), 0
        for first in range(0, groups, in_flight):    # the same concurrency as a worker
            batch = await asyncio.gather(*(
                generate_group(engine, tokenizer, rewards, env.prompt(t), t, config.rollout,
                               config.seed)
                for t in range(first, min(first + in_flight, groups))))
            tokens += sum(g.completion_tokens for g in batch)
        elapsed = time.monotonic() - started
    await engine.shutdown()
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default=None, help="keep the run directories here")
    args, overrides = parser.parse_known_args()
    from slipstream.launch.cli import parse_config
    from slipstream.launch.models import resolve_model

    common = [*quickstart_flags(), "--model.path", args.model, "--steps", str(args.steps),
              *overrides]
    config = parse_config(common)
    out = Path(args.out or tempfile.mkdtemp(prefix="slipstream-bench-"))
    groups = (args.steps - 1) * config.trainer.groups_per_step

    standalone = asyncio.run(standalone_tokens_per_s(config, resolve_model(args.model), groups))
    pipe_run = run_script("quickstart.py", out / "pipeline", common)
    pipe = pipe_run.metrics
    ref = run_script("reference_loop.py", out / "reference",
                     [*common, "--buffer.max-lag", "0"]).metrics

    syncs = [m["timing/weight_sync_s"] for m in pipe[1:] if "timing/weight_sync_s" in m]
    wall = pipe[-1]["timing/wall_s"] - pipe[0]["timing/wall_s"]
    rows = [
        ("rollout tokens/s: pipeline / standalone vLLM", steady_generation(pipe), standalone),
        ("trained tokens/s: async pipeline / sync reference loop",
         steady(pipe, "throughput/step_tokens"), steady(ref, "throughput/step_tokens")),
    ]
    print(f"benchmark: {args.model}, {args.steps} steps, run directories in {out}")
    for name, ours, base in rows:
        print(f"  {name:58s} {ours:10.1f} / {base:10.1f} = {ours / base:5.2f}x")
    print(f"  {'generation stalled by weight sync (share of wall time)':58s} "
          f"{sum(syncs):10.2f}s / {wall:8.1f}s = {100 * sum(syncs) / wall:5.2f}%")
    per_gb = [m["timing/weight_sync_s_per_gb"] for m in pipe if "timing/weight_sync_s_per_gb" in m]
    median = sorted(per_gb)[len(per_gb) // 2]
    print(f"  {'weight sync, seconds per GB (median)':58s} {median:10.3f}")
    print(f"  {'peak memory of the pipeline, process tree PSS (RSS)':58s} "
          f"{pipe_run.peak_pss_gib:10.2f} GiB ({pipe_run.peak_rss_gib:.2f} GiB)")


if __name__ == "__main__":
    main()
