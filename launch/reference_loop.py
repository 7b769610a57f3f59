"""The synchronous reference loop: the whole algorithm, top to bottom, in one process.

Read this first. The asynchronous pipeline (`launch/pipeline.py`) does exactly this, spread over
Ray actors that overlap generation with training; with `buffer.max_lag=0` and the same seed it
reproduces this loop's per-step losses (tests/test_pipeline_e2e.py checks it).

Each step:
1. prompts: the env's prompts `step * G ... step * G + G - 1` (G = trainer.groups_per_step), the
   same tickets the pipeline's buffer hands out for that step;
2. sampling: `group_size` completions per prompt from vLLM, each a seeded n=1 request, with the
   sampler's logprob and weight version of every token;
3. reward: math-verify (or the configured reward) in a separate process with a timeout;
4. advantages, loss, optimizer step: `Learner.train_step` (group-normalised advantages, the
   trainer's logprobs recomputed in micro-batches, the configured loss, one DeepSpeed step);
5. weights: written once to tmpfs and loaded in place into the engine, then read back and
   checked (a fingerprint of a few tensors);
6. logging: the same metrics, TensorBoard curves and rollouts as the pipeline.

    python launch/reference_loop.py --steps 20 --output-dir runs/ref   (the quickstart's settings)
"""

from __future__ import annotations

import asyncio
import time

from slipstream.envs import build_env
from slipstream.errors import SlipstreamError
from slipstream.launch.cli import main_guard, parse_config
from slipstream.launch.config import RunConfig
from slipstream.launch.metrics import batch_metrics
from slipstream.launch.models import resolve_model
from slipstream.launch.quickstart import DEFAULTS as QUICKSTART
from slipstream.launch.run_dir import (RunDirectory, engine_settings, group_settings,
                                       learner_settings, reward_summary)
from slipstream.rewards import RewardRunner, build_reward
from slipstream.rollout.engine import VLLMEngine, build_engine
from slipstream.rollout.group import generate_group
from slipstream.trainer.learner import Learner
from slipstream.trainer.weight_publish import remove_weights_dir


async def sync_weights(learner: Learner, engine: VLLMEngine) -> float:
    """Publish the learner's weights into the engine and check that they landed."""
    weights = learner.publish()
    seconds = await engine.update_weights(weights.path, weights.version)
    landed = await engine.fingerprint(weights.fingerprint_names)
    if landed != weights.fingerprint:
        raise SlipstreamError(f"weight sync to version {weights.version} did not land: "
                              f"{landed} != {weights.fingerprint}")
    return seconds


async def reference_loop(config: RunConfig) -> RunDirectory:
    model_path = resolve_model(config.model.path)
    run = RunDirectory(config)
    env = build_env(config.env, seed=config.seed)
    rewards = RewardRunner(build_reward(config.reward), timeout_s=config.reward.timeout_s)
    engine = build_engine(engine_settings(config, model_path))
    learner_config = learner_settings(config, model_path, run.path)
    learner = Learner(learner_config)
    settings = group_settings(config)
    groups_per_step = config.trainer.groups_per_step
    last_sync: dict[str, float] = {"rollout/weight_version": 0}
    try:
        await engine.start()
        tokenizer = learner.tokenizer
        for step in range(config.steps):
            started = time.monotonic()
            tickets = range(step * groups_per_step, (step + 1) * groups_per_step)
            groups = await asyncio.gather(*(
                generate_group(engine, tokenizer, rewards, env.prompt(t), t, settings)
                for t in tickets))
            generated = sum(g.completion_tokens for g in groups)
            rollout_s = time.monotonic() - started

            result = learner.train_step(list(groups))

            extra = {**batch_metrics(groups), **last_sync,
                     "throughput/rollout_tokens_per_s": generated / rollout_s}
            metrics = run.record(result, extra)
            if result.step % config.trainer.sync_every == 0 and result.step < config.steps:
                last_sync = {"timing/weight_sync_s": await sync_weights(learner, engine),
                             "rollout/weight_version": engine.weight_version}
            if config.progress:
                print(f"step {result.step:4d}  reward {metrics['reward/mean']:.3f}  "
                      f"loss {metrics['loss/total']:+.4f}  "
                      f"mismatch_kl {metrics['mismatch/kl']:.2e}  "
                      f"step {time.monotonic() - started:.1f}s", flush=True)
        learner.save_checkpoint(str(run.checkpoints))
        learner.save_final(str(run.final))
    finally:
        rewards.close()
        await engine.shutdown()
        run.close()
        remove_weights_dir(learner_config.weights_dir)
    print(f"slipstream: {reward_summary(run.history)}; run directory {run.path}")
    return run


def main() -> None:
    # The quickstart's experiment, synchronously: compare the two with the same flags.
    config = parse_config(**{**QUICKSTART, "output_dir": "runs/reference",
                             "buffer": {"max_lag": 0}})
    if config.buffer.max_lag != 0:
        raise SlipstreamError("the reference loop is synchronous: buffer.max_lag must be 0")
    asyncio.run(reference_loop(config))


if __name__ == "__main__":
    main_guard(main)
