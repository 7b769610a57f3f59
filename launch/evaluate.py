"""Held-out accuracy of one or more checkpoints: greedy answers to problems the run never saw.

    python launch/evaluate.py runs/quickstart/final smollm2-135m-instruct --count 200
    python launch/evaluate.py runs/c/final --env.kind reasoning_gym ... --by level

Problems come from the env's held-out stream (arithmetic: a seed stream disjoint from training;
a JSONL env: pass a held-out file with --env.path). Each model is scored with the same reward
the run used, by vLLM with greedy decoding, one engine at a time.
"""

from __future__ import annotations

import argparse
import asyncio
from statistics import fmean

from slipstream.launch.cli import main_guard, parse_config


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


async def scores(path: str, config, count: int) -> list[tuple[dict, float]]:
    """Each held-out prompt's metadata and the model's score on it; `path`: a model resolved by
    `resolve_model`."""
    from transformers import AutoTokenizer

    from slipstream.envs import build_env
    from slipstream.rewards import RewardRunner, build_reward
    from slipstream.rollout.engine import VLLMEngine
    from slipstream.rollout.engine_api import SamplingSettings
    from slipstream.rollout.group import encode_prompt

    prompts = build_env(config.env, config.seed).held_out(count)
    tokenizer = AutoTokenizer.from_pretrained(path)
    engine = VLLMEngine(config.model.model_copy(update={"path": path}), config.rollout,
                        config.seed)
    await engine.start()
    greedy = SamplingSettings(temperature=0.0, max_tokens=config.rollout.max_new_tokens)
    try:
        completions = await asyncio.gather(*(
            engine.generate(encode_prompt(tokenizer, p)[1], greedy, seed=None, request_id=f"e{i}")
            for i, p in enumerate(prompts)))
    finally:
        await engine.shutdown()
    with RewardRunner(build_reward(config.reward), config.reward.timeout_s) as rewards:
        results = rewards.score([(c.text, p.reference, p.metadata)
                                 for c, p in zip(completions, prompts)])
    return [(dict(p.metadata), r.score) for p, r in zip(prompts, results)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="checkpoint directories or model names")
    parser.add_argument("--count", type=positive_int, default=200, help="held-out problems")
    parser.add_argument("--by", metavar="KEY", help=(
        "also the accuracy per value of this prompt metadata key (level: reasoning-gym's "
        "difficulty)"))
    args, overrides = parser.parse_known_args()
    # The quickstart's env and reward unless overridden (e.g. --env.digits 1).
    config = parse_config(overrides, env={"kind": "arithmetic", "digits": 2})
    from slipstream.launch.models import resolve_model

    # Every model is checked before the first engine starts.
    paths = [resolve_model(model) for model in args.models]
    for model, path in zip(args.models, paths):
        scored = asyncio.run(scores(path, config, args.count))
        print(f"{model}: held-out accuracy {fmean(s for _, s in scored):.3f} on {len(scored)} "
              "problems", flush=True)
        if args.by:
            parts: dict[str, list[float]] = {}
            for metadata, score in scored:
                parts.setdefault(str(metadata.get(args.by)), []).append(score)
            for value, part in sorted(parts.items()):
                print(f"  {args.by}={value}: accuracy {fmean(part):.3f} on {len(part)}", flush=True)


if __name__ == "__main__":
    main_guard(main)
