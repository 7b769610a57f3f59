"""Deterministic mode against normal mode, measured side by side in one run on this machine.

    python benchmarks/deterministic.py [--model smollm2-135m-instruct] [--dtype bfloat16]
                                       [--prompts 4] [--group-size 8] [--new-tokens 48]

1. Learner step: `Learner.train_step` on the same batch, normal against deterministic
   (batch_invariant() around the forward), alternated A B A B so machine noise hits both; the
   batch's tokens carry the learner's own version each time (a synchronous step). The extra
   forward of an asynchronous step (stale tokens recomputed under their own version) is timed
   on its own.
2. Sampler: tokens/s of vLLM (normal mode) against the reference sampler (deterministic mode)
   on the same groups, and of the reference sampler with `batch_invariant()` switched off, which
   splits the cost into "a Hugging Face model instead of vLLM" and "the invariant numerics".

Ratios are deterministic / normal (higher = slower). Prompts are the quickstart's (2-digit
addition, chat template); completions run to `--new-tokens` (ignore_eos) so both sides generate
the same number of tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import tempfile
import time

import slipstream  # noqa: F401  (before torch/vLLM: hides the broken vision packages)


def _groups(engine_kind: str, model_path: str, args) -> tuple[list, float]:
    """Generate the benchmark's groups with one engine; (groups, tokens/s)."""
    from transformers import AutoTokenizer

    from slipstream.buffer.records import Group
    from slipstream.envs import ArithmeticEnvConfig, build_env
    from slipstream.rewards import MathVerifyRewardConfig, RewardRunner, build_reward
    from slipstream.model_config import ModelConfig
    from slipstream.rollout.config import RolloutConfig
    from slipstream.rollout.engine_api import SamplingSettings, build_engine
    from slipstream.rollout.group import generate_group

    async def run() -> tuple[list[Group], float]:
        rollout = RolloutConfig(group_size=args.group_size)
        engine = build_engine(ModelConfig(path=model_path, dtype=args.dtype, max_model_len=512),
                              rollout, seed=0, deterministic=engine_kind == "reference")
        await engine.start()
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        env = build_env(ArithmeticEnvConfig(digits=2), seed=0)
        rewards = RewardRunner(build_reward(MathVerifyRewardConfig()), timeout_s=5.0)
        fixed = SamplingSettings(temperature=1.0, max_tokens=args.new_tokens, ignore_eos=True)

        def group(ticket: int):
            return generate_group(engine, tokenizer, rewards, env.prompt(ticket), ticket,
                                  rollout, seed=0, sampling=fixed)

        try:
            # Warm-up: one group first, so start-up costs stay out of the figure.
            await group(99)
            started = time.perf_counter()
            groups = await asyncio.gather(*(group(t) for t in range(args.prompts)))
            seconds = time.perf_counter() - started
        finally:
            rewards.close()
            await engine.shutdown()
        return list(groups), sum(g.completion_tokens for g in groups) / seconds

    return asyncio.run(run())


def sampler_figures(model_path: str, args) -> tuple[dict[str, float], list]:
    import slipstream.rollout.reference_sampler as reference

    figures = {}
    _, figures["vllm"] = _groups("vllm", model_path, args)
    groups, figures["reference"] = _groups("reference", model_path, args)
    invariant = reference.batch_invariant
    reference.batch_invariant = contextlib.nullcontext      # the same sampler, plain numerics
    try:
        _, figures["reference_plain"] = _groups("reference", model_path, args)
    finally:
        reference.batch_invariant = invariant
    return figures, groups


def _learner(model_path: str, args, deterministic: bool, weights_dir: str):
    from slipstream.model_config import ModelConfig
    from slipstream.trainer.config import TrainerConfig
    from slipstream.trainer.learner import Learner

    samples = args.prompts * args.group_size
    trainer = TrainerConfig(groups_per_step=args.prompts, micro_batch_size=min(samples, 16),
                            lr=1e-6, mismatch_probe=0)
    return Learner(trainer, ModelConfig(path=model_path, dtype=args.dtype),
                   group_size=args.group_size, temperature=1.0, max_new_tokens=args.new_tokens,
                   max_lag=1, seed=0, deterministic=deterministic, weights_dir=weights_dir)


def _at_version(groups: list, version: int) -> list:
    """The groups with every token marked as sampled by `version` (an on-policy batch)."""
    def restamp(sample):
        return dataclasses.replace(sample, versions_T=(version,) * len(sample.versions_T),
                                   prefix_recomputed=True)
    return [dataclasses.replace(g, samples=tuple(restamp(s) for s in g.samples)) for g in groups]


def learner_figures(model_path: str, groups: list, args) -> dict[str, float]:
    from slipstream.trainer.logprobs import collate

    times: dict[str, list[float]] = {"normal": [], "deterministic": []}
    with tempfile.TemporaryDirectory() as weights_dir:
        learners = {name: _learner(model_path, args, name == "deterministic", weights_dir)
                    for name in times}
        for _ in range(args.repeats):
            for name, learner in learners.items():
                batch = _at_version(groups, learner.version)
                started = time.perf_counter()
                learner.train_step(batch)
                times[name].append(time.perf_counter() - started)
        # The asynchronous extra: stale tokens recomputed under the version that sampled them.
        det = learners["deterministic"]
        det.replay.keep(det.version - 1)
        stale = [s for g in _at_version(groups, det.version - 1) for s in g.samples]
        batch = collate(stale[:16], det.pad_id)
        started = time.perf_counter()
        det.replay.own_version_logprobs(batch, batch.sampler_logprobs_B_T, det.version, 1.0)
        replay_s = (time.perf_counter() - started) * len(stale) / len(stale[:16])
    return {"normal_s": statistics.median(times["normal"]),
            "deterministic_s": statistics.median(times["deterministic"]), "replay_s": replay_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from slipstream.launch.models import resolve_model

    model_path = resolve_model(args.model)
    sampler, groups = sampler_figures(model_path, args)
    learner = learner_figures(model_path, groups, args)
    tokens = sum(g.completion_tokens for g in groups)
    print(f"model {args.model} {args.dtype}, {args.prompts} prompts x {args.group_size} "
          f"samples, {args.new_tokens} new tokens ({tokens} tokens a step)")
    ratio = learner["deterministic_s"] / learner["normal_s"]
    print(f"learner step (sync):  normal {learner['normal_s']:.2f} s, deterministic "
          f"{learner['deterministic_s']:.2f} s -> {ratio:.2f}x")
    print(f"  + async replay of a fully stale batch: {learner['replay_s']:.2f} s -> "
          f"{(learner['deterministic_s'] + learner['replay_s']) / learner['normal_s']:.2f}x")
    print(f"sampler tokens/s:     vLLM {sampler['vllm']:.1f}, reference sampler "
          f"{sampler['reference']:.1f} -> {sampler['vllm'] / sampler['reference']:.2f}x slower")
    print(f"  of which numerics:  reference sampler without batch_invariant() "
          f"{sampler['reference_plain']:.1f} tokens/s -> "
          f"{sampler['reference_plain'] / sampler['reference']:.2f}x")


if __name__ == "__main__":
    main()
