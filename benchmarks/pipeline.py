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
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

import slipstream  # noqa: F401  (before torch/vLLM: hides the broken vision packages)

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, out: Path, args: list[str]) -> tuple[list[dict], float, float]:
    """Run a launch script; return its metrics and the peak memory (GiB) of its process tree,
    as summed PSS (shared pages split among the processes mapping them: torch's libraries are
    mapped by every Ray and vLLM process) and as summed RSS (counts them once per process)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / script), "--output-dir",
                             str(out), "--progress", "false", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_pss = peak_rss = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        pss = rss = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                info = p.memory_full_info()
                pss, rss = pss + info.pss, rss + info.rss
            except psutil.Error:
                pass  # a process that ended between listing and reading
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(1.0)
    if proc.returncode != 0:
        sys.exit(f"{script} failed:\n{proc.stderr.read()[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, peak_pss / 2**30, peak_rss / 2**30


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


def quickstart_flags() -> list[str]:
    """The quickstart's settings as command-line flags, so every run here uses them."""
    from slipstream.launch.quickstart import DEFAULTS

    def flatten(prefix: str, value) -> list[str]:
        if isinstance(value, dict):
            return [f for k, v in value.items() for f in flatten(f"{prefix}.{k}", v)]
        return [f"--{prefix.lstrip('.').replace('_', '-')}", str(value)]

    return [f for k, v in DEFAULTS.items() if k not in ("steps", "output_dir")
            for f in flatten(k, v)]


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
    pipe, pipe_pss, pipe_rss = run_script("quickstart.py", out / "pipeline", common)
    ref, _, _ = run_script("reference_loop.py", out / "reference",
                        [*common, "--buffer.max-lag", "0"])

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
    print(f"  {'weight sync, seconds per GB (median)':58s} {sorted(per_gb)[len(per_gb) // 2]:10.3f}")
    print(f"  {'peak memory of the pipeline, process tree PSS (RSS)':58s} {pipe_pss:10.2f} GiB "
          f"({pipe_rss:.2f} GiB)")


if __name__ == "__main__":
    main()
