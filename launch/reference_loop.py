"""The synchronous reference loop: the whole algorithm, top to bottom, in one process.

Read this first. The asynchronous pipeline (`launch/pipeline.py`) does exactly this, spread over
Ray actors that overlap generation with training; with `buffer.max_lag=0` and the same seed it
reproduces this loop's per-step losses (tests/test_pipeline_e2e.py checks it).

Each step:
1. prompts: the env's prompts `step * G ... step * G + G - 1` (G = trainer.groups_per_step), the
   same tickets the pipeline's buffer hands out for that step (with DAPO's dynamic sampling a
   group whose rewards are all equal is dropped and the next ticket generated instead);
2. sampling: `group_size` completions per prompt from vLLM, each a seeded n=1 request, with the
   sampler's logprob and weight version of every token;
3. reward: math-verify (or the configured reward) in a separate process with a timeout;
4. advantages, loss, optimizer step: `Learner.train_step` (advantages of the configured
   recipe, the trainer's logprobs recomputed in micro-batches, the loss, one DeepSpeed step);
5. weights: written once to tmpfs and loaded in place into the engine, then read back and
   checked (a fingerprint of a few tensors);
6. logging: the same metrics, TensorBoard curves and rollouts as the pipeline.

    python launch/reference_loop.py --steps 20 --output-dir runs/ref   (the quickstart's settings)
"""

from __future__ import annotations

import asyncio
import json
import time

from slipstream.buffer.replay import is_uniform
from slipstream.envs import build_env
from slipstream.errors import SlipstreamError
from slipstream.launch.cli import main_guard, parse_config
from slipstream.launch.config import RunConfig
from slipstream.launch.metrics import batch_metrics
from slipstream.launch.quickstart import DEFAULTS as QUICKSTART
from slipstream.launch.resume import RUN_STATE, begin_resume
from slipstream.launch.run_dir import RunDirectory, learner_args, resolved_model, reward_summary
from slipstream.rewards import RewardRunner, build_reward
from slipstream.rollout.engine_api import build_engine
from slipstream.rollout.episode import rollout_group
from slipstream.rollout.sync_client import LocalEnginesClient
from slipstream.trainer.learner import Learner
from slipstream.trainer.weight_publish import remove_weights_dir


async def sync_weights(learner: Learner) -> float:
    """Publish the learner's weights into the engine (the learner checks that they landed);
    on a thread, because the engine answers the learner's client on this event loop."""
    published = await asyncio.to_thread(learner.publish)
    return published.engine_seconds[0]


async def generate_batch(config: RunConfig, first_ticket: int, generate) -> tuple[list, int]:
    """The step's groups, from tickets `first_ticket` on, and the next free ticket. With DAPO's
    dynamic sampling a group whose rewards are all equal is dropped and the next ticket taken
    instead, as the pipeline's buffer does (buffer/replay.py), so both train the same groups."""
    loss, needed = config.trainer.loss, config.trainer.groups_per_step
    groups, ticket, dropped_in_row = [], first_ticket, 0
    while len(groups) < needed:
        tickets = range(ticket, ticket + needed - len(groups))
        ticket = tickets.stop
        for group in await asyncio.gather(*(generate(t) for t in tickets)):
            if loss.dynamic_sampling and is_uniform(group):
                dropped_in_row += 1
                if dropped_in_row >= loss.dynamic_sampling_max_batches * needed:
                    raise SlipstreamError(f"dynamic sampling dropped {dropped_in_row} groups in "
                                          "a row: the reward never varies")
                continue
            dropped_in_row = 0
            groups.append(group)
    return groups, ticket


def _checkpoint(learner: Learner, run: RunDirectory, next_ticket: int) -> None:
    """The learner's state and the prompt stream's position (launch/resume.py RUN_STATE)."""
    state = {"writer": "reference_loop", "next_ticket": next_ticket}
    learner.save_checkpoint(str(run.checkpoints), {RUN_STATE: json.dumps(state)})


async def reference_loop(config: RunConfig) -> RunDirectory:
    resume = None
    if config.resume is not None:
        config, resume = begin_resume(config)
        if resume.state.get("writer") != "reference_loop":
            raise SlipstreamError(f"--resume {config.resume}: that run is the pipeline's; "
                                  "resume it with the script that started it")
    if config.buffer.replay.enabled:
        raise SlipstreamError("the reference loop trains every group once: buffer.replay runs "
                              "in the pipeline (launch/quickstart.py and its kin)")
    if config.teacher.enabled:
        raise SlipstreamError("the reference loop has no teacher: distillation runs in the "
                              "pipeline (launch/distill.py)")
    if config.curriculum.kind != "uniform":
        raise SlipstreamError("the reference loop walks the env's stream in order: "
                              "curriculum.kind=edge runs in the pipeline")
    model = resolved_model(config)
    run = RunDirectory(config, resume)
    env = build_env(config.env, seed=config.seed)
    rewards = RewardRunner(build_reward(config.reward), timeout_s=config.reward.timeout_s)
    engine = build_engine(model, config.rollout, config.seed, config.deterministic)
    kwargs = learner_args(config, run.path)
    learner = Learner(config.trainer, model, **kwargs)
    last_sync: dict[str, float] = {"rollout/weight_version": 0}
    first_step, next_ticket = 0, 0
    if resume is not None:
        first_step = learner.load_checkpoint(str(resume.folder))
        next_ticket = resume.state["next_ticket"]
    try:
        await engine.start()
        # The synchronous reference moves weights by file, as deterministic mode needs.
        client = LocalEnginesClient([engine], asyncio.get_running_loop(),
                                    timeout_s=config.trainer.sync_timeout_s)
        await asyncio.to_thread(learner.connect, client, "shm")
        tokenizer = learner.tokenizer
        if resume is not None:     # the engine starts from the checkpoint's weights
            last_sync = {"timing/weight_sync_s": await sync_weights(learner),
                         "rollout/weight_version": engine.weight_version}

        def generate(ticket: int):
            return rollout_group(engine, tokenizer, rewards, env, env.prompt(ticket), ticket,
                                 config.rollout, config.seed)

        for _ in range(first_step, config.steps):
            started = time.monotonic()
            groups, next_ticket = await generate_batch(config, next_ticket, generate)
            generated = sum(g.completion_tokens for g in groups)
            rollout_s = time.monotonic() - started

            result = learner.train_step(groups)

            extra = {**batch_metrics(groups), **last_sync,
                     "throughput/rollout_tokens_per_s": generated / rollout_s}
            metrics = run.record(result, extra)
            if config.sample_budget and result.step * config.samples_per_step \
                    >= config.sample_budget:
                break
            every = config.trainer.checkpoint_every
            if every and result.step % every == 0 and result.step < config.steps:
                _checkpoint(learner, run, next_ticket)
            if result.step % config.trainer.sync_every == 0 and result.step < config.steps:
                last_sync = {"timing/weight_sync_s": await sync_weights(learner),
                             "rollout/weight_version": engine.weight_version}
            if config.progress:
                gap = metrics.get("mismatch/kl")
                print(f"step {result.step:4d}  reward {metrics['reward/mean']:.3f}  "
                      f"loss {metrics['loss/total']:+.4f}  mismatch_kl "
                      f"{'n/a' if gap is None else f'{gap:.2e}'}  "
                      f"step {time.monotonic() - started:.1f}s", flush=True)
        _checkpoint(learner, run, next_ticket)
        learner.save_final(str(run.final))
    finally:
        rewards.close()
        await engine.shutdown()
        run.close()
        remove_weights_dir(kwargs["weights_dir"])
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
